"""Re-basin: find the permutation of model B's units that best aligns it with model A.

Three methods (Ainsworth, Hayase and Srinivasa 2022, "Git Re-Basin"), all returning permutations
``perms`` for B such that ``apply(spec, b, perms)`` is B in A's basis:

* `weight_matching`: maximise sum_W <W_A, P_out W_B P_in^T> over the permutations by coordinate
  descent: for one permutation at a time (the others held), the objective is linear in it, so it is a
  linear assignment problem (``scipy.optimize.linear_sum_assignment``) on the cost matrix
  C[i, j] = sum over the tensors it touches of <unit i of A, unit j of B>. Permutations are visited in
  a fresh random order every pass; the descent stops when a full pass improves nothing.
* `activation_matching`: for every permutation, a similarity matrix between A's and B's unit
  activations over data (post-activation values; for a residual stream, summed over every block
  output on it), then one linear assignment each. The similarity is the Pearson correlation
  (default) or the uncentred cross moment E[a b], which git-re-basin's reference code matches on
  (maximising <Z_A, P Z_B> is the paper's least-squares objective ||Z_A - P Z_B||^2).
* `ste_matching`: the straight-through estimator: train a proxy point W~ (initialised at A) so that
  the midpoint (A + P(W~)[B]) / 2 has low loss, where P(W~) is the weight matching of B onto W~ and the
  gradient passes straight through the projection; as in the reference's ``ste2``, the permutation of
  the step with the lowest minibatch loss is returned.

Without a ``spec``, the methods that see data infer it with ``infer_spec(model, data=data)``, so a
model outside the zoo needs no input shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, overload

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..evaluate import Evaluator, make_source
from ..progress import bar
from .infer import infer_spec
from .probe import Probe, channel_rows
from .spec import Perms, PermutationSpec, apply, identity_perms, permute_tensor, unit_rows


def _cost(
    spec: PermutationSpec,
    p: str,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    perms: Mapping[str, Tensor],
    entries: dict[str, list],
    cache: dict | None = None,
) -> tuple[Tensor, bool]:
    """C[i, j] = sum over the tensors on permutation p of <unit i of A, unit j of B (others permuted)>,
    and whether every term came from ``cache``.

    "Others" are every other permutation of the tensor: on its other axes, and on other segments or
    digits of the same axis (the heads of an attention projection around its within-head units).
    ``cache``: each term's product is kept with the permutations it was made with and reused while they
    are unchanged (late in a descent most are): the same tensors, so the same bits."""
    n = spec.sizes[p]
    cost = None
    all_cached = True
    nested: dict[str, Tensor] = {}  # inner permutation -> S [n, n, m, m] (see below)
    for i_ax, ax in enumerate(spec.axes[p]):
        if ax.name not in a:
            continue
        inner = _inner(spec, ax, entries[ax.name], n)
        used = [
            (q, other)
            for q, other in entries[ax.name]
            if (other.axis != ax.axis or (q != p and other != ax)) and (inner is None or (q, other) != inner)
        ]
        hit = cache.get((p, i_ax)) if cache is not None and inner is None else None
        if hit is not None and all(torch.equal(perms[q], v) for (q, _), v in zip(used, hit[0], strict=True)):
            cost = hit[1] if cost is None else cost + hit[1]
            continue
        all_cached = False
        wb = b[ax.name]
        for q, other in used:
            wb = permute_tensor(wb, other.axis, perms[q], other.block, other.groups, other.offset)
        if inner is None:
            term = unit_rows(a[ax.name], ax, n) @ unit_rows(wb, ax, n).T
            if cache is not None:
                cache[(p, i_ax)] = ([perms[q].clone() for q, _ in used], term)
            cost = term if cost is None else cost + term
            continue
        q, other = inner  # each unit is m inner units: compare them under their best pairing
        m = spec.sizes[q]
        ra, rb = (unit_rows(t, ax, n).reshape(n, m, -1) for t in (a[ax.name], wb))
        s = torch.einsum("ijr,klr->ikjl", ra, rb)
        nested[q] = s if q not in nested else nested[q] + s
    for s in nested.values():
        best = torch.zeros(n, n, dtype=s.dtype)
        for i in range(n):
            for k in range(n):
                block = s[i, k].double().cpu().numpy()
                r, c = linear_sum_assignment(block, maximize=True)
                best[i, k] = float(block[r, c].sum())
        cost = best.to(s.device) if cost is None else cost + best.to(cost)
    if cost is None:
        raise UserError(f"permutation '{p}' touches none of the given tensors")
    return cost, all_cached


def _inner(spec: PermutationSpec, ax, entries: list, n: int):
    """The permutation acting inside the units of ``ax`` (its units of ``block`` entries each hold m
    inner units, permuted alike in all n of them: attention heads and their within-head units), as
    ``(name, Axis)``, or None. Weight matching then scores a pair of units by their best inner pairing,
    which does not depend on the inner permutation's current estimate (coordinate descent on heads
    and within-head units separately gets stuck where the two must change together)."""
    for q, other in entries:
        if (
            other.axis == ax.axis
            and other.offset == ax.offset
            and other.groups == n * ax.groups
            and other.block * spec.sizes[q] == ax.block
            and spec.sizes[q] > 1
        ):
            return q, other
    return None


@overload
def weight_matching(
    spec: PermutationSpec,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    max_iter: int = ...,
    seed: int = ...,
    init: Mapping[str, Tensor] | None = ...,
    dtype: torch.dtype | None = ...,
    return_info: Literal[False] = ...,
    only: Any = ...,
    restarts: int | None = ...,
) -> Perms: ...
@overload
def weight_matching(
    spec: PermutationSpec,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    max_iter: int = ...,
    seed: int = ...,
    init: Mapping[str, Tensor] | None = ...,
    dtype: torch.dtype | None = ...,
    *,
    return_info: Literal[True],
    only: Any = ...,
    restarts: int | None = ...,
) -> tuple[Perms, dict[str, Any]]: ...
def weight_matching(
    spec: PermutationSpec,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    max_iter: int = 100,
    seed: int = 0,
    init: Mapping[str, Tensor] | None = None,
    dtype: torch.dtype | None = None,
    return_info: bool = False,
    only: Any = None,
    restarts: int | None = None,
) -> Perms | tuple[Perms, dict[str, Any]]:
    """Permutations for ``b`` maximising sum_W <W_A, permuted W_B> (coordinate descent, see module doc).

    ``a``, ``b``: points (parameters; buffers are ignored unless given). ``init``: starting
    permutations (default identity). ``dtype``: of the cost matrices; default: the parameters' own,
    at least float32 (rebasin's and git-re-basin's precision; float64 parameters are matched in float64).
    float64 for float32 parameters costs about 2x on the CPU and can only change the answer between
    assignments whose objectives tie to float32 rounding. ``return_info``: also return
    ``{"passes", "objective", "restart"}`` (objective in float64). ``only``: names of the permutations to
    optimise (the others stay at ``init``).
    ``restarts``: descents with visiting orders seeded ``seed``, ``seed + 1``, ...; the one with the
    largest objective wins. Default: 1, or 4 for a spec with attention heads, where one descent can stop
    with the residual stream and the heads wrong together (seen on grokked transformers).
    Gains are compared in float64; a pass counts as progress if it gains more than 1e-12.
    """
    names = [n for n in a if n in b]
    if dtype is None:
        dtype = torch.float64 if any(a[n].dtype == torch.float64 for n in names) else torch.float32
    a64 = {n: a[n].detach().to(dtype) for n in names}
    b64 = {n: b[n].detach().to(dtype) for n in names}
    spec.check(a64)
    spec.check(b64)
    entries = {k: v for k, v in spec.tensor_axes().items() if k in a64}
    order = list(spec.sizes) if only is None else [p for p in spec.sizes if p in set(only)]
    if restarts is None:
        restarts = 4 if any(p.endswith(":heads") for p in order) else 1
    best: tuple[Perms, dict[str, Any]] | None = None
    for r in range(max(1, int(restarts))):
        perms = {**identity_perms(spec), **{p: v.clone() for p, v in (init or {}).items()}}
        passes = _descend(spec, a64, b64, perms, entries, order, np.random.default_rng(seed + r), max_iter)
        if restarts == 1 and not return_info:
            return perms
        bp = apply(spec, b64, perms)
        objective = float(sum((a64[n].double() * bp[n].double()).sum() for n in names))
        if best is None or objective > best[1]["objective"] + 1e-12:
            best = (perms, {"passes": passes, "objective": objective, "restart": r})
    assert best is not None  # at least one restart ran
    return best if return_info else best[0]


def _descend(spec: PermutationSpec, a64, b64, perms: Perms, entries, order: list[str], rng, max_iter: int) -> int:
    """Coordinate descent in place on ``perms``; returns the passes made."""
    passes = 0
    terms: dict = {}  # (permutation, axis) -> (the other permutations used, the product)
    solved: dict[str, np.ndarray] = {}  # permutation -> its last assignment
    while passes < max_iter:
        passes += 1
        progress = False
        for idx in rng.permutation(len(order)):
            p = order[idx]
            c, same = _cost(spec, p, a64, b64, perms, entries, terms)
            cost = c.double().cpu().numpy()
            if same and p in solved:  # the cost matrix of its last assignment, bit for bit: the same answer
                cols = solved[p]
            else:
                _, cols = linear_sum_assignment(cost, maximize=True)
                solved[p] = cols
            rows = np.arange(len(cols))
            old = cost[rows, perms[p].cpu().numpy()].sum()
            new = cost[rows, cols].sum()
            progress = progress or new > old + 1e-12
            perms[p] = torch.as_tensor(cols, dtype=torch.long)
        if not progress:
            break
    return passes


def _match_nodes(spec: PermutationSpec) -> dict[str, list[str]]:
    """Per permutation, the traced values whose units are compared: its activations, else all; the
    permutations without traced values (inside a module, such as attention heads) are left out."""
    if not any(spec.nodes.values()):
        raise UserError(
            "this permutation spec has no traced nodes (hand-written?): activation matching and "
            "REPAIR need a spec from infer_spec(model)"
        )
    out = {}
    for p in spec.sizes:
        nodes = spec.nodes.get(p, [])
        acts = [n for n, kind in nodes if kind == "act"]
        chosen = acts or [n for n, kind in nodes if kind in ("tie", "norm")] or [n for n, _ in nodes]
        if chosen:
            out[p] = chosen
    return out


class _Moments:
    """Running sums for per-unit means, variances and the cross-covariance of A's and B's units."""

    def __init__(self) -> None:
        self.n = 0
        empty = torch.zeros(0, dtype=torch.float64)
        self.sa, self.sb, self.saa, self.sbb, self.sab = empty, empty, empty, empty, empty

    def add(self, xa: Tensor, xb: Tensor, axis: int = 1) -> None:
        ra, rb = channel_rows(xa, axis).double(), channel_rows(xb, axis).double()
        parts = (ra.sum(1), rb.sum(1), (ra * ra).sum(1), (rb * rb).sum(1), ra @ rb.T)
        if self.n == 0:
            self.sa, self.sb, self.saa, self.sbb, self.sab = parts
        else:
            self.sa, self.sb, self.saa, self.sbb, self.sab = (
                s + q for s, q in zip((self.sa, self.sb, self.saa, self.sbb, self.sab), parts, strict=True)
            )
        self.n += ra.shape[1]

    def correlation(self, eps: float = 1e-8) -> Tensor:
        ma, mb = self.sa / self.n, self.sb / self.n
        cov = self.sab / self.n - ma[:, None] * mb[None, :]
        sa = (self.saa / self.n - ma * ma).clamp_min(0).sqrt()
        sb = (self.sbb / self.n - mb * mb).clamp_min(0).sqrt()
        return cov / (sa[:, None] * sb[None, :] + eps)

    def cross_moment(self) -> Tensor:
        """E[a b] per pair of units (uncentred), over samples and positions."""
        return self.sab / self.n


OBJECTIVES = ("correlation", "cross-moment")


def activation_matching(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    data: Any,
    spec: PermutationSpec | None = None,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool | None = None,
    objective: str = "correlation",
) -> Perms:
    """Permutations for ``b`` maximising the similarity of its units' activations with A's over ``data``.

    ``a``, ``b``: states (parameters, optionally with buffers; missing buffers are the model's).
    ``data``: ``(X, y)`` tensors, a Dataset or a DataLoader (targets are ignored); BatchNorm uses each
    model's running statistics. ``objective``: ``"correlation"`` (Pearson, per pair of units) or
    ``"cross-moment"`` (E[a b], uncentred, as git-re-basin's reference code). For a permutation carried
    by several values (a residual stream) the matrices of all of them are summed before the assignment.
    Permutations with no traced value to compare (the heads and within-head units of an attention
    module, which is one node of the graph) are then found by weight matching, the others held fixed.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown activation-matching objective {objective!r}; choose 'correlation' or 'cross-moment'")
    spec = spec or infer_spec(model, data=data)
    chosen = _match_nodes(spec)
    flat = sorted({n for ns in chosen.values() for n in ns})
    probe = Probe(model, flat)
    dev = next(iter(a.values())).device
    src = make_source(data, "activation data", batch_size=batch_size, device=dev)
    moments = {n: _Moments() for n in flat}
    total = src.n // batch_size + 1 if max_batches is None else max_batches
    with torch.no_grad(), bar("activation matching", total, enabled=progress) as advance:
        for k, (x, _) in enumerate(src):
            if max_batches is not None and k >= max_batches:
                break
            for name, xa, xb in zip(flat, probe(a, x), probe(b, x), strict=True):
                moments[name].add(xa, xb, spec.node_axes.get(name, 1))
            advance()
    perms = {}
    for p, nodes in chosen.items():
        scores = [moments[n].correlation() if objective == "correlation" else moments[n].cross_moment() for n in nodes]
        score = scores[0]
        for s in scores[1:]:  # summed in order, as sum() would
            score = score + s
        _, cols = linear_sum_assignment(score.cpu().numpy(), maximize=True)
        perms[p] = torch.as_tensor(cols, dtype=torch.long)
    rest = [p for p in spec.sizes if p not in perms]
    if rest:
        params = {n for n, _ in model.named_parameters()}
        pa, pb = ({n: t for n, t in s.items() if n in params} for s in (a, b))
        perms = weight_matching(spec, pa, pb, init=perms, only=rest)
    return perms


def ste_matching(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    data: tuple[Tensor, Tensor],
    spec: PermutationSpec | None = None,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool | None = None,
    return_info: bool = False,
):
    """Straight-through-estimator matching (Ainsworth et al. 2022, Algorithm 2).

    A proxy point W~ starts at A. Each step: P = weight_matching(W~, B) (warm-started), the midpoint
    m = (A + W~ + stopgrad(P[B] - W~)) / 2 is evaluated on a minibatch of ``data`` = (X, y) with
    BatchNorm on batch statistics, and W~ takes an Adam step on the loss at m. Returns the
    permutations P of the step with the lowest such loss (as the reference's ``ste2``; the first such
    step on ties) and, with ``return_info``, ``{"losses": per step, "best_step", "best_loss"}``.
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise UserError("ste_matching needs data as (X, y) tensors")
    if steps < 1:
        raise UserError(f"ste_matching needs at least 1 step; got steps={steps}")
    spec = spec or infer_spec(model, data=data)
    x_all, y_all = data
    params = [n for n, _ in model.named_parameters()]
    a = {n: a[n].detach() for n in params}
    b = {n: b[n].detach() for n in params}
    ev = Evaluator(model, (x_all[:2], y_all[:2]), progress=False)
    proxy = {n: a[n].clone().requires_grad_(True) for n in params}
    opt = torch.optim.Adam(list(proxy.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    perms = identity_perms(spec)
    losses: list[float] = []
    best_perms, best_step, best_loss = perms, -1, math.nan
    with bar("STE matching", steps, enabled=progress) as advance:
        for step in range(steps):
            current = {n: t.detach() for n, t in proxy.items()}
            perms = weight_matching(spec, current, b, init=perms, seed=seed + step)
            projected = apply(spec, b, perms)
            ste = {n: proxy[n] + (projected[n] - proxy[n]).detach() for n in params}
            mid = sp.lerp(a, ste, 0.5)
            idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=gen)
            xb, yb = x_all[idx].to(ev.device, ev.dtype), y_all[idx].to(ev.device)
            loss = ev.loss_fn(ev.forward(mid, ev.buffers, xb, bn_train=True), yb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if best_step < 0 or losses[-1] < best_loss or math.isnan(best_loss):  # a NaN loss never wins
                best_perms, best_step, best_loss = perms, step, losses[-1]
            advance(info=f"loss {losses[-1]:.4f}")
    if not return_info:
        return best_perms
    return best_perms, {"losses": losses, "best_step": best_step, "best_loss": best_loss}


__all__ = ["OBJECTIVES", "activation_matching", "ste_matching", "weight_matching"]

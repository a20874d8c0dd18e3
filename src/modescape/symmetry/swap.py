"""Swap analysis (Brea et al. 2019): the loss along the path that exchanges two hidden units.

* `swap_path(model, point, layer, i, j)` -> `SwapPath`: the line from ``point`` to ``point`` with
  units i and j of ``layer`` exchanged (every axis the spec lists for that layer's permutation).
* `swap_analysis(...)`: the loss along it at ``n_points`` t (`modescape.paths.evaluate_path`), its barrier,
  and the smallest Hessian eigenvalues at the permutation point t = 1/2 (Lanczos,
  `modescape.curvature.eigenvalues`): at a permutation point the tied units leave flat directions
  (zero eigenvalues, e.g. moving outgoing weight from one unit to the other); a negative eigenvalue
  marks a saddle. ``relax_steps`` > 0 first descends the loss from t = 1/2 *keeping the two units
  tied* (their incoming weights, biases and norm parameters equal; outgoing weights free), which
  brings it towards the permutation saddle Brea et al. describe.
* `best_pair(...)`: the pair of a layer with the lowest barrier. All pairs are scored when there are
  at most ``candidates``; otherwise the ``candidates`` pairs whose swap moves the point least
  (smallest ||theta - swap_ij(theta)||) are scored, the others are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import curvature
from ..errors import UserError
from ..evaluate import Evaluator, default_bn
from ..families.swap import SwapPath
from ..paths import evaluate_path
from .infer import infer_spec
from .spec import Axis, PermutationSpec, apply


def transposition(n: int, i: int, j: int) -> Tensor:
    """The permutation of n units that exchanges i and j."""
    if not (0 <= i < n and 0 <= j < n) or i == j:
        raise UserError(f"units i={i} and j={j} must be different and in [0, {n})")
    p = torch.arange(n)
    p[i], p[j] = j, i
    return p


def swap_path(
    model: nn.Module,
    point: Mapping[str, Tensor],
    layer: str,
    i: int,
    j: int,
    spec: PermutationSpec | None = None,
    data: Any = None,
) -> SwapPath:
    """The `SwapPath` exchanging units ``i`` and ``j`` of ``layer`` (a module or permutation name).

    ``point``: parameters, optionally with buffers (then the path carries them, permuted at its far end).
    ``data``: for inferring the spec of a model outside the zoo (its input shape).
    """
    spec = spec or infer_spec(model, data=data)
    perm = spec.layer_perm(layer)
    names = [n for n, _ in model.named_parameters()]
    swap = {perm: transposition(spec.sizes[perm], i, j)}
    theta = {n: point[n].detach() for n in names}
    buffers = {n: b.detach() for n, b in point.items() if n not in theta}
    pair = [buffers, apply(spec, buffers, swap)] if buffers else None
    return SwapPath(theta, apply(spec, theta, swap), perm, i, j, buffers=pair)


def _evaluator(model: nn.Module, data: Any, evaluator: Evaluator | None) -> Evaluator:
    if evaluator is not None:
        return evaluator
    if data is None:
        raise UserError("swap analysis needs data: pass (X, y) or an Evaluator")
    return Evaluator(model, data, metrics=("loss", "accuracy"), bn=default_bn(model), progress=False)


def _unit_entries(a: Axis, n: int, unit: int, device: torch.device) -> Tensor:
    """The indices along ``a``'s axis of one unit's entries: ``offset + g * n * block + unit * block + k``
    for every group g and k < block (see `Axis`)."""
    groups = torch.arange(a.groups, device=device)[:, None] * (n * a.block)
    return (a.offset + groups + unit * a.block + torch.arange(a.block, device=device)).reshape(-1)


def _tied_axes(spec: PermutationSpec, perm: str) -> list:
    """The axes that hold the units' own parameters (axis 0: incoming weights, bias, norm)."""
    return [a for a in spec.axes[perm] if a.axis == 0]


def relax(
    ev: Evaluator,
    point: Mapping[str, Tensor],
    spec: PermutationSpec,
    perm: str,
    i: int,
    j: int,
    steps: int = 100,
    lr: float = 0.05,
) -> dict[str, Tensor]:
    """Gradient descent on the loss from ``point`` keeping units i and j tied (see module docstring).

    The gradient of each tied tensor is averaged over rows i and j (the projection onto the
    constraint, for a point that satisfies it), so the units stay equal.
    """
    n = spec.sizes[perm]
    # per tied axis: the entries of unit i and of unit j on axis 0 (every block, group and offset; a tensor
    # can carry the permutation on several segments, e.g. the q, k and v parts of a fused projection)
    tied = [
        (a.name, _unit_entries(a, n, i, point[a.name].device), _unit_entries(a, n, j, point[a.name].device))
        for a in _tied_axes(spec, perm)
        if a.name in point
    ]
    params = {name: t.detach().clone().requires_grad_(True) for name, t in point.items()}
    opt = torch.optim.SGD(list(params.values()), lr=lr)
    for _ in range(steps):
        loss = ev.loss(params)
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            for name, ei, ej in tied:
                g = params[name].grad
                assert g is not None  # every tied tensor is in the loss
                mean = (g.index_select(0, ei) + g.index_select(0, ej)) / 2
                g.index_copy_(0, ei, mean)
                g.index_copy_(0, ej, mean)
        opt.step()
    return {n: t.detach() for n, t in params.items()}


def swap_analysis(
    model: nn.Module,
    point: Mapping[str, Tensor],
    layer: str,
    i: int,
    j: int,
    data: Any = None,
    n_points: int = 25,
    k: int = 5,
    spec: PermutationSpec | None = None,
    evaluator: Evaluator | None = None,
    eigen: bool = True,
    eigen_at_start: bool = False,
    relax_steps: int = 0,
    relax_lr: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss along the swap path, its barrier, and the ``k`` smallest Hessian eigenvalues at t = 1/2.

    Returns ``{"perm", "i", "j", "t" [T], "loss" [T], "accuracy" [T], "barrier": {...},
    "eigenvalues" [k], "start_eigenvalues" [k] (with eigen_at_start: at theta itself, for contrast),
    "relaxed": {...} (with relax_steps)}``; the loss is the evaluator's first source (pass ``data`` as
    (X, y)).
    """
    spec = spec or infer_spec(model, data=data)
    ev = _evaluator(model, data, evaluator)
    path = swap_path(model, point, layer, i, j, spec)
    res = evaluate_path(path, ev, n_points, name="swap")
    first = res.metrics.names[0].rsplit("_", 1)[0] + "_" if "_" in res.metrics.names[0] else ""
    loss, acc = res.metrics[first + "loss"], res.metrics[first + "accuracy"]
    out: dict[str, Any] = {
        "perm": path.perm,
        "i": path.i,
        "j": path.j,
        "t": res.t.tolist(),
        "loss": loss.tolist(),
        "accuracy": acc.tolist(),
        "barrier": res.barriers()[first + "loss"],
        "bn": ev.bn,
        "midpoint_loss": float(ev.loss(path(0.5))),
    }
    if eigen:
        eig = curvature.eigenvalues(ev, point=path(0.5), k=k, which="smallest", seed=seed)
        out["eigenvalues"] = eig.values.tolist()
        out["eigen_method"] = "lanczos (modescape.curvature.eigenvalues, which='smallest')"
        if eigen_at_start:
            out["start_eigenvalues"] = curvature.eigenvalues(
                ev, point=path(0.0), k=k, which="smallest", seed=seed
            ).values.tolist()
    if relax_steps > 0:
        relaxed = relax(ev, path(0.5), spec, path.perm, path.i, path.j, steps=relax_steps, lr=relax_lr)
        r: dict[str, Any] = {"steps": relax_steps, "lr": relax_lr, "loss": float(ev.loss(relaxed))}
        if eigen:
            r["eigenvalues"] = curvature.eigenvalues(
                ev, point=relaxed, k=k, which="smallest", seed=seed
            ).values.tolist()
        out["relaxed"] = r
    return out


def pair_distances(spec: PermutationSpec, point: Mapping[str, Tensor], perm: str) -> Tensor:
    """[n, n]: squared distance between units' parameter vectors (all axes of ``perm``).

    ||theta - swap_ij(theta)||^2 = 2 * D[i, j].
    """
    n = spec.sizes[perm]
    rows = [
        point[a.name].detach().double().movedim(a.axis, 0).reshape(n, -1) for a in spec.axes[perm] if a.name in point
    ]
    u = torch.cat(rows, dim=1)
    sq = (u * u).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * u @ u.T).clamp_min(0)


def best_pair(
    model: nn.Module,
    point: Mapping[str, Tensor],
    layer: str,
    data: Any = None,
    candidates: int = 10,
    n_points: int = 9,
    spec: PermutationSpec | None = None,
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """The pair of ``layer`` whose swap path has the lowest loss barrier (``barrier_linear``).

    Returns ``{"i", "j", "barrier", "scored": [{"i", "j", "distance", "barrier"}], "exhaustive"}``.
    """
    spec = spec or infer_spec(model, data=data)
    perm = spec.layer_perm(layer)
    ev = _evaluator(model, data, evaluator)
    n = spec.sizes[perm]
    if n < 2:
        raise UserError(f"layer '{layer}' has one unit: nothing to swap")
    d = pair_distances(spec, {k: v for k, v in point.items()}, perm)
    iu = torch.triu_indices(n, n, offset=1)
    dist = d[iu[0], iu[1]]
    order = torch.argsort(dist)[:candidates]
    scored = []
    for idx in order.tolist():
        i, j = int(iu[0, idx]), int(iu[1, idx])
        res = evaluate_path(swap_path(model, point, perm, i, j, spec), ev, n_points, name="swap", progress=False)
        bar_ = res.barriers()[ev.names[0]]["barrier_linear"]
        scored.append({"i": i, "j": j, "distance": float(dist[idx]), "barrier": bar_})
    best = min(scored, key=lambda r: r["barrier"])
    return {
        "perm": perm,
        "i": best["i"],
        "j": best["j"],
        "barrier": best["barrier"],
        "scored": scored,
        "exhaustive": len(order) == len(dist),
    }


__all__ = ["best_pair", "pair_distances", "relax", "swap_analysis", "swap_path", "transposition"]

"""Curvature operators: matrix-free products with the Hessian, the GGN or the empirical Fisher.

Three symmetric P x P matrices of the whole-dataset mean loss L(w) = (1/N) sum_i l(f(x_i; w), y_i),
restricted to a chosen set of parameters (`select_params`, `param_groups`), at an explicit point,
evaluated through the `Evaluator` (which owns the data, the batching and the batch-norm policy):

    Hessian            H v = sum_b (n_b / N) H_b v                 (H_b: Hessian of batch b's mean loss)
    Gauss-Newton (GGN) G v = sum_b (n_b / N) J_b^T Hl_b J_b v      (J_b: Jacobian of the outputs; Hl_b:
                                                                    Hessian of the batch's mean loss in
                                                                    the outputs; PSD for convex losses)
    empirical Fisher   F v = (1/N) sum_i g_i (g_i . v)             (g_i: gradient of sample i's loss)

`CurvatureOperator` holds what the three share (the point, the selected parameters, vectors and
points, ``matvec`` / ``matmat`` / ``dense``, the mean gradient, and the data-parallel combination);
`Hessian`, `GGN` and `EmpiricalFisher` only say how one batch's product is made. `curvature_operator`
builds one by name (``"hessian"``, ``"ggn"``, ``"fisher"``: `CURVATURES`); the Krylov routines
(`krylov`) and the user-level functions (`spectrum`) accept any of them.

GGN products are a ``jvp`` of the outputs, the loss's Hessian in the outputs applied to it
(forward-over-reverse on the loss alone) and a ``vjp``: two forward passes and no second derivative
of the network. Fisher products are a ``jvp`` of the per-sample losses (the [B] numbers g_i . v) and
a ``vjp`` with them. For a sequence model the per-sample loss is the mean over its positions (the
Evaluator's loss), so the "samples" of the Fisher are sequences.

Data parallel (``torchrun``): every rank builds the operator on its own shard of the data (`shard`),
and each product, trace and gradient is the all-reduced, sample-weighted sum of the ranks' products
(``sum_r (N_r / N) P_r v``, through `modescape.distributed`), so every rank holds the same vector and
the Krylov routines run unchanged and in step on every rank.

`hvp` is the one-call form of a single Hessian product.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import distributed as ddp
from .. import space as sp
from ..errors import UserError
from ..evaluate import Evaluator

HVP_METHODS = ("auto", "double-backward", "forward-over-reverse")
CURVATURES = ("hessian", "ggn", "fisher")
ROLE_WORDS = {"weights": "weight", "weight": "weight", "biases": "bias", "bias": "bias", "norms": "norm",
              "norm": "norm"}

# the HVP method measured per evaluator (so a convexity map over many points measures once)
_CHOSEN: "weakref.WeakKeyDictionary[Evaluator, dict[tuple, str]]" = weakref.WeakKeyDictionary()


# -- parameter selection -------------------------------------------------------------------------

def select_params(space: sp.WeightSpace, params: str | Sequence[str] | None = "all") -> tuple[str, ...]:
    """Names of the parameters a filter keeps, in layout order.

    ``params``: ``"all"``; role words ``"weights"``, ``"biases"``, ``"norms"`` (comma-combinable,
    e.g. ``"weights,biases"``); or name prefixes (a string, comma-separated, or a list): a prefix keeps a
    parameter whose name equals it or starts with ``prefix + "."``.
    """
    if params is None or params == "all":
        return space.names
    items = [s.strip() for s in params.split(",")] if isinstance(params, str) else [str(s) for s in params]
    items = [s for s in items if s]
    if items and all(s in ROLE_WORDS for s in items):
        roles = {ROLE_WORDS[s] for s in items}
        names = tuple(n for n in space.names if space.roles[n] in roles)
    else:
        names = tuple(n for n in space.names if any(n == p or n.startswith(p + ".") for p in items))
    if not names:
        tops = sorted({n.split(".")[0] for n in space.names})
        raise UserError(f"parameter filter '{params}' selects no parameters: use all, weights, biases, norms "
                        f"or a name prefix such as {', '.join(tops[:6])}")
    return names


def param_groups(space: sp.WeightSpace, by: str | int | Mapping[str, Any] = "layer") -> dict[str, tuple[str, ...]]:
    """Groups of parameter names for per-layer / per-block curvature.

    ``by="layer"``: one group per module owning parameters (``fc0``, ``stage1.0.conv1``);
    ``"block"``: one per top-level child (``stage1``); an int ``d``: by the first ``d`` name components;
    a mapping ``{group: filter}``: each filter as in `select_params`.
    """
    if isinstance(by, Mapping):
        return {g: select_params(space, f) for g, f in by.items()}
    if by == "layer":
        key = lambda n: n.rsplit(".", 1)[0] if "." in n else n  # noqa: E731
    elif by == "block":
        key = lambda n: n.split(".")[0]  # noqa: E731
    elif isinstance(by, int) or (isinstance(by, str) and by.isdigit()):
        d = int(by)
        if d < 1:
            raise UserError(f"a grouping depth must be at least 1; got {d}")
        key = lambda n: ".".join(n.split(".")[:d]) if n.count(".") >= d else n.rsplit(".", 1)[0]  # noqa: E731
    else:
        raise UserError(f"unknown grouping '{by}': use layer, block, a depth (1, 2, ...) or a dict of filters")
    groups: dict[str, list[str]] = {}
    for n in space.names:
        groups.setdefault(key(n), []).append(n)
    return {g: tuple(v) for g, v in groups.items()}


# -- the operator ---------------------------------------------------------------------------------

def as_evaluator(model: nn.Module | Evaluator, data: Any = None, *, bn: str | None = None, loss=None,
                 batch_size: int | None = None, device=None, dtype=None) -> Evaluator:
    """An `Evaluator` from a model and data, or the given evaluator (then ``data`` must be None)."""
    if isinstance(model, Evaluator):
        if data is not None:
            raise UserError("pass data either to the Evaluator or here, not both")
        if bn is not None and bn != model.bn:
            raise UserError(f"the evaluator uses bn='{model.bn}'; build it with bn='{bn}' instead")
        return model
    if not isinstance(model, nn.Module):
        raise UserError(f"expected an nn.Module or an Evaluator; got {type(model).__name__}")
    if data is None:
        raise UserError("curvature needs data: pass (X, y), a Dataset, a DataLoader or an Evaluator")
    return Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn or "running", loss=loss,
                     batch_size=batch_size, device=device, dtype=dtype, progress=False)


class CurvatureOperator:
    """A curvature matrix of the whole-dataset mean loss at ``point``, over the parameters ``params``.

    What the Hessian, the GGN and the empirical Fisher share: ``op.size`` = P (number of selected
    entries); ``op.matvec(v [P]) -> [P]`` (also ``op @ v``); ``op.matmat(V [P, k])``; ``op.hvp(v_point)
    -> point`` over the selected names; ``op.dense() -> [P, P]`` for small P; ``op.gradient()``, the
    mean-loss gradient [P]; ``op.n_hvp`` counts products; ``op.kind`` names the matrix.

    ``distributed``: combine the products of every ``torchrun`` rank (each built on its own shard of the
    data, see `shard`) as ``sum_r (N_r / N) P_r v``; default (None): whenever a process group of more
    than one rank is active. Subclasses implement ``_batch_product(vs, x, y) -> [tensor per name]``,
    the product of one batch's mean-loss matrix with ``vs``.
    """

    kind = "curvature"

    def __init__(self, model: nn.Module | Evaluator, data: Any = None, point: Mapping[str, Tensor] | None = None, *,
                 params: str | Sequence[str] | None = "all", bn: str | None = None,
                 buffers: Mapping[str, Tensor] | None = None, source: str | None = None, loss=None,
                 batch_size: int | None = None, device=None, dtype=None, distributed: bool | None = None):
        ev = as_evaluator(model, data, bn=bn, loss=loss, batch_size=batch_size, device=device, dtype=dtype)
        self.evaluator = ev
        self.space = ev.space
        point = ev.point0 if point is None else point
        ev.space.check(point, what="point")
        self.point: sp.Point = {n: point[n].detach().to(device=ev.device, dtype=ev.dtype) for n in ev.space.names}
        self.buffers = ev.point_buffers(self.point) if buffers is None else sp.to(dict(buffers), ev.device, ev.dtype)
        self.source = source
        self.names = select_params(ev.space, params)
        self.shapes = [tuple(self.space.shapes[n]) for n in self.names]
        self.numels = [math.prod(s) for s in self.shapes]
        self.size = int(sum(self.numels))
        self.device, self.dtype = ev.device, ev.dtype
        self.n_hvp = 0
        self.timings: dict[str, float] = {}
        self._batched_ok = True
        self._n_local = (ev.sources[source] if source is not None else next(iter(ev.sources.values()))).n
        self.distributed = ddp.active() if distributed is None else bool(distributed)
        self.n_total = self._n_local
        if self.distributed:
            n = torch.tensor([float(self._n_local)], dtype=torch.float64, device=self.device)
            self.n_total = int(ddp.all_reduce(n).item())

    # -- vectors ------------------------------------------------------------------------------
    def split(self, v: Tensor) -> list[Tensor]:
        """[P] -> the selected tensors."""
        if v.shape != (self.size,):
            raise UserError(f"vector has shape {list(v.shape)}; this {self.kind} acts on vectors of size {self.size}")
        return [t.reshape(s) for t, s in zip(torch.split(v, self.numels), self.shapes)]

    def flat(self, point: Mapping[str, Tensor]) -> Tensor:
        """The selected entries of a point as one vector [P]."""
        return torch.cat([point[n].reshape(-1).to(self.device, self.dtype) for n in self.names])

    def to_point(self, v: Tensor, full: bool = True) -> sp.Point:
        """[P] -> a point over the selected names, or (``full``) the whole layout with zeros elsewhere."""
        parts = dict(zip(self.names, self.split(v)))
        if not full:
            return parts
        return {n: parts[n] if n in parts else torch.zeros_like(self.point[n]) for n in self.space.names}

    def _with_leaves(self) -> tuple[sp.Point, list[Tensor]]:
        """The point with fresh leaf tensors (requiring grad) for the selected names: (params, leaves)."""
        leaves = [self.point[n].detach().requires_grad_(True) for n in self.names]
        return {**self.point, **dict(zip(self.names, leaves))}, leaves

    def _combine(self, local: Tensor) -> Tensor:
        """This rank's mean-loss quantity -> the whole data's: ``sum_r (N_r / N) local_r`` (itself alone)."""
        if not self.distributed:
            return local
        return ddp.all_reduce(local * (self._n_local / self.n_total))

    def _loss_of(self, x: Tensor, y: Tensor):
        """The batch's mean loss as a function of the selected tensors (the others fixed at the point)."""
        ev, fixed, names = self.evaluator, self.point, self.names

        def loss_of(sel):
            return ev.batch_loss({**fixed, **dict(zip(names, sel))}, self.buffers, x, y)
        return loss_of

    def _outputs_of(self, x: Tensor):
        ev, fixed, names = self.evaluator, self.point, self.names

        def outputs_of(sel):
            return ev.forward({**fixed, **dict(zip(names, sel))}, self.buffers, x)
        return outputs_of

    # -- products -----------------------------------------------------------------------------
    def _batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def _local_matvec(self, vs: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(t) for t in vs]
        for w, x, y in self.evaluator.weighted_batches(self.source):
            for o, h in zip(out, self._batch_product(vs, x, y)):
                o.add_(h.detach(), alpha=w)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """The matrix times a flat vector v [P] (in the evaluator's dtype and device): [P]."""
        vs = [t.to(self.device, self.dtype) for t in self.split(v)]
        out = self._local_matvec(vs)
        self.n_hvp += 1
        return self._combine(torch.cat([o.reshape(-1) for o in out]))

    __call__ = matvec

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    def hvp(self, v: Mapping[str, Tensor]) -> sp.Point:
        """The matrix times a point ``v`` (its selected tensors are used): a point over the selected names."""
        return self.to_point(self.matvec(self.flat(v)), full=False)

    def matmat(self, vs: Tensor, chunk: int = 64) -> Tensor:
        """The matrix times vs [P, k]: [P, k], ``chunk`` columns at a time, each chunk one vectorised
        product (``vmap`` over the batch products; a loop where an operation has no batching rule);
        counts k products."""
        cols = vs.T.to(self.device, self.dtype)
        out = torch.zeros(cols.shape[0], self.size, device=self.device, dtype=self.dtype)
        for w, x, y in self.evaluator.weighted_batches(self.source):
            def one(v, x=x, y=y):
                return torch.cat([h.reshape(-1) for h in self._batch_product(self.split(v), x, y)])
            for i in range(0, cols.shape[0], chunk):
                part = cols[i:i + chunk]
                if self._batched_ok:
                    try:
                        out[i:i + chunk] += w * torch.func.vmap(one)(part).detach()
                        continue
                    except RuntimeError:  # an operation without a batching rule
                        self._batched_ok = False
                out[i:i + chunk] += w * torch.stack([one(c).detach() for c in part])
        self.n_hvp += vs.shape[1]
        return self._combine(out.T.contiguous())

    def dense(self) -> Tensor:
        """The dense [P, P] matrix (P products, vectorised; for small models and tests)."""
        if self.size > 20000:
            raise UserError(f"a dense {self.kind} of {self.size} parameters is too large: use a parameter filter")
        return self.matmat(torch.eye(self.size, device=self.device, dtype=self.dtype))

    def gradient(self) -> Tensor:
        """The mean-loss gradient over the selected parameters, [P]."""
        params, leaves = self._with_leaves()
        out = [torch.zeros_like(t) for t in leaves]
        for w, x, y in self.evaluator.weighted_batches(self.source):
            loss = self.evaluator.batch_loss(params, self.buffers, x, y)
            for o, g in zip(out, torch.autograd.grad(loss, leaves, allow_unused=True)):
                if g is not None:
                    o.add_(g, alpha=w)
        return self._combine(torch.cat([o.reshape(-1) for o in out]))

    @property
    def retained(self) -> bool:
        return False

    def release(self) -> None:
        """Free what the operator holds between products (the Hessian's retained graph)."""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class GGN(CurvatureOperator):
    """The generalised Gauss-Newton matrix ``G = sum_b (n_b / N) J_b^T Hl_b J_b`` (Schraudolph 2002;
    Martens 2020): the Hessian without the second derivatives of the network, positive semi-definite
    for a convex loss (cross-entropy). One product per batch: ``u = J v`` (``jvp`` of the outputs),
    ``Hl u`` (the loss's Hessian in the outputs, forward-over-reverse on the loss alone), then
    ``J^T Hl u`` (``vjp``)."""

    kind = "GGN"

    def _batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        f = self._outputs_of(x)
        prim = tuple(self.point[n] for n in self.names)
        outputs, ju = torch.func.jvp(f, (prim,), (tuple(vs),))
        loss_fn = self.evaluator.loss_fn

        def mean_loss(o):
            return loss_fn(o, y).mean()
        _, hju = torch.func.jvp(torch.func.grad(mean_loss), (outputs.detach(),), (ju,))
        _, pullback = torch.func.vjp(f, prim)
        return list(pullback(hju)[0])


class EmpiricalFisher(CurvatureOperator):
    """The empirical Fisher ``F = (1/N) sum_i g_i g_i^T``, g_i the gradient of sample i's loss (the
    uncentred second moment of the per-sample gradients; Kunstner et al. 2019 on what it is and is not).
    One product per batch without per-sample gradients: ``s = [g_i . v]`` (``jvp`` of the per-sample
    losses), then ``sum_i s_i g_i`` (``vjp`` with s), divided by the batch size."""

    kind = "empirical Fisher"

    def _batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        ev, fixed, names = self.evaluator, self.point, self.names

        def per_sample(sel):
            return ev.loss_fn(ev.forward({**fixed, **dict(zip(names, sel))}, self.buffers, x), y)
        prim = tuple(self.point[n] for n in self.names)
        losses, s = torch.func.jvp(per_sample, (prim,), (tuple(vs),))
        _, pullback = torch.func.vjp(per_sample, prim)
        return [g / losses.shape[0] for g in pullback(s)[0]]


class Hessian(CurvatureOperator):
    """The Hessian of the whole-dataset mean loss at ``point``, over the parameters ``params``.

    ``Hessian(model_or_evaluator, data=None, point=None, params="all", method="auto", ...)``;
    ``H.size`` = P (number of selected entries); ``H.matvec(v [P]) -> [P]`` (also ``H @ v``);
    ``H.hvp(v_point) -> point`` over the selected names; ``H.dense() -> [P, P]`` for small P.
    ``H.n_hvp`` counts products; ``H.method`` is the HVP method in use.
    """

    kind = "Hessian"

    def __init__(self, model: nn.Module | Evaluator, data: Any = None, point: Mapping[str, Tensor] | None = None, *,
                 params: str | Sequence[str] | None = "all", method: str = "auto", bn: str | None = None,
                 buffers: Mapping[str, Tensor] | None = None, source: str | None = None, loss=None,
                 batch_size: int | None = None, device=None, dtype=None, retain: bool | str = "auto",
                 retain_mb: float | None = None, distributed: bool | None = None):
        if method not in HVP_METHODS:
            raise UserError(f"unknown HVP method '{method}': use one of {', '.join(HVP_METHODS)}")
        super().__init__(model, data, point, params=params, bn=bn, buffers=buffers, source=source, loss=loss,
                         batch_size=batch_size, device=device, dtype=dtype, distributed=distributed)
        ev = self.evaluator
        self._leaves: list[Tensor] | None = None
        self._grads: list[Tensor] | None = None
        if retain not in (True, False, "auto"):
            raise UserError(f"retain must be True, False or 'auto'; got {retain!r}")
        if retain is not False and method in ("auto", "double-backward"):
            budget = _retain_budget(self.device, retain_mb) if retain == "auto" else float("inf")
            if self._retain(budget):
                if method == "auto":  # measured once per evaluator: the retained product or a recomputed jvp
                    cache = _CHOSEN.setdefault(ev, {})
                    key = ("retained", self.names, source)
                    if key not in cache:
                        cache[key] = self._measure_retained()
                    if cache[key] == "forward-over-reverse":
                        self.release()
                    method = cache[key]
                else:
                    method = "double-backward"
        key = (self.names, source)
        if method == "auto":
            cache = _CHOSEN.setdefault(ev, {})
            if key not in cache:
                cache[key] = self._measure()
            method = cache[key]
        self.method = method

    # -- the retained gradient graph ------------------------------------------------------------
    @property
    def retained(self) -> bool:
        """Whether the gradient's graph is kept, so that each product is one backward pass."""
        return self._grads is not None

    def _retain(self, budget: float) -> bool:
        """Build g = sum_b (n_b / N) grad L_b with ``create_graph`` and keep it, so that each product is
        one backward pass through g's graph (no forward pass, no first backward pass).

        The memory the graph holds is measured on a probe of a few samples (saved tensors, each storage
        once, parameters and buffers excluded) and extrapolated to the whole source; over ``budget``
        bytes nothing is kept. Unless batch norm uses batch statistics (``bn="train"``), whose values
        depend on the batches, a materialised source is then built as one batch: the graph of all data
        is held either way, and one batch makes each product fewer, larger operations."""
        ev = self.evaluator
        src = ev.sources[self.source] if self.source is not None else next(iter(ev.sources.values()))
        if not src.materialised:  # data too large to hold on the device: its graph is larger still
            return False
        params, leaves = self._with_leaves()
        fixed = {t.untyped_storage().data_ptr() for t in [*params.values(), *self.buffers.values()]}
        seen: set[int] = set()
        size = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal size
            ptr = t.untyped_storage().data_ptr()
            if ptr not in fixed and ptr not in seen:
                seen.add(ptr)
                size += t.untyped_storage().nbytes()
            return t

        def grads(x: Tensor, y: Tensor, w: float) -> list[Tensor]:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = ev.batch_loss(params, self.buffers, x, y)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            return [torch.zeros_like(leaf) if gi is None else (gi if w == 1.0 else gi * w) for gi, leaf in zip(g, leaves)]

        x0, y0 = next(iter(src))
        k = min(x0.shape[0], 16)
        if ev.bn != "train" or k == x0.shape[0]:  # (batch statistics of a slice: another function)
            grads(x0[:k], y0[:k], 1.0)
            if size * src.n / k > budget:
                return False
            seen.clear()
            size = 0
        if ev.bn != "train" and len(src.batches) > 1:
            batches = [(1.0, torch.cat([x for x, _ in src.batches]), torch.cat([y for _, y in src.batches]))]
        else:
            batches = ev.weighted_batches(self.source)
        total: list[Tensor] | None = None
        for w, x, y in batches:
            g = grads(x, y, w)
            total = g if total is None else [a + b for a, b in zip(total, g)]
            if size > budget:
                return False
        self._leaves, self._grads = leaves, total
        return True

    def release(self) -> None:
        """Drop the retained graph (products then recompute the forward and backward passes)."""
        self._leaves = self._grads = None

    def _hvp_retained(self, vs: list[Tensor], batched: bool = False) -> list[Tensor]:
        pairs = [(g, v) for g, v in zip(self._grads, vs) if g.requires_grad]
        lead = tuple(vs[0].shape[:1]) if batched else ()

        def zeros(leaf: Tensor) -> Tensor:
            return torch.zeros(lead + tuple(leaf.shape), device=self.device, dtype=self.dtype)

        if not pairs:  # the gradient does not depend on the parameters: H = 0
            return [zeros(leaf) for leaf in self._leaves]
        hv = torch.autograd.grad([g for g, _ in pairs], self._leaves, grad_outputs=[v for _, v in pairs],
                                 retain_graph=True, allow_unused=True, is_grads_batched=batched)
        return [zeros(leaf) if h is None else h.detach() for leaf, h in zip(self._leaves, hv)]

    def gradient(self) -> Tensor:
        """The mean-loss gradient over the selected parameters, [P] (free when the graph is retained)."""
        if self._grads is not None:
            return self._combine(torch.cat([g.detach().reshape(-1) for g in self._grads]))
        return super().gradient()

    # -- products -----------------------------------------------------------------------------
    def _hvp_double(self, vs: list[Tensor], batches) -> list[Tensor]:
        params, leaves = self._with_leaves()
        out = [torch.zeros_like(t) for t in vs]
        ev = self.evaluator
        for w, x, y in batches:
            loss = ev.batch_loss(params, self.buffers, x, y)
            g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            pairs = [(gi, v) for gi, v in zip(g, vs) if gi is not None and gi.requires_grad]
            if not pairs:  # this batch's gradient does not depend on the parameters
                continue
            hv = torch.autograd.grad([gi for gi, _ in pairs], leaves, grad_outputs=[v for _, v in pairs],
                                     allow_unused=True)
            for o, h in zip(out, hv):
                if h is not None:
                    o.add_(h.detach(), alpha=w)
        return out

    def _hvp_jvp(self, vs: list[Tensor], batches) -> list[Tensor]:
        ev, fixed, names = self.evaluator, self.point, self.names
        prim = tuple(self.point[n] for n in names)
        out = [torch.zeros_like(t) for t in vs]
        for w, x, y in batches:
            def loss_of(sel, x=x, y=y):
                return ev.batch_loss({**fixed, **dict(zip(names, sel))}, self.buffers, x, y)
            _, hv = torch.func.jvp(torch.func.grad(loss_of), (prim,), (tuple(vs),))
            for o, h in zip(out, hv):
                o.add_(h.detach(), alpha=w)
        return out

    def _batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        _, hv = torch.func.jvp(torch.func.grad(self._loss_of(x, y)), (tuple(self.point[n] for n in self.names),),
                               (tuple(vs),))
        return list(hv)

    def _local_matvec(self, vs: list[Tensor]) -> list[Tensor]:
        if self._grads is not None:
            return self._hvp_retained(vs)
        batches = self.evaluator.weighted_batches(self.source)
        fn = self._hvp_jvp if self.method == "forward-over-reverse" else self._hvp_double
        return fn(vs, batches)

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v [P] (in the evaluator's dtype and device): [P]."""
        return super().matvec(v)

    __call__ = matvec

    def matmat(self, vs: Tensor, chunk: int = 64) -> Tensor:
        """H @ vs for vs [P, k]: [P, k], ``chunk`` columns at a time, each chunk one vectorised product
        (a batched backward pass through the retained graph, else ``vmap`` over forward-over-reverse
        products); counts k products."""
        if self._grads is not None and self._batched_ok:
            cols = vs.T.to(self.device, self.dtype)
            try:
                parts = []
                for i in range(0, cols.shape[0], chunk):
                    c = cols[i:i + chunk]
                    vs_b = [t.reshape(c.shape[0], *s) for t, s in zip(torch.split(c, self.numels, dim=1), self.shapes)]
                    parts.append(torch.cat([h.reshape(c.shape[0], -1) for h in self._hvp_retained(vs_b, True)], 1))
            except RuntimeError:  # an operator without a batching rule for its double backward
                self._batched_ok = False
            else:
                self.n_hvp += vs.shape[1]
                return self._combine(torch.cat(parts).T.contiguous())
        return super().matmat(vs, chunk)  # vmap over forward-over-reverse products

    def _fastest(self, fns: Mapping[str, Callable[[], Any]], rounds: int, clear: float | None = None) -> str:
        """Time each of ``fns`` after a warm-up, interleaved over up to ``rounds`` rounds (fewer once one is
        ``clear`` times faster), keeping each one's fastest time (robust to a busy machine) in
        ``self.timings``; return the fastest name."""
        for fn in fns.values():
            fn()  # warm-up
        self.timings = {name: float("inf") for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                self._sync()
                t0 = time.perf_counter()
                fn()
                self._sync()
                self.timings[name] = min(self.timings[name], time.perf_counter() - t0)
            fast, slow = sorted(self.timings.values())
            if clear is not None and slow > clear * fast:  # a clear winner: no need for more rounds
                break
        return min(self.timings, key=self.timings.get)

    def _probe_vector(self) -> list[Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        return self.split(torch.randn(self.size, generator=gen, dtype=torch.float64).to(self.device, self.dtype))

    def _measure(self, rounds: int = 3) -> str:
        """Both recomputed HVP methods on the first batch (up to ``rounds`` rounds, fewer when one is 1.5x
        faster); return the faster method."""
        first = next(iter(self.evaluator.weighted_batches(self.source)))
        vs = self._probe_vector()
        return self._fastest({"double-backward": lambda: self._hvp_double(vs, [first]),
                              "forward-over-reverse": lambda: self._hvp_jvp(vs, [first])}, rounds, clear=1.5)

    def _measure_retained(self, rounds: int = 2) -> str:
        """A product through the retained graph against a recomputed forward-over-reverse product, whole
        source each; return the faster method ("double-backward" for the retained one)."""
        vs = self._probe_vector()
        return self._fastest({"double-backward": lambda: self._hvp_retained(vs),
                              "forward-over-reverse": lambda: self._hvp_jvp(vs, self.evaluator.weighted_batches(
                                  self.source))}, rounds)


def _retain_budget(device: torch.device, retain_mb: float | None) -> float:
    """Bytes a retained gradient graph may hold: ``retain_mb``, else $MODESCAPE_HESSIAN_RETAIN_MB, else
    2 GiB on a CPU and half the free memory on a GPU."""
    if retain_mb is None and os.environ.get("MODESCAPE_HESSIAN_RETAIN_MB"):
        try:
            retain_mb = float(os.environ["MODESCAPE_HESSIAN_RETAIN_MB"])
        except ValueError:
            raise UserError("MODESCAPE_HESSIAN_RETAIN_MB must be a number of megabytes") from None
    if retain_mb is not None:
        return float(retain_mb) * 2 ** 20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2
    return 2.0 * 2 ** 30


OPERATORS: dict[str, type[CurvatureOperator]] = {"hessian": Hessian, "ggn": GGN, "fisher": EmpiricalFisher}


def curvature_operator(kind: str, model: nn.Module | Evaluator, data: Any = None,
                       point: Mapping[str, Tensor] | None = None, **kwargs) -> CurvatureOperator:
    """The operator named ``kind`` (``"hessian"``, ``"ggn"`` or ``"fisher"``), built with ``kwargs`` as
    its class takes them. The GGN and the Fisher have one way of making products, so the Hessian's
    ``method`` ("auto" only), ``retain`` and ``retain_mb`` are accepted and ignored for them."""
    if kind not in OPERATORS:
        raise UserError(f"unknown curvature '{kind}': use one of {', '.join(CURVATURES)}")
    if kind != "hessian":
        if kwargs.pop("method", "auto") != "auto":
            raise UserError("an HVP method (double-backward, forward-over-reverse) applies to the Hessian only")
        kwargs.pop("retain", None)
        kwargs.pop("retain_mb", None)
    return OPERATORS[kind](model, data, point, **kwargs)


def shard(data: Any) -> Any:
    """This ``torchrun`` rank's share of ``data`` for a data-parallel operator: samples ``rank, rank +
    world, ...`` of ``(X, y)`` tensors, of each part of a dict of them, or of a zoo `DataSplit`'s train
    and test; ``data`` itself in a single process. (A Dataset or DataLoader: shard it with a
    ``DistributedSampler`` yourself.)"""
    rank, world = ddp.rank_world()
    if world == 1:
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0][rank::world], data[1][rank::world]
    if isinstance(data, Mapping):
        return {k: shard(v) for k, v in data.items()}
    if hasattr(data, "train") and hasattr(data, "test"):
        import dataclasses

        return dataclasses.replace(data, train=shard(tuple(data.train)), test=shard(tuple(data.test)))
    raise UserError(f"shard: give (X, y) tensors, a dict of them or a DataSplit; got {type(data).__name__} "
                    "(for a Dataset or DataLoader use torch.utils.data.DistributedSampler)")


def hvp(model: nn.Module | Evaluator, data: Any, point: Mapping[str, Tensor] | None, v: Mapping[str, Tensor] | Tensor,
        **kwargs) -> sp.Point | Tensor:
    """H v at ``point`` over ``data`` (None when ``model`` is an Evaluator); arguments in the order of
    `Hessian` (model, data, point).

    ``v`` a point (returns a point over the selected names) or a flat [P] vector (returns [P]).
    Keyword arguments as `Hessian` (``params``, ``method``, ``bn``, ...).
    """
    H = Hessian(model, data, point, **kwargs)
    return H.matvec(v) if isinstance(v, Tensor) else H.hvp(v)


__all__ = ["CURVATURES", "CurvatureOperator", "EmpiricalFisher", "GGN", "HVP_METHODS", "Hessian", "OPERATORS",
           "ROLE_WORDS", "as_evaluator", "curvature_operator", "hvp", "param_groups", "select_params", "shard"]

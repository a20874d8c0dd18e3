"""What every curvature operator shares: parameter selection, the evaluator, vectors, products, ranks.

What: `select_params` and `param_groups` (which parameters a curvature matrix is restricted to, and the
blocks of `blockwise`), `as_evaluator` (a model and data, or an `Evaluator`, as one `Evaluator`), the
base class `CurvatureOperator` and `shard` (this ``torchrun`` rank's share of the data).

`CurvatureOperator` is a symmetric P x P matrix of the whole-dataset mean loss at an explicit point,
over the selected parameters. It owns the point, the flat-vector layout (`split`, `flat`,
`to_point`), ``matvec`` / ``matmat`` / ``dense`` / ``hvp``, the mean-loss ``gradient``, the exact
batch weighting (``sum_b (n_b / N) P_b v``, from `Evaluator.weighted_batches`) and the data-parallel
combination (``sum_r (N_r / N) P_r v``, all-reduced through `modescape.distributed`). A subclass says
only how one batch's product is made, `CurvatureOperator.batch_product`; the helpers it may use for
that (`with_leaves`, `loss_of`, `outputs_of`, `combine`, `sync`) are public so that the subclasses
(`hessian`, `gauss_newton`) live in modules of their own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as ddp
from .. import space as sp
from ..errors import UserError
from ..evaluate import Evaluator

ROLE_WORDS = {
    "weights": "weight",
    "weight": "weight",
    "biases": "bias",
    "bias": "bias",
    "norms": "norm",
    "norm": "norm",
}


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
        raise UserError(
            f"parameter filter '{params}' selects no parameters: use all, weights, biases, norms "
            f"or a name prefix such as {', '.join(tops[:6])}"
        )
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


def as_evaluator(
    model: nn.Module | Evaluator,
    data: Any = None,
    *,
    bn: str | None = None,
    loss=None,
    batch_size: int | None = None,
    device=None,
    dtype=None,
) -> Evaluator:
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
    return Evaluator(
        model,
        data,
        metrics=("loss", "accuracy"),
        bn=bn or "running",
        loss=loss,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        progress=False,
    )


def jvp(f: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
    """``torch.func.jvp`` without auxiliary outputs: ``(f(*primals), J_f tangents)``."""
    out = torch.func.jvp(f, primals, tangents)
    return out[0], out[1]


class CurvatureOperator(ABC):
    """A curvature matrix of the whole-dataset mean loss at ``point``, over the parameters ``params``.

    What the Hessian, the GGN and the empirical Fisher share: ``op.size`` = P (number of selected
    entries); ``op.matvec(v [P]) -> [P]`` (also ``op @ v``); ``op.matmat(V [P, k])``; ``op.hvp(v_point)
    -> point`` over the selected names; ``op.dense() -> [P, P]`` for small P; ``op.gradient()``, the
    mean-loss gradient [P]; ``op.n_hvp`` counts products; ``op.kind`` names the matrix.

    ``distributed``: combine the products of every ``torchrun`` rank (each built on its own shard of the
    data, see `shard`) as ``sum_r (N_r / N) P_r v``; default (None): whenever a process group of more
    than one rank is active. Subclasses implement ``batch_product(vs, x, y) -> [tensor per name]``,
    the product of one batch's mean-loss matrix with ``vs``.
    """

    kind = "curvature"

    def __init__(
        self,
        model: nn.Module | Evaluator,
        data: Any = None,
        point: Mapping[str, Tensor] | None = None,
        *,
        params: str | Sequence[str] | None = "all",
        bn: str | None = None,
        buffers: Mapping[str, Tensor] | None = None,
        source: str | None = None,
        loss=None,
        batch_size: int | None = None,
        device=None,
        dtype=None,
        distributed: bool | None = None,
    ):
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
        self.batched_ok = True  # whether `matmat` may vmap the products (False after an op without a rule)
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
        return [t.reshape(s) for t, s in zip(torch.split(v, self.numels), self.shapes, strict=True)]

    def flat(self, point: Mapping[str, Tensor]) -> Tensor:
        """The selected entries of a point as one vector [P]."""
        return torch.cat([point[n].reshape(-1).to(self.device, self.dtype) for n in self.names])

    def to_point(self, v: Tensor, full: bool = True) -> sp.Point:
        """[P] -> a point over the selected names, or (``full``) the whole layout with zeros elsewhere."""
        parts = dict(zip(self.names, self.split(v), strict=True))
        if not full:
            return parts
        return {n: parts[n] if n in parts else torch.zeros_like(self.point[n]) for n in self.space.names}

    def with_leaves(self) -> tuple[sp.Point, list[Tensor]]:
        """The point with fresh leaf tensors (requiring grad) for the selected names: (params, leaves)."""
        leaves = [self.point[n].detach().requires_grad_(True) for n in self.names]
        return {**self.point, **dict(zip(self.names, leaves, strict=True))}, leaves

    def combine(self, local: Tensor) -> Tensor:
        """This rank's mean-loss quantity -> the whole data's: ``sum_r (N_r / N) local_r`` (itself alone)."""
        if not self.distributed:
            return local
        return ddp.all_reduce(local * (self._n_local / self.n_total))

    def loss_of(self, x: Tensor, y: Tensor):
        """The batch's mean loss as a function of the selected tensors (the others fixed at the point)."""
        ev, fixed, names = self.evaluator, self.point, self.names

        def loss_of(sel):
            return ev.batch_loss({**fixed, **dict(zip(names, sel, strict=True))}, self.buffers, x, y)

        return loss_of

    def outputs_of(self, x: Tensor):
        """The network's outputs on ``x`` as a function of the selected tensors (the others fixed)."""
        ev, fixed, names = self.evaluator, self.point, self.names

        def outputs_of(sel):
            return ev.forward({**fixed, **dict(zip(names, sel, strict=True))}, self.buffers, x)

        return outputs_of

    # -- products -----------------------------------------------------------------------------
    @abstractmethod
    def batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        """The product of batch ``(x, y)``'s mean-loss matrix with ``vs`` (one tensor per selected name):
        what a subclass implements (it may be called under ``vmap``, see `matmat`)."""

    def local_matvec(self, vs: list[Tensor]) -> list[Tensor]:
        """This rank's product ``sum_b (n_b / N_local) P_b vs``, before `combine`."""
        out = [torch.zeros_like(t) for t in vs]
        for w, x, y in self.evaluator.weighted_batches(self.source):
            for o, h in zip(out, self.batch_product(vs, x, y), strict=True):
                o.add_(h.detach(), alpha=w)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """The matrix times a flat vector v [P] (in the evaluator's dtype and device): [P]."""
        vs = [t.to(self.device, self.dtype) for t in self.split(v)]
        out = self.local_matvec(vs)
        self.n_hvp += 1
        return self.combine(torch.cat([o.reshape(-1) for o in out]))

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
                return torch.cat([h.reshape(-1) for h in self.batch_product(self.split(v), x, y)])

            for i in range(0, cols.shape[0], chunk):
                part = cols[i : i + chunk]
                if self.batched_ok:
                    try:
                        out[i : i + chunk] += w * torch.func.vmap(one)(part).detach()
                        continue
                    except RuntimeError:  # an operation without a batching rule
                        self.batched_ok = False
                out[i : i + chunk] += w * torch.stack([one(c).detach() for c in part])
        self.n_hvp += vs.shape[1]
        return self.combine(out.T.contiguous())

    def dense(self) -> Tensor:
        """The dense [P, P] matrix (P products, vectorised; for small models and tests)."""
        if self.size > 20000:
            raise UserError(f"a dense {self.kind} of {self.size} parameters is too large: use a parameter filter")
        return self.matmat(torch.eye(self.size, device=self.device, dtype=self.dtype))

    def gradient(self) -> Tensor:
        """The mean-loss gradient over the selected parameters, [P]."""
        params, leaves = self.with_leaves()
        out = [torch.zeros_like(t) for t in leaves]
        for w, x, y in self.evaluator.weighted_batches(self.source):
            loss = self.evaluator.batch_loss(params, self.buffers, x, y)
            for o, g in zip(out, torch.autograd.grad(loss, leaves, allow_unused=True), strict=True):
                if g is not None:
                    o.add_(g, alpha=w)
        return self.combine(torch.cat([o.reshape(-1) for o in out]))

    @property
    def retained(self) -> bool:
        return False

    def release(self) -> None:
        """Free what the operator holds between products (the Hessian's retained graph); the GGN and the
        Fisher hold nothing, so by default there is nothing to free."""
        return None

    def sync(self) -> None:
        """Wait for the device's queued work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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
    raise UserError(
        f"shard: give (X, y) tensors, a dict of them or a DataSplit; got {type(data).__name__} "
        "(for a Dataset or DataLoader use torch.utils.data.DistributedSampler)"
    )


__all__ = ["CurvatureOperator", "ROLE_WORDS", "as_evaluator", "jvp", "param_groups", "select_params", "shard"]

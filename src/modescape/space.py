"""Weight space: a model's parameter layout, and all vector arithmetic on points.

A *point* is a plain ``dict[str, Tensor]`` of parameters, exactly what ``torch.func.functional_call``
takes. Buffers (BatchNorm running statistics) are kept separately and explicitly: they are not
coordinates of weight space, they are statistics of the data at a point.

A *stacked point* holds K points at once: every tensor has a leading dimension K. This is what
``torch.func.vmap`` consumes, and what families return for a batch of coordinates.

Every vector operation used anywhere in the package (add, sub, scale, lerp, dot, norm, flatten,
unflatten, stack) lives here, so that there is one home for each of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from .errors import UserError

Point = dict[str, Tensor]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
    nn.LayerNorm,
    nn.GroupNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)

ROLES = ("weight", "bias", "norm")


@dataclass(frozen=True)
class Entry:
    """One tensor of the layout: its name, shape, dtype, role and owning module's type name."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    role: str  # "weight" | "bias" | "norm" for parameters; "buffer" for buffers
    module_type: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a point's tensors, in order: enough to flatten and unflatten."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, point: Mapping[str, Tensor]) -> Layout:
        return cls(tuple(point), tuple(tuple(t.shape) for t in point.values()))

    @property
    def numel(self) -> int:
        total = 0
        for s in self.shapes:
            n = 1
            for d in s:
                n *= d
            total += n
        return total

    def flatten(self, point: Mapping[str, Tensor]) -> Tensor:
        """A point -> [D] in layout order (shapes checked; a stacked point goes through `flatten_stacked`)."""
        check_compatible(
            dict(zip(self.names, self.shapes, strict=True)), {k: tuple(v.shape) for k, v in point.items()}, what="point"
        )
        return torch.cat([point[n].reshape(-1) for n in self.names])

    def flatten_stacked(self, point: Mapping[str, Tensor]) -> Tensor:
        """A stacked point [K, ...] -> [K, D] in layout order."""
        k = point[self.names[0]].shape[0]
        return torch.cat([point[n].reshape(k, -1) for n in self.names], dim=1)

    def unflatten(self, flat: Tensor) -> Point:
        """[D] -> point; [K, D] -> stacked point.

        One ``torch.split`` (not a slice per tensor): its backward is a single concatenation, where
        per-tensor slices would each scatter into a fresh zero vector of size D (training curves).
        """
        sizes = [math.prod(shape) for shape in self.shapes]
        lead = tuple(flat.shape[:-1])
        parts = torch.split(flat, sizes, dim=-1)
        return {
            name: part.reshape(lead + shape) for name, shape, part in zip(self.names, self.shapes, parts, strict=True)
        }


class WeightSpace:
    """The layout of a model's weight space, recorded once.

    ``roles``: ``norm`` for every parameter of a BatchNorm / LayerNorm / GroupNorm (/ InstanceNorm,
    RMSNorm) module, ``bias`` for other parameters named ``bias``, ``weight`` for the rest.
    Buffers are listed separately (``buffer_entries``) with role ``buffer``.

    >>> space = WeightSpace(model)
    >>> p = space.point(model)  # dict[str, Tensor], detached copies
    >>> v = space.flatten(p)  # [D]
    >>> space.unflatten(v)  # back to a point
    """

    def __init__(self, model: nn.Module):
        owners: dict[str, nn.Module] = {}
        for mod_name, mod in model.named_modules():
            for pname, _ in mod.named_parameters(recurse=False):
                owners[f"{mod_name}.{pname}" if mod_name else pname] = mod
            for bname, _ in mod.named_buffers(recurse=False):
                owners[f"{mod_name}.{bname}" if mod_name else bname] = mod
        entries = []
        for name, p in model.named_parameters():
            mod = owners[name]
            if isinstance(mod, NORM_TYPES):
                role = "norm"
            elif name.rsplit(".", 1)[-1] == "bias":
                role = "bias"
            else:
                role = "weight"
            entries.append(Entry(name, tuple(p.shape), p.dtype, role, type(mod).__name__))
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.buffer_entries: tuple[Entry, ...] = tuple(
            Entry(name, tuple(b.shape), b.dtype, "buffer", type(owners[name]).__name__)
            for name, b in model.named_buffers()
        )
        self.names: tuple[str, ...] = tuple(e.name for e in self.entries)
        self.buffer_names: tuple[str, ...] = tuple(e.name for e in self.buffer_entries)
        self.shapes: dict[str, tuple[int, ...]] = {e.name: e.shape for e in self.entries}
        self.roles: dict[str, str] = {e.name: e.role for e in self.entries}
        self.numel: int = sum(e.numel for e in self.entries)
        self.layout = Layout(self.names, tuple(e.shape for e in self.entries))

    def __repr__(self) -> str:
        return f"WeightSpace({len(self.entries)} tensors, {self.numel} parameters, {len(self.buffer_entries)} buffers)"

    # -- points from models -------------------------------------------------------------------
    def point(self, model: nn.Module) -> Point:
        """The model's parameters as a point (detached copies; the model is not touched)."""
        params = dict(model.named_parameters())
        self.check(params, what="model")
        return {n: params[n].detach().clone() for n in self.names}

    def buffers(self, model: nn.Module) -> Point:
        """The model's buffers (running statistics and counters), detached copies."""
        return {n: b.detach().clone() for n, b in model.named_buffers()}

    def split_state(self, x: nn.Module | Mapping[str, Tensor], what: str = "point") -> tuple[Point, Point]:
        """``(parameters, buffers)`` of a module, or of a mapping holding the parameters (a point) and
        optionally buffers (a state dict); detached. A mapping without buffers gives ``{}``."""
        if isinstance(x, nn.Module):
            return self.point(x), self.buffers(x)
        if not isinstance(x, Mapping):
            raise UserError(f"{what} must be an nn.Module or a point (dict of tensors), got {type(x).__name__}")
        params = {n: x[n] for n in self.names if n in x}
        self.check(params, what=what)
        buffers = {n: x[n].detach() for n in self.buffer_names if n in x}
        return {k: v.detach() for k, v in params.items()}, buffers

    def check(self, point: Mapping[str, Tensor], what: str = "point", stacked: bool = False) -> None:
        """Raise `UserError` naming the first key or shape where ``point`` differs from the layout."""
        check_compatible(
            self.shapes, {k: tuple(v.shape[1:] if stacked else v.shape) for k, v in point.items()}, what=what
        )

    def is_stacked(self, point: Mapping[str, Tensor]) -> bool:
        """True when ``point`` carries a leading batch dimension over the layout's shapes."""
        first = self.names[0]
        shape = tuple(point[first].shape)
        if shape == self.shapes[first]:
            return False
        if shape[1:] == self.shapes[first]:
            return True
        raise UserError(
            f"tensor '{first}' has shape {list(shape)}; expected {list(self.shapes[first])} "
            f"or a stacked [K, ...] version of it"
        )

    # -- flat vectors -------------------------------------------------------------------------
    def flatten(self, point: Mapping[str, Tensor]) -> Tensor:
        """Concatenate a point into one vector [D] (or [K, D] for a stacked point), layout order."""
        if self.is_stacked(point):
            return self.layout.flatten_stacked(point)
        return self.layout.flatten(point)

    def unflatten(self, vec: Tensor) -> Point:
        """Inverse of `flatten`: a [D] vector to a point, or a [K, D] matrix to a stacked point."""
        if vec.shape[-1] != self.numel:
            raise UserError(f"vector has {vec.shape[-1]} entries; this weight space has {self.numel}")
        return self.layout.unflatten(vec)

    def zeros(
        self,
        like: Mapping[str, Tensor] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Point:
        """A point of zeros (on ``like``'s device and dtype when given)."""
        if like is not None:
            return {n: torch.zeros_like(like[n]) for n in self.names}
        return {e.name: torch.zeros(e.shape, device=device, dtype=dtype or e.dtype) for e in self.entries}

    def select(self, point: Mapping[str, Tensor], roles: Iterable[str]) -> Point:
        """A copy of ``point`` in which parameters whose role is not in ``roles`` are zero."""
        keep = set(roles)
        return {n: (t if self.roles[n] in keep else torch.zeros_like(t)) for n, t in point.items()}


def module_at(model: nn.Module, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` holding ``point`` (and ``buffers`` where given): for saving a point as a checkpoint
    or handing it to code that wants a module. ``model`` itself is not touched."""
    import copy

    net = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(point[k])
        for k, b in net.named_buffers():
            if buffers and k in buffers:
                b.copy_(buffers[k])
    return net


def check_compatible(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], what: str) -> None:
    """Compare two name->shape maps; raise `UserError` naming the first differing key and shapes."""
    for name, shape in expected.items():
        if name not in got:
            raise UserError(
                f"{what} is missing tensor '{name}' (shape {list(shape)}): was it saved from a different model?"
            )
        if tuple(got[name]) != tuple(shape):
            raise UserError(
                f"{what} tensor '{name}' has shape {list(got[name])}; the model expects "
                f"{list(shape)}: check the model arguments"
            )
    for name in got:
        if name not in expected:
            raise UserError(
                f"{what} has tensor '{name}' that the model does not have: was it saved from a different model?"
            )


# -- vector operations on points (plain or stacked; keys follow the first argument) -------------
# Two points must hold the same tensors with the same shapes: torch would broadcast a [K, ...] stacked
# point against a plain one, or a [1, n] against an [n], and give a silently wrong result.


def same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor], op: str = "point operation") -> None:
    """Raise `UserError` unless ``a`` and ``b`` hold the same names with the same shapes."""
    if a.keys() != b.keys():
        extra = sorted(set(a) ^ set(b))
        raise UserError(
            f"{op}: the two points hold different tensors (e.g. '{extra[0]}'): they belong to different models"
        )
    for k, v in a.items():
        if v.shape != b[k].shape:
            raise UserError(
                f"{op}: tensor '{k}' has shape {list(v.shape)} in one point and {list(b[k].shape)} in "
                f"the other: they belong to different models (or one is stacked)"
            )


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Point:
    """a + b."""
    same_layout(a, b, "add")
    return {k: a[k] + b[k] for k in a}


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Point:
    """a - b."""
    same_layout(a, b, "sub")
    return {k: a[k] - b[k] for k in a}


def scale(a: Mapping[str, Tensor], s: float | Tensor) -> Point:
    """s * a."""
    return {k: a[k] * s for k in a}


def axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Point:
    """alpha * x + y."""
    same_layout(x, y, "axpy")
    return {k: y[k] + alpha * x[k] for k in y}


def lerp(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float | Tensor) -> Point:
    """(1 - t) a + t b; t may be a scalar or a [K] tensor (giving a stacked point)."""
    same_layout(a, b, "lerp")
    if isinstance(t, Tensor) and t.dim() == 1:
        return {k: a[k].unsqueeze(0) + _bcast(t, a[k]) * (b[k] - a[k]).unsqueeze(0) for k in a}
    return {k: a[k] + t * (b[k] - a[k]) for k in a}


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """<a, b> summed over all tensors: a scalar."""
    same_layout(a, b, "dot")
    return cast(Tensor, sum((a[k] * b[k]).sum() for k in a))  # a point has at least one tensor


def batched_dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Row-wise <a_i, b_i> of two stacked points: [K]."""
    same_layout(a, b, "batched_dot")
    return cast(Tensor, sum((a[k] * b[k]).reshape(a[k].shape[0], -1).sum(1) for k in a))


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """Euclidean norm over all tensors."""
    return dot(a, a).sqrt()


def flatten(a: Mapping[str, Tensor]) -> Tensor:
    """Concatenate a point's tensors in its key order into one vector (no layout needed)."""
    return torch.cat([t.reshape(-1) for t in a.values()])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> Point:
    """Split a vector into a point shaped like ``like`` (key order of ``like``)."""
    layout = Layout.of(like)
    if vec.numel() != layout.numel:
        raise UserError(f"vector has {vec.numel()} entries; the point has {layout.numel}")
    return layout.unflatten(vec.reshape(-1))


def stack(points: Sequence[Mapping[str, Tensor]]) -> Point:
    """K points -> one stacked point with a leading dimension K."""
    if len(points) == 0:
        raise UserError("cannot stack an empty list of points")
    keys = list(points[0].keys())
    for i, p in enumerate(points[1:], 1):
        if list(p.keys()) != keys:
            missing = set(keys) ^ set(p.keys())
            raise UserError(f"point {i} has different tensors from point 0 (e.g. '{sorted(missing)[0]}')")
    return {k: torch.stack([p[k] for p in points]) for k in keys}


def unstack(point: Mapping[str, Tensor]) -> list[Point]:
    """A stacked point -> a list of K points."""
    k = next(iter(point.values())).shape[0]
    return [{n: t[i] for n, t in point.items()} for i in range(k)]


def clone(a: Mapping[str, Tensor]) -> Point:
    return {k: v.detach().clone() for k, v in a.items()}


def to(a: Mapping[str, Tensor], device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Point:
    """Move a point; integer tensors keep their dtype."""
    return {
        k: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
        for k, v in a.items()
    }


def is_finite(a: Mapping[str, Tensor]) -> str | None:
    """Name of the first tensor with a NaN or infinity, or None when all are finite."""
    for k, v in a.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


def _bcast(c: Tensor, like: Tensor) -> Tensor:
    return c.reshape((-1,) + (1,) * like.dim())

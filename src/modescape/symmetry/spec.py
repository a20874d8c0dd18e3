"""Permutation specs: which axes of which tensors share one permutation, inferred from the fx graph.

Hidden units of a network can be reordered without changing the function it computes, as long as
every tensor that indexes those units is reordered the same way: the producing layer's output rows
and bias, every normalisation parameter *and running statistic* on that channel, and the consuming
layers' input columns. A `PermutationSpec` lists, for every such permutation, the (tensor, axis,
block) triples it acts on; ``block`` > 1 means the axis holds ``block`` consecutive entries per unit
(a Linear reading a flattened [C, H, W] map permutes blocks of H*W columns).

`infer_spec(model)` finds them by propagating "which permutation indexes the channel axis" through the
`torch.fx.symbolic_trace` graph: every Linear / Conv output starts a new permutation; norms,
activations, pooling and flattening pass it on; an addition ties its inputs' permutations into one
(a residual stream shares one permutation across all its blocks, projection shortcuts included); the
model's input and output are fixed. What fx cannot trace, or an op it does not know, raises a
`UserError` naming the node; write that spec by hand (`PermutationSpec.from_dict`, ``--spec FILE``)
or declare custom channel-wise ops with ``elementwise=``.

Convention (git-re-basin's): ``apply(spec, state, perms)`` index-selects every listed axis with its
permutation, so unit ``k`` of the result is unit ``perms[p][k]`` of the input.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError

Perms = dict[str, Tensor]  # permutation name -> LongTensor [n]


@dataclass(frozen=True)
class Axis:
    """One permuted axis: tensor ``name``, its ``axis``, ``block`` consecutive entries per unit."""

    name: str
    axis: int
    block: int = 1


@dataclass
class PermutationSpec:
    """Permutation name -> size and the axes it acts on.

    ``sizes``: {perm: n units}; ``axes``: {perm: [Axis, ...]} covering parameters and buffers.
    ``producers``: {perm: module names whose outputs start it} (for naming layers on the CLI).
    ``nodes``: {perm: [(fx node name, kind)]}: the traced values whose axis 1 it indexes, kind one of
    ``linear`` (a Linear/Conv output), ``norm``, ``act`` (an activation), ``tie`` (a sum), ``other``;
    empty for hand-written specs (activation matching and REPAIR need it).
    """

    sizes: dict[str, int]
    axes: dict[str, list[Axis]]
    producers: dict[str, list[str]] = field(default_factory=dict)
    nodes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[tuple[str, int], str] = {}
        for p, axes in self.axes.items():
            if p not in self.sizes:
                raise UserError(f"permutation '{p}' has axes but no size in the spec")
            for a in axes:
                if (a.name, a.axis) in seen:
                    raise UserError(f"axis {a.axis} of '{a.name}' is claimed by two permutations "
                                    f"('{seen[(a.name, a.axis)]}' and '{p}'): they must be one")
                seen[(a.name, a.axis)] = p

    # -- views -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.sizes)

    def tensor_axes(self) -> dict[str, list[tuple[str, Axis]]]:
        """Tensor name -> [(perm, Axis)] (the inverse view, git-re-basin's ``axes_to_perm``)."""
        out: dict[str, list[tuple[str, Axis]]] = {}
        for p, axes in self.axes.items():
            for a in axes:
                out.setdefault(a.name, []).append((p, a))
        return out

    def canonical(self) -> frozenset:
        """The spec up to the names of its permutations: a set of (size, set of axes)."""
        return frozenset((self.sizes[p], frozenset(self.axes[p])) for p in self.sizes)

    def layer_perm(self, layer: str) -> str:
        """The permutation of a layer's output units: ``layer`` is a module or permutation name."""
        if layer in self.sizes:
            return layer
        for p, mods in self.producers.items():
            if layer in mods:
                return p
        for p, axes in self.axes.items():
            if any(a.name == f"{layer}.weight" and a.axis == 0 for a in axes):
                return p
        choices = sorted({m for mods in self.producers.values() for m in mods} | set(self.sizes))
        raise UserError(f"layer '{layer}' has no permutable output units; choose one of: {', '.join(choices)}")

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"permutations": {p: {"size": self.sizes[p],
                                     "axes": [[a.name, a.axis, a.block] for a in self.axes[p]],
                                     "producers": self.producers.get(p, []),
                                     "nodes": [list(n) for n in self.nodes.get(p, [])]} for p in self.sizes}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PermutationSpec":
        """Inverse of `to_dict`: ``{"permutations": {name: {"size": n, "axes": [[tensor, axis, block], ...]}}}``."""
        try:
            perms = d["permutations"]
            sizes = {p: int(v["size"]) for p, v in perms.items()}
            axes = {p: [Axis(str(a[0]), int(a[1]), int(a[2]) if len(a) > 2 else 1) for a in v["axes"]]
                    for p, v in perms.items()}
            producers = {p: list(v.get("producers", [])) for p, v in perms.items()}
            nodes = {p: [(str(n[0]), str(n[1])) for n in v.get("nodes", [])] for p, v in perms.items()}
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise UserError(f"malformed permutation spec ({e!r}); expected "
                            '{"permutations": {name: {"size": n, "axes": [[tensor, axis, block], ...]}}}') from None
        return cls(sizes, axes, producers, nodes)

    @classmethod
    def load(cls, path) -> "PermutationSpec":
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read permutation spec {path}: {e}") from None

    def check(self, state: Mapping[str, Tensor]) -> None:
        """Raise `UserError` if a tensor the spec names has the wrong size on a permuted axis.

        Tensors the spec names but ``state`` lacks are fine (a point without buffers).
        """
        for p, axes in self.axes.items():
            for a in axes:
                if a.name in state:
                    t = state[a.name]
                    if a.axis >= t.dim() or t.shape[a.axis] != self.sizes[p] * a.block:
                        raise UserError(f"tensor '{a.name}' has shape {list(t.shape)}, but permutation '{p}' "
                                        f"expects {self.sizes[p] * a.block} entries on axis {a.axis}: "
                                        f"the spec is for a different model")

    def summary(self) -> str:
        """Human-readable listing, one permutation per block."""
        lines = []
        for p in self.sizes:
            lines.append(f"{p}  (n={self.sizes[p]})")
            for a in self.axes[p]:
                lines.append(f"    {a.name}[{a.axis}]" + (f" (blocks of {a.block})" if a.block > 1 else ""))
        return "\n".join(lines)


# -- applying permutations ---------------------------------------------------------------------

def _axis_index(perm: Tensor, block: int) -> Tensor:
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1)


def permute_tensor(t: Tensor, axis: int, perm: Tensor, block: int = 1) -> Tensor:
    """Index-select ``axis`` of ``t`` with ``perm`` (expanded to blocks)."""
    return t.index_select(axis, _axis_index(perm.to(t.device), block))


def apply(spec: PermutationSpec, state: Mapping[str, Tensor], perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A permuted copy of ``state`` (parameters and/or buffers): unit k becomes unit ``perms[p][k]``.

    Tensors the spec does not name are returned unchanged (not copied). Permutations missing from
    ``perms`` are the identity.
    """
    spec.check(state)
    for p, perm in perms.items():
        if p not in spec.sizes:
            raise UserError(f"unknown permutation '{p}'; the spec has {', '.join(spec.sizes)}")
        if perm.shape != (spec.sizes[p],):
            raise UserError(f"permutation '{p}' has shape {list(perm.shape)}; expected [{spec.sizes[p]}]")
    out = dict(state)
    for name, entries in spec.tensor_axes().items():
        if name not in out:
            continue
        t = out[name]
        for p, a in entries:
            if p in perms:
                t = permute_tensor(t, a.axis, perms[p], a.block)
        out[name] = t
    return out


def random_perms(spec: PermutationSpec, seed: int = 0) -> Perms:
    """One uniformly random permutation per spec entry, from a private generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return {p: torch.randperm(n, generator=gen) for p, n in spec.sizes.items()}


def identity_perms(spec: PermutationSpec) -> Perms:
    return {p: torch.arange(n) for p, n in spec.sizes.items()}


def invert(perms: Mapping[str, Tensor]) -> Perms:
    """The inverse permutations: ``apply(apply(s, P), invert(P)) == s``."""
    return {p: torch.argsort(v) for p, v in perms.items()}


def compose(first: Mapping[str, Tensor], then: Mapping[str, Tensor]) -> Perms:
    """Permutations equal to applying ``first`` and then ``then``."""
    return {p: first[p][then[p]] if p in then else first[p] for p in first}


# -- inference from the fx graph ----------------------------------------------------------------

_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus,
                        nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Mish, nn.Hardtanh, nn.ReLU6,
                        nn.Hardswish, nn.Hardsigmoid, nn.PReLU)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ELEMENTWISE_FUNCS = {"relu", "tanh", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "softplus", "dropout",
                      "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
                      "adaptive_avg_pool2d", "adaptive_max_pool2d", "contiguous", "clone", "relu6",
                      "hardtanh", "mish", "detach"}
_TIE_FUNCS = {"add", "sub", "mul", "iadd", "isub", "imul"}
_SCALE_FUNCS = {"truediv", "div", "neg"}
_FLATTEN_FUNCS = {"flatten", "view", "reshape"}


class _Groups:
    """Union-find over candidate permutations; group 0 is 'fixed' (the input and output units)."""

    def __init__(self) -> None:
        self.parent = [0]
        self.size: list[int | None] = [None]
        self.origin: list[str] = ["<fixed>"]

    def new(self, n: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(n)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self.size[ra], self.size[rb]
        if sa is not None and sb is not None and sa != sb:
            raise UserError(f"{where}: ties {sa} units to {sb} units; the shapes do not match")
        lo, hi = min(ra, rb), max(ra, rb)  # the older group (or 'fixed') names the union
        self.parent[hi] = lo
        if self.size[lo] is None and lo != 0:
            self.size[lo] = self.size[hi]
        return lo


@dataclass
class _Val:
    """What the fx propagation knows about one node's tensor: the group on axis 1 and its block."""

    group: int  # 0 = fixed
    block: int = 1
    shape: tuple[int, ...] | None = None


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many exception types for untraceable code
        raise UserError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Write its permutation spec by hand (PermutationSpec.from_dict, or --spec FILE.json in the shape "
            "printed by `modescape spec --json` for a traceable model)") from None


def _example_input(model: nn.Module, input_shape: Sequence[int] | None, example: Tensor | None) -> Tensor:
    if example is not None:
        return example
    if input_shape is None:
        spec = getattr(model, "modescape_spec", None)
        if spec and "input_shape" in spec:
            input_shape = spec["input_shape"]
    if input_shape is None:
        raise UserError("infer_spec needs the shape of one input: pass input_shape=(C, H, W) or (features,), "
                        "or example=a batch of inputs")
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None else torch.float32
    return torch.zeros((2, *[int(s) for s in input_shape]), dtype=dtype,
                       device=first.device if first is not None else "cpu")


def infer_spec(model: nn.Module, input_shape: Sequence[int] | None = None, example: Tensor | None = None,
               elementwise: Iterable[str] = ()) -> PermutationSpec:
    """Infer the permutation spec of ``model`` from its ``torch.fx`` graph (model not modified).

    ``input_shape``: one sample's shape (default: ``model.modescape_spec["input_shape"]`` of zoo
    models), or ``example``: an input batch; used to learn every node's shape.
    ``elementwise``: names of extra module classes or functions that act on each channel separately
    (custom activations), passed through like ReLU.
    Raises `UserError` naming the node it cannot handle.
    """
    extra = set(elementwise)
    work = copy.deepcopy(model).eval()
    gm = _trace(work)
    x = _example_input(model, input_shape, example)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as e:
        raise UserError(f"running {type(model).__name__} on an input of shape {list(x.shape)} failed ({e}); "
                        "pass the right input_shape") from None
    modules = dict(gm.named_modules())
    params = dict(work.named_parameters())
    buffers = dict(work.named_buffers())
    groups = _Groups()
    claims: dict[tuple[str, int], tuple[int, int]] = {}  # (tensor, axis) -> (group, block)
    producers: dict[int, list[str]] = {}
    vals: dict[fx.Node, _Val | None] = {}
    kinds: dict[str, str] = {}

    def shape_of(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def claim(tensor: str, axis: int, group: int, block: int, where: str) -> None:
        if tensor not in params and tensor not in buffers:
            return
        key = (tensor, axis)
        if key in claims:
            old_g, old_b = claims[key]
            if old_b != block:
                raise UserError(f"{where}: axis {axis} of '{tensor}' is used with two block sizes")
            groups.union(old_g, group, where)
        else:
            claims[key] = (group, block)

    def fail(node: fx.Node, why: str) -> UserError:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return UserError(f"cannot infer the permutation spec at fx node '{node.name}' ({node.op} {target}): {why}. "
                         f"Pass elementwise=['{target}'] if it acts on each channel separately, or write the "
                         f"spec by hand (PermutationSpec.from_dict / --spec FILE.json)")

    def val(a) -> _Val | None:
        return vals.get(a) if isinstance(a, fx.Node) else None

    def tensor_args(node) -> list[_Val]:
        out = []
        for a in list(node.args) + list(node.kwargs.values()):
            v = val(a)
            if v is not None:
                out.append(v)
        return out

    def channel_in(node: fx.Node, v: _Val, n_in: int, what: str) -> tuple[int, int]:
        """(group, block) feeding a layer that reads ``n_in`` input features on axis 1."""
        if v.group == 0:
            return 0, 1
        size = groups.size[groups.find(v.group)]
        if size is None or n_in % size != 0:
            raise fail(node, f"{what} reads {n_in} features but its input carries {size} permuted units")
        return v.group, n_in // size

    for node in gm.graph.nodes:
        shape = shape_of(node)
        if node.op == "placeholder":
            vals[node] = _Val(0, 1, shape)
            continue
        if node.op == "get_attr":
            raise fail(node, "a parameter used outside its module (functional layer)")
        if node.op == "output":
            def fix(a):
                v = val(a)
                if v is not None:
                    groups.union(v.group, 0, f"output '{node.name}'")
                elif isinstance(a, (tuple, list)):
                    for b in a:
                        fix(b)
                elif isinstance(a, dict):
                    for b in a.values():
                        fix(b)
            fix(node.args[0])
            continue
        ins = tensor_args(node)
        first = val(node.args[0]) if node.args else None
        if node.op == "call_module":
            mod = modules[node.target]
            name = node.target
            kind = type(mod).__name__
            if first is None:
                raise fail(node, "its first argument is not a traced tensor")
            if len(ins) > 1:
                raise fail(node, "a module with several tensor inputs")
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                is_linear = isinstance(mod, nn.Linear)
                if is_linear and first.shape is not None and len(first.shape) != 2:
                    if first.group != 0:
                        raise fail(node, "a Linear applied to a tensor of rank != 2 with permuted channels")
                if not is_linear and mod.groups != 1:
                    raise fail(node, "a grouped convolution")
                n_out = mod.out_features if is_linear else mod.out_channels
                n_in = mod.in_features if is_linear else mod.in_channels
                g_in, b_in = channel_in(node, first, n_in, kind)
                claim(f"{name}.weight", 1, g_in, b_in, name)
                g = groups.new(n_out, name)
                producers.setdefault(g, []).append(name)
                claim(f"{name}.weight", 0, g, 1, name)
                claim(f"{name}.bias", 0, g, 1, name)
                vals[node] = _Val(g, 1, shape)
                kinds[node.name] = "linear"
            elif isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if isinstance(mod, nn.GroupNorm):
                    if mod.num_groups not in (1, mod.num_channels) and first.group != 0:
                        raise fail(node, f"a GroupNorm with {mod.num_groups} groups of {mod.num_channels} channels "
                                         f"only allows permutations inside groups")
                    n_ch = mod.num_channels
                elif isinstance(mod, nn.LayerNorm):
                    ns = tuple(mod.normalized_shape)
                    if first.shape is not None and len(first.shape) - 1 != len(ns) and first.group != 0:
                        raise fail(node, "a LayerNorm that does not normalise over all non-batch axes")
                    n_ch = ns[0]
                else:
                    n_ch = mod.num_features
                g_in, b_in = channel_in(node, first, n_ch, kind)
                for suffix in ("weight", "bias", "running_mean", "running_var"):
                    claim(f"{name}.{suffix}", 0, g_in, b_in, name)
                vals[node] = _Val(first.group, first.block, shape)
                kinds[node.name] = "norm"
            elif isinstance(mod, _ELEMENTWISE_MODULES + _POOL_MODULES) or kind in extra:
                if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
                    g_in, b_in = channel_in(node, first, mod.num_parameters, kind)
                    claim(f"{name}.weight", 0, g_in, b_in, name)
                vals[node] = _Val(first.group, first.block, shape)
                if not isinstance(mod, _POOL_MODULES + (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
                    kinds[node.name] = "act"
            elif isinstance(mod, nn.Flatten):
                vals[node] = _flatten(node, first, shape, mod.start_dim, fail)
            else:
                if not list(mod.parameters()) and first.group == 0:
                    vals[node] = _Val(0, 1, shape)
                else:
                    raise fail(node, f"module type {kind} is not known to act channel-wise")
            continue
        # call_function / call_method
        fname = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node.target is getattr or fname in ("size", "dim"):
            vals[node] = None  # sizes are Python values, not tensors
            continue
        if not ins:
            vals[node] = None if shape is None else _Val(0, 1, shape)
            continue
        if fname in _ELEMENTWISE_FUNCS or fname in extra or (fname in _SCALE_FUNCS and len(ins) == 1):
            if len(ins) > 1:
                raise fail(node, "an elementwise function with several tensor inputs")
            vals[node] = _Val(ins[0].group, ins[0].block, shape)
            if fname not in _SCALE_FUNCS and "pool" not in fname and fname not in ("dropout", "contiguous", "clone", "detach"):
                kinds[node.name] = "act"
        elif fname in _TIE_FUNCS:
            ranked = [v for v in ins if v.shape is None or len(v.shape) > 1]
            g = ranked[0].group if ranked else 0
            for v in ranked[1:]:
                if v.block != ranked[0].block:
                    raise fail(node, "adds tensors with different channel layouts")
                g = groups.union(g, v.group, f"'{node.name}'")
            vals[node] = _Val(g, ranked[0].block if ranked else 1, shape)
            kinds[node.name] = "tie"
        elif fname in _FLATTEN_FUNCS:
            if fname == "flatten":
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            else:
                start = 1
            vals[node] = _flatten(node, ins[0], shape, start, fail)
        elif fname in ("mean", "amax", "sum") and ins[0].group != 0:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            rank = len(ins[0].shape) if ins[0].shape is not None else 4
            dims = [d % rank for d in dims]
            if not dims or 0 in dims or 1 in dims:
                raise fail(node, "a reduction over the channel axis")
            vals[node] = _Val(ins[0].group, ins[0].block, shape)
        elif all(v.group == 0 for v in ins):
            vals[node] = _Val(0, 1, shape)
        else:
            raise fail(node, "an operation not known to act channel-wise")

    # collect: every claimed axis whose group is not tied to the fixed input/output
    roots: dict[int, list[Axis]] = {}
    for (tensor, axis), (g, block) in claims.items():
        r = groups.find(g)
        if r != groups.find(0):
            roots.setdefault(r, []).append(Axis(tensor, axis, block))
    order = list(params) + list(buffers)
    node_groups: dict[int, list[tuple[str, str]]] = {}
    for node, v in vals.items():
        if v is not None and v.group != 0 and v.block == 1 and v.shape is not None and len(v.shape) >= 2:
            node_groups.setdefault(groups.find(v.group), []).append((node.name, kinds.get(node.name, "other")))
    sizes, axes, prods, nodes = {}, {}, {}, {}
    for r in sorted(roots):
        pname = groups.origin[r]
        sizes[pname] = int(groups.size[r])
        axes[pname] = sorted(roots[r], key=lambda a: (order.index(a.name), a.axis))
        prods[pname] = [m for g, ms in producers.items() if groups.find(g) == r for m in ms]
        nodes[pname] = node_groups.get(r, [])
    return PermutationSpec(sizes, axes, prods, nodes)


def _flatten(node: fx.Node, v: _Val, shape, start_dim: int, fail) -> _Val:
    """Flattening from axis 1 on folds the spatial axes into each channel's block."""
    in_shape = v.shape
    if v.group == 0:
        return _Val(0, 1, shape)
    if in_shape is None or shape is None:
        raise fail(node, "a reshape of an unknown shape")
    rank = len(in_shape)
    start = start_dim % rank
    if start >= 2:
        return _Val(v.group, v.block, shape)
    if start == 1 and len(shape) == 2 and shape[0] == in_shape[0] and shape[1] == math.prod(in_shape[1:]):
        return _Val(v.group, v.block * math.prod(in_shape[2:]), shape)
    raise fail(node, f"a reshape from {list(in_shape)} to {list(shape)} that moves the channel axis")


__all__ = ["Axis", "PermutationSpec", "Perms", "apply", "compose", "identity_perms", "infer_spec", "invert",
           "permute_tensor", "random_perms"]


"""Infer a model's `PermutationSpec` from its ``torch.fx`` graph, one small rule per kind of operation.

Why: writing a spec by hand for every architecture is tedious and easy to get wrong (a forgotten
running statistic silently changes the function). `infer_spec(model)` traces the model with
``torch.fx`` (`trace`), learns every node's shape with one forward pass (`ShapeProp`), and
propagates "which permutation indexes the channel axis" through the graph in order: every Linear /
Conv / Embedding output starts a new permutation; norms, activations, pooling and flattening pass it
on; an addition ties its inputs' permutations into one (a residual stream shares one permutation
across all its blocks, projection shortcuts included); a concatenation along the channels keeps each
part's permutation on its own segment; the model's input and output are fixed. The channel axis is
axis 1 for MLPs and conv nets and the last axis of the ``[B, T, C]`` values of sequence models.

Some permutations act on part of an axis: attention heads (a multi-head attention module is one node,
handled by `rule_attention` / `rule_multihead_attention`: heads permuted as wholes, the dimensions
inside every head permuted alike, one permutation shared by queries and keys and another by values
and the output projection's columns), the groups of a grouped convolution or of a GroupNorm and the
channels inside every group. A group structure met after a permutation was started *refines* it
(`Groups.refine`): the permutation becomes a permutation of the groups times one of the channels
inside them (the same in every group), and every axis it was claimed on is split accordingly.

How: each ``call_module`` node is handled by the rule `MODULE_RULES` gives for its class (the most
derived class listed wins), each ``call_function`` / ``call_method`` node by the rule
`FUNCTION_RULES` gives for its name. A rule is ``rule(ctx, node) -> Val | None``: it reads its
inputs' values from the `InferContext`, records the tensor axes it touches (``ctx.claim``), ties
permutations (``ctx.groups.union``) and returns what is known of its output. What no rule covers,
or what fx cannot trace, raises a `UserError` naming the node; write that spec by hand
(`PermutationSpec.from_dict`, ``--spec FILE``) or declare custom channel-wise ops with
``elementwise=``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from ..zoo.models import SelfAttention
from .spec import Axis, PermutationSpec


class Groups:
    """Union-find over candidate permutations; group 0 is 'fixed' (the input and output units).

    ``split``: root -> (outer, inner) for a permutation refined into one of ``outer`` groups (each a
    block of ``inner``'s size) times one of the ``inner`` units inside every group (`refine`).
    """

    def __init__(self) -> None:
        self.parent = [0]
        self.size: list[int | None] = [None]
        self.origin: list[str] = ["<fixed>"]
        self.split: dict[int, tuple[int, int]] = {}

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
        parts = [self.split.pop(r) for r in (lo, hi) if r in self.split]
        if lo == 0:  # fixed: so is every part of a refined permutation
            for outer, inner in parts:
                self.union(outer, 0, where)
                self.union(inner, 0, where)
        elif len(parts) == 2:
            (o1, i1), (o2, i2) = parts
            if self.size[self.find(o1)] != self.size[self.find(o2)]:
                raise UserError(f"{where}: ties permutations with two different group structures "
                                f"({self.size[self.find(o1)]} and {self.size[self.find(o2)]} groups)")
            self.union(o1, o2, where)
            self.union(i1, i2, where)
            self.split[lo] = (self.find(o1), self.find(i1))
        elif parts:
            self.split[lo] = parts[0]
        return self.find(lo)

    def refine(self, g: int, n_groups: int, where: str) -> tuple[int, int]:
        """Split permutation ``g`` into a permutation of ``n_groups`` consecutive groups and one of the
        units inside each group (the same in every group); returns (outer, inner), both 0 when fixed."""
        r = self.find(g)
        if r == 0:
            return 0, 0
        n = self.size[r]
        if n is None or n % n_groups:
            raise UserError(f"{where}: {n} units cannot form {n_groups} groups")
        if r in self.split:
            outer, inner = self.split[r]
            if self.size[self.find(outer)] != n_groups:
                raise UserError(f"{where}: a permutation already split into {self.size[self.find(outer)]} "
                                f"groups is used with {n_groups} groups")
            return outer, inner
        outer = self.new(n_groups, f"{self.origin[r]}:groups")
        inner = self.new(n // n_groups, f"{self.origin[r]}:within")
        self.split[r] = (outer, inner)
        return outer, inner


@dataclass
class Val:
    """What the propagation knows about one node's tensor: the group on its channel ``axis`` and its
    block; for a concatenation along the channels, ``segs``: (group, block, entries) per part, in order
    (then ``group`` is -1, "several")."""

    group: int  # 0 = fixed, -1 = a concatenation (see segs)
    block: int = 1
    shape: tuple[int, ...] | None = None
    axis: int = 1
    segs: tuple[tuple[int, int, int], ...] = ()

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def target_name(node: fx.Node, default: str = "") -> str:
    """The name rules are looked up by: the module path, method name or function ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", default)


@dataclass
class InferContext:
    """Everything the rules share while walking one graph.

    ``groups``: the union-find of permutations; ``claims``: (tensor, axis, offset, groups) -> (group,
    block); ``producers``: group -> module names starting it; ``vals``: fx node -> `Val` (None: not a
    tensor; a tuple for a module returning several values); ``kinds``: node name -> ``linear`` /
    ``proj`` / ``norm`` / ``act`` / ``tie`` (see `PermutationSpec.nodes`); ``modules``: the traced
    model's submodules; ``tensors``: parameter and buffer names (tied aliases included);
    ``extra``: the names passed as ``elementwise=``.
    """

    groups: Groups
    modules: dict[str, nn.Module]
    tensors: set[str]
    extra: frozenset[str] = frozenset()
    claims: dict[tuple[str, int, int, int], tuple[int, int]] = field(default_factory=dict)
    producers: dict[int, list[str]] = field(default_factory=dict)
    vals: dict[fx.Node, Any] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def val(self, a: Any) -> Any:
        return self.vals.get(a) if isinstance(a, fx.Node) else None

    def ins(self, node: fx.Node) -> list[Val]:
        """The values of the node's traced tensor arguments, positional then keyword, also those inside
        lists and tuples (``torch.cat([a, b])``) and the tensors of tuple-valued nodes."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), found.append)
        return [v for a in found for v in _flat(self.val(a))]

    def single(self, node: fx.Node) -> Val:
        """The value of the node's one tensor input (refused if it has several)."""
        ins = self.ins(node)
        if len(ins) > 1:
            raise self.fail(node, "an elementwise function with several tensor inputs")
        return ins[0]

    def passed(self, node: fx.Node, v: Val) -> Val:
        """``node``'s output carries ``v``'s permutation and layout (same rank, same channel axis)."""
        return replace(v, shape=self.shape(node))

    def parts(self, v: Val) -> list[tuple[int, int, int | None]]:
        """(group, block, entries) of each part of ``v``'s channel axis (one part unless concatenated)."""
        if v.segs:
            return list(v.segs)
        entries = v.shape[v.axis] if v.shape is not None and v.axis < len(v.shape) else None
        return [(v.group, v.block, entries)]

    def tie(self, a: int, b: int, where: str) -> int:
        return self.groups.union(a, b, where)

    def claim(self, tensor: str, axis: int, group: int, block: int, where: str, groups: int = 1,
              offset: int = 0) -> None:
        """Record that axis ``axis`` of parameter/buffer ``tensor`` (its entries from ``offset``, in
        ``groups`` copies) is indexed by ``group`` (tied if seen)."""
        if tensor not in self.tensors:
            return
        old_g, old_b = self.claims.setdefault((tensor, axis, offset, groups), (group, block))
        if old_b != block:
            raise UserError(f"{where}: axis {axis} of '{tensor}' is used with two block sizes")
        self.groups.union(old_g, group, where)

    def claim_heads(self, tensor: str, axis: int, heads: int, inner: int, n_heads: int, head_dim: int,
                    where: str, offset: int = 0) -> None:
        """An axis of ``n_heads`` heads of ``head_dim`` entries from ``offset``: the heads permuted as wholes
        (``heads``), the entries inside every head alike (``inner``)."""
        if n_heads > 1:
            self.claim(tensor, axis, heads, head_dim, where, 1, offset)
        if head_dim > 1:
            self.claim(tensor, axis, inner, 1, where, n_heads, offset)

    def fail(self, node: fx.Node, why: str) -> UserError:
        target = target_name(node, str(node.target))
        return UserError(f"cannot infer the permutation spec at fx node '{node.name}' ({node.op} {target}): {why}. "
                         f"Pass elementwise=['{target}'] if it acts on each channel separately, or write the "
                         f"spec by hand (PermutationSpec.from_dict / --spec FILE.json)")

    def channel_in(self, node: fx.Node, v: Val, n_in: int, what: str) -> tuple[int, int]:
        """(group, block) feeding a layer that reads ``n_in`` input features on the channel axis."""
        if v.group == 0:
            return 0, 1
        if v.group < 0:
            raise self.fail(node, f"{what} of a concatenation")
        size = self.groups.size[self.groups.find(v.group)]
        if size is None or n_in % size != 0:
            raise self.fail(node, f"{what} reads {n_in} features but its input carries {size} permuted units")
        return v.group, n_in // size

    def consume(self, node: fx.Node, v: Val, n_in: int, what: str) -> list[tuple[int, int, int]]:
        """(group, block, offset) of each part of the ``n_in`` features a layer reads on the channel axis:
        one part, or one per concatenated part."""
        if not v.segs:
            g, b = self.channel_in(node, v, n_in, what)
            return [(g, b, 0)]
        out, offset = [], 0
        for g, b, entries in v.segs:
            out.append((g, b, offset))
            offset += entries
        if offset != n_in:
            raise self.fail(node, f"{what} reads {n_in} features but its input concatenates {offset}")
        return out

    def expand(self, g: int, block: int, groups: int, offset: int) -> list[tuple[int, int, int, int]]:
        """(root, block, groups, offset) of the permutations a claim on ``g`` becomes: itself, or through
        its refinement the group permutation (blocks of the inner size) and the inner one (in every group)."""
        r = self.groups.find(g)
        if r == 0:
            return []
        if r not in self.groups.split:
            return [(r, block, groups, offset)]
        outer, inner = self.groups.split[r]
        n_groups = self.groups.size[self.groups.find(outer)]
        m = self.groups.size[self.groups.find(inner)]
        return self.expand(outer, block * m, groups, offset) + self.expand(inner, block, groups * n_groups, offset)


def _flat(v: Any) -> list[Val]:
    """The tensors' values in ``v`` (a `Val`, None, or a tuple of them)."""
    if isinstance(v, Val):
        return [v]
    if isinstance(v, (tuple, list)):
        return [x for item in v for x in _flat(item)]
    return []


def _groups_of(v: Val) -> list[int]:
    return [g for g, _, _ in v.segs] if v.segs else [v.group]


Rule = Callable[[InferContext, fx.Node], "Val | None"]


# -- the rules -------------------------------------------------------------------------------------

def rule_linear(ctx: InferContext, node: fx.Node) -> Val:
    """Linear / Conv: the input axis joins the input's permutation; the output starts a new one.

    A Linear acts on the last axis (the channels of a ``[B, T, C]`` sequence too); a convolution on
    axis 1. A grouped convolution (``groups`` = G > 1) splits its input's and its output's permutations
    into a permutation of the G groups, shared by input and output (group j of the output reads group
    j of the input), times one of the channels inside every group (its own for input and output)."""
    mod, name = ctx.modules[node.target], node.target
    first = ctx.val(node.args[0])
    is_linear = isinstance(mod, nn.Linear)
    rank = first.rank
    if is_linear:
        if first.group != 0 and rank is not None and first.axis != rank - 1:
            raise ctx.fail(node, "a Linear applied to a tensor whose permuted channels are not its last axis")
        out_axis = rank - 1 if rank is not None else 1
    else:
        if first.group != 0 and first.axis != 1:
            raise ctx.fail(node, "a convolution of a tensor whose permuted channels are not on axis 1")
        out_axis = 1
    n_out = mod.out_features if is_linear else mod.out_channels
    n_in = mod.in_features if is_linear else mod.in_channels
    n_groups = 1 if is_linear else mod.groups
    where = f"'{node.name}'"
    g = ctx.groups.new(n_out, name)
    if n_groups == 1:
        for g_in, b_in, off in ctx.consume(node, first, n_in, type(mod).__name__):
            ctx.claim(f"{name}.weight", 1, g_in, b_in, name, offset=off)
    else:
        g_in, _ = ctx.channel_in(node, first, n_in, f"a convolution with {n_groups} groups")
        outer_in, inner_in = ctx.groups.refine(g_in, n_groups, where)
        ctx.claim(f"{name}.weight", 1, inner_in, 1, name)  # [C_out, C_in / G, ...]: one group's channels
        outer_out, _ = ctx.groups.refine(g, n_groups, where)
        ctx.groups.union(outer_out, outer_in, where)
    ctx.producers.setdefault(g, []).append(name)
    ctx.claim(f"{name}.weight", 0, g, 1, name)
    ctx.claim(f"{name}.bias", 0, g, 1, name)
    ctx.kinds[node.name] = "linear" if out_axis == 1 else "proj"
    return Val(g, 1, ctx.shape(node), out_axis)


def rule_embedding(ctx: InferContext, node: fx.Node) -> Val:
    """Embedding: token ids (fixed) in, a new permutation on the last axis out (the weight's columns)."""
    mod, name = ctx.modules[node.target], node.target
    if ctx.val(node.args[0]).group != 0:
        raise ctx.fail(node, "an Embedding looked up with permuted indices")
    shape = ctx.shape(node)
    g = ctx.groups.new(mod.embedding_dim, name)
    ctx.producers.setdefault(g, []).append(name)
    ctx.claim(f"{name}.weight", 1, g, 1, name)
    axis = len(shape) - 1 if shape is not None else 1
    ctx.kinds[node.name] = "linear" if axis == 1 else "proj"
    return Val(g, 1, shape, axis)


def rule_norm(ctx: InferContext, node: fx.Node) -> Val:
    """BatchNorm / InstanceNorm (channels on axis 1), LayerNorm, GroupNorm.

    A LayerNorm joins the permutation when its normalised axes include the channel axis (its weight
    and bias are indexed by the channels there) and leaves it alone otherwise (each channel normalised
    on its own). A GroupNorm with 1 < groups < channels splits the permutation into one of its groups
    and one of the channels inside every group (`Groups.refine`)."""
    mod, name = ctx.modules[node.target], node.target
    first = ctx.val(node.args[0])
    rank = first.rank
    param_axis = 0
    if first.group == 0:
        ctx.kinds[node.name] = "norm"
        return ctx.passed(node, first)
    if isinstance(mod, nn.LayerNorm):
        ns = tuple(mod.normalized_shape)
        start = (rank if rank is not None else len(ns) + 1) - len(ns)
        if first.axis < start:  # the channels are not normalised over: each is normalised on its own
            ctx.kinds[node.name] = "norm"
            return ctx.passed(node, first)
        param_axis = first.axis - start
        n_ch = ns[param_axis]
    else:
        if first.axis != 1:
            raise ctx.fail(node, f"a {type(mod).__name__} over an axis that is not the channel axis")
        n_ch = mod.num_channels if isinstance(mod, nn.GroupNorm) else mod.num_features
        if isinstance(mod, nn.GroupNorm) and 1 < mod.num_groups < mod.num_channels:
            g_in, _ = ctx.channel_in(node, first, n_ch, "a GroupNorm")
            ctx.groups.refine(g_in, mod.num_groups, f"'{node.name}'")
    for g_in, b_in, off in ctx.consume(node, first, n_ch, type(mod).__name__):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            ctx.claim(f"{name}.{suffix}", param_axis, g_in, b_in, name, offset=off)
    ctx.kinds[node.name] = "norm"
    return ctx.passed(node, first)


def rule_activation(ctx: InferContext, node: fx.Node) -> Val:
    """A channel-wise nonlinearity (also every name in ``elementwise=``): passes, recorded as ``act``."""
    v = ctx.single(node)
    ctx.kinds[node.name] = "act"
    return ctx.passed(node, v)


def rule_prelu(ctx: InferContext, node: fx.Node) -> Val:
    """PReLU: an activation whose per-channel slopes (if more than one) follow the permutation."""
    mod, v = ctx.modules[node.target], ctx.single(node)
    if mod.num_parameters > 1:
        if v.group != 0 and v.axis != 1:
            raise ctx.fail(node, "a PReLU whose slopes are not on the channel axis")
        for g_in, b_in, off in ctx.consume(node, v, mod.num_parameters, type(mod).__name__):
            ctx.claim(f"{node.target}.weight", 0, g_in, b_in, node.target, offset=off)
    ctx.kinds[node.name] = "act"
    return ctx.passed(node, v)


def rule_passthrough(ctx: InferContext, node: fx.Node) -> Val:
    """Pooling, dropout, identity, copies: pass the permutation on, not an activation to match."""
    return ctx.passed(node, ctx.single(node))


def rule_scale(ctx: InferContext, node: fx.Node) -> Val | None:
    """``x / c``, ``-x`` with one tensor input pass it on; with two tensors they are `rule_fixed`."""
    ins = ctx.ins(node)
    if len(ins) != 1:
        return rule_fixed(ctx, node)
    return ctx.passed(node, ins[0])


def rule_tie(ctx: InferContext, node: fx.Node) -> Val:
    """``a + b``, ``a - b``, ``a * b``: the inputs (of rank > 1) share one permutation.

    Broadcasting aligns axes from the right, so the permuted inputs' channel axes must align there (a
    ``[T, C]`` position embedding added to ``[B, T, C]`` tokens); a fixed input fixes the permutation
    unless it is broadcast along the channel axis (size 1 there)."""
    ranked = [v for v in ctx.ins(node) if v.shape is None or len(v.shape) > 1]
    shape = ctx.shape(node)
    permuted = [v for v in ranked if v.group != 0]
    if not permuted:
        ctx.kinds[node.name] = "tie"
        return Val(0, 1, shape)
    first = permuted[0]
    key = (first.rank or 2) - first.axis  # the channel axis, counted from the right
    where = f"'{node.name}'"
    for v in permuted[1:]:
        if (v.rank or 2) - v.axis != key:
            raise ctx.fail(node, "combines tensors whose channels are on different axes")
        if v.block != first.block or [e for _, _, e in ctx.parts(v)] != [e for _, _, e in ctx.parts(first)]:
            raise ctx.fail(node, "adds tensors with different channel layouts")
        for (ga, _, _), (gb, _, _) in zip(ctx.parts(first), ctx.parts(v)):
            ctx.groups.union(ga, gb, where)
    for v in ranked:
        if v.group == 0:
            d = (v.rank or 2) - key
            if v.shape is None or (d >= 0 and v.shape[d] != 1):  # spans the channels: fixes them
                for g in _groups_of(first):
                    ctx.groups.union(g, 0, where)
    ctx.kinds[node.name] = "tie"
    rank = len(shape) if shape is not None else (first.rank or 2)
    return replace(first, shape=shape, axis=rank - key)


def _reshape_axis(in_shape: Sequence[int], out_shape: Sequence[int], axis: int) -> tuple[int, int] | None:
    """Where the channel ``axis`` of ``in_shape`` goes in ``out_shape``: (new axis, block factor), or None
    when the reshape splits or moves it. Kept whole (factor 1), or merged with everything after it into
    the last axis (a flatten: each channel a block of the trailing size)."""
    outer, inner = math.prod(in_shape[:axis]), math.prod(in_shape[axis + 1:])
    size = in_shape[axis]
    for a2 in range(len(out_shape)):
        if math.prod(out_shape[:a2]) == outer:
            if out_shape[a2] == size and math.prod(out_shape[a2 + 1:]) == inner:
                return a2, 1
            if a2 == len(out_shape) - 1 and out_shape[a2] == size * inner:
                return a2, inner
    return None


def rule_flatten(ctx: InferContext, node: fx.Node) -> Val:
    """Flatten / view / reshape: the channel axis kept whole (merging or splitting other axes), or
    merged with every axis after it (each channel becomes a block of the trailing size); a reshape
    that splits the channel axis or moves it is refused."""
    v, shape = ctx.ins(node)[0], ctx.shape(node)
    if v.group == 0:
        return Val(0, 1, shape)
    if v.shape is None or shape is None:
        raise ctx.fail(node, "a reshape of an unknown shape")
    found = _reshape_axis(v.shape, shape, v.axis)
    if found is None:
        raise ctx.fail(node, f"a reshape from {list(v.shape)} to {list(shape)} that splits or moves the channel axis")
    axis, factor = found
    segs = tuple((g, b * factor, e * factor) for g, b, e in v.segs)
    return Val(v.group, v.block * factor, shape, axis, segs)


def rule_reduce(ctx: InferContext, node: fx.Node) -> Val | None:
    """``mean`` / ``amax`` / ``sum`` over non-channel axes pass the permutation on (global pooling, a
    mean over the positions of a sequence)."""
    v = ctx.ins(node)[0]
    if v.group == 0:
        return rule_fixed(ctx, node)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    rank = v.rank if v.rank is not None else 4
    dims = [d % rank for d in dims]
    if not dims or 0 in dims or v.axis in dims:
        raise ctx.fail(node, "a reduction over the channel axis")
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    axis = v.axis if keep else v.axis - sum(d < v.axis for d in dims)
    return replace(v, shape=ctx.shape(node), axis=axis)


def rule_getitem(ctx: InferContext, node: fx.Node) -> Val | None:
    """``x[...]``: an element of a module's tuple output, or indexing a tensor on axes other than the
    channel axis (``h[:, -1]``: the last position of a sequence); a slice of the channels is refused."""
    src, index = ctx.val(node.args[0]), node.args[1]
    if isinstance(src, tuple):
        return src[index]
    if not isinstance(src, Val) or src.group == 0:
        return Val(0, 1, ctx.shape(node)) if ctx.shape(node) is not None else None
    items = list(index) if isinstance(index, tuple) else [index]
    rank = src.rank if src.rank is not None else src.axis + 1
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    i_in = i_out = 0
    new_axis = None
    for item in items:
        if item is Ellipsis:
            span = rank - explicit
            if i_in <= src.axis < i_in + span:
                new_axis = i_out + (src.axis - i_in)
            i_in, i_out = i_in + span, i_out + span
        elif item is None:
            i_out += 1
        elif isinstance(item, (slice, int)) or (isinstance(item, fx.Node) and ctx.val(item) is None):
            if i_in == src.axis:
                if not (isinstance(item, slice) and item == slice(None)):
                    raise ctx.fail(node, "indexing that selects part of the channel axis")
                new_axis = i_out
            i_in += 1
            i_out += isinstance(item, slice)  # an integer (or a size computed in the graph) drops the axis
        else:
            raise ctx.fail(node, "indexing a tensor with permuted channels by a tensor")
    if new_axis is None:  # the channel axis is after every index given
        new_axis = i_out + (src.axis - i_in)
    return replace(src, shape=ctx.shape(node), axis=new_axis)


def rule_transpose(ctx: InferContext, node: fx.Node) -> Val:
    """``transpose`` / ``permute``: the channel axis moves with the axes."""
    v = ctx.ins(node)[0]
    shape = ctx.shape(node)
    if v.group == 0:
        return Val(0, 1, shape)
    rank = v.rank if v.rank is not None else len(shape)
    args = list(node.args[1:]) or list(node.kwargs.values())
    if target_name(node) == "permute":
        dims = [d % rank for d in (args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)]
        axis = dims.index(v.axis)
    else:
        d0, d1 = (a % rank for a in args[:2])
        axis = d1 if v.axis == d0 else d0 if v.axis == d1 else v.axis
    return replace(v, shape=shape, axis=axis)


def rule_cat(ctx: InferContext, node: fx.Node) -> Val:
    """``torch.cat``: along the channel axis each part keeps its permutation on its own segment (a
    following layer's input axis is claimed part by part); along any other axis the parts share one."""
    parts = ctx.ins(node)
    shape = ctx.shape(node)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    permuted = [v for v in parts if v.group != 0]
    if not permuted:
        return Val(0, 1, shape)
    axis = permuted[0].axis
    rank = len(shape) if shape is not None else permuted[0].rank
    if any(v.axis != axis for v in permuted):
        raise ctx.fail(node, "concatenates tensors whose channels are on different axes")
    if dim % rank != axis:  # along positions or samples: one layout, one permutation
        return rule_tie(ctx, node)
    segs = []
    for v in parts:
        if v.group == 0:
            segs.append((0, 1, v.shape[axis] if v.shape is not None else 0))
        else:
            segs.extend(ctx.parts(v))
    ctx.kinds[node.name] = "cat"
    return Val(-1, 1, shape, axis, tuple(segs))


def _attention_groups(ctx: InferContext, name: str, n_heads: int, head_dim: int) -> tuple[int, int, int]:
    """New permutations of one attention module: its heads, the units inside every head of the queries
    and keys, and those of the values (and of the output projection's input)."""
    return (ctx.groups.new(n_heads, f"{name}:heads"), ctx.groups.new(head_dim, f"{name}:qk"),
            ctx.groups.new(head_dim, f"{name}:vo"))


def rule_attention(ctx: InferContext, node: fx.Node) -> Val:
    """The zoo's `SelfAttention` (projections q, k, v, o), one node of the graph.

    Scores ``q_h k_h^T`` are unchanged when the rows of q_h and k_h are permuted alike, and the output
    ``o(softmax(scores) v)`` when the rows of every v_h and the matching columns of o are; heads can be
    reordered as wholes. So: q, k, v read the input's permutation (their columns); their rows carry the
    heads (blocks of head_dim) and, inside every head, the ``:qk`` (q, k) or ``:vo`` (v) permutation;
    o's columns carry the heads and ``:vo``; o's rows start the output's permutation."""
    mod, name = ctx.modules[node.target], node.target
    v = ctx.single(node)
    if v.group != 0 and v.rank is not None and v.axis != v.rank - 1:
        raise ctx.fail(node, "attention over a tensor whose permuted channels are not its last axis")
    width, n_heads, head_dim = mod.q.in_features, mod.heads, mod.head_dim
    for proj in ("q", "k", "v"):
        for g_in, b_in, off in ctx.consume(node, v, width, "attention"):
            ctx.claim(f"{name}.{proj}.weight", 1, g_in, b_in, name, offset=off)
    heads, qk, vo = _attention_groups(ctx, name, n_heads, head_dim)
    for proj, inner in (("q", qk), ("k", qk), ("v", vo)):
        for suffix in ("weight", "bias"):
            ctx.claim_heads(f"{name}.{proj}.{suffix}", 0, heads, inner, n_heads, head_dim, name)
    ctx.claim_heads(f"{name}.o.weight", 1, heads, vo, n_heads, head_dim, name)
    g = ctx.groups.new(mod.o.out_features, f"{name}.o")
    ctx.producers.setdefault(g, []).append(f"{name}.o")
    ctx.claim(f"{name}.o.weight", 0, g, 1, name)
    ctx.claim(f"{name}.o.bias", 0, g, 1, name)
    shape = ctx.shape(node)
    ctx.kinds[node.name] = "proj"
    return Val(g, 1, shape, len(shape) - 1 if shape is not None else 2)


def rule_multihead_attention(ctx: InferContext, node: fx.Node) -> tuple[Val, Val]:
    """``nn.MultiheadAttention`` (query, key, value; batch first or not: channels last), the same
    permutations as `rule_attention` on its fused ``in_proj_weight`` / ``in_proj_bias`` (query rows
    from 0, key rows from E, value rows from 2E) or its separate ``q/k/v_proj_weight``, ``bias_k``,
    ``bias_v`` and ``out_proj``. With one ``in_proj_weight`` the query, key and value inputs share one
    permutation. Returns (output, attention weights: fixed)."""
    mod, name = ctx.modules[node.target], node.target
    e, n_heads, head_dim = mod.embed_dim, mod.num_heads, mod.head_dim
    roles = ("query", "key", "value")
    args = [node.args[i] if i < len(node.args) else node.kwargs.get(r) for i, r in enumerate(roles)]
    vals = [ctx.val(a) for a in args]
    for v in vals:
        if not isinstance(v, Val):
            raise ctx.fail(node, "attention whose query, key or value is not a traced tensor")
        if v.group != 0 and v.rank is not None and v.axis != v.rank - 1:
            raise ctx.fail(node, "attention over a tensor whose permuted channels are not its last axis")
    heads, qk, vo = _attention_groups(ctx, name, n_heads, head_dim)
    inners = (qk, qk, vo)
    where = f"'{node.name}'"
    if mod._qkv_same_embed_dim:
        g_in, b_in = ctx.channel_in(node, vals[0], e, "attention")
        for v in vals[1:]:
            g_in = ctx.groups.union(g_in, ctx.channel_in(node, v, e, "attention")[0], where)
        ctx.claim(f"{name}.in_proj_weight", 1, g_in, b_in, name)
        for i, inner in enumerate(inners):
            ctx.claim_heads(f"{name}.in_proj_weight", 0, heads, inner, n_heads, head_dim, name, offset=i * e)
    else:
        for proj, v, n_in, inner in (("q_proj_weight", vals[0], e, qk), ("k_proj_weight", vals[1], mod.kdim, qk),
                                     ("v_proj_weight", vals[2], mod.vdim, vo)):
            for g_in, b_in, off in ctx.consume(node, v, n_in, "attention"):
                ctx.claim(f"{name}.{proj}", 1, g_in, b_in, name, offset=off)
            ctx.claim_heads(f"{name}.{proj}", 0, heads, inner, n_heads, head_dim, name)
    for i, inner in enumerate(inners):
        ctx.claim_heads(f"{name}.in_proj_bias", 0, heads, inner, n_heads, head_dim, name, offset=i * e)
    ctx.claim_heads(f"{name}.bias_k", 2, heads, qk, n_heads, head_dim, name)
    ctx.claim_heads(f"{name}.bias_v", 2, heads, vo, n_heads, head_dim, name)
    ctx.claim_heads(f"{name}.out_proj.weight", 1, heads, vo, n_heads, head_dim, name)
    g = ctx.groups.new(e, f"{name}.out_proj")
    ctx.producers.setdefault(g, []).append(f"{name}.out_proj")
    ctx.claim(f"{name}.out_proj.weight", 0, g, 1, name)
    ctx.claim(f"{name}.out_proj.bias", 0, g, 1, name)
    meta = node.meta.get("tensor_meta")
    shape = tuple(meta[0].shape) if isinstance(meta, (tuple, list)) and hasattr(meta[0], "shape") else vals[0].shape
    ctx.kinds[node.name] = "proj"
    return Val(g, 1, shape, len(shape) - 1 if shape is not None else 2), Val(0)


def rule_size(ctx: InferContext, node: fx.Node) -> None:
    """``x.size()``, ``x.dim()``, ``x.shape``: Python values, not tensors."""
    return None


def rule_constant(ctx: InferContext, node: fx.Node) -> Val | None:
    """A call without traced tensor inputs (arithmetic on sizes, a new tensor): fixed or not a tensor."""
    shape = ctx.shape(node)
    return None if shape is None else Val(0, 1, shape)


def rule_fixed(ctx: InferContext, node: fx.Node) -> Val:
    """The fallback: unknown ops are allowed only on fixed (never permuted) values, else refused."""
    if node.op == "call_module":
        mod = ctx.modules[node.target]
        if not list(mod.parameters()) and ctx.val(node.args[0]).group == 0:
            return Val(0, 1, ctx.shape(node))
        raise ctx.fail(node, f"module type {type(mod).__name__} is not known to act channel-wise")
    if all(v.group == 0 for v in ctx.ins(node)):
        return Val(0, 1, ctx.shape(node))
    raise ctx.fail(node, "an operation not known to act channel-wise")


# -- the tables ------------------------------------------------------------------------------------

MODULE_RULES: dict[type, Rule] = {
    **dict.fromkeys((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), rule_linear),
    nn.Embedding: rule_embedding,
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d,
                     nn.LazyBatchNorm2d, nn.LazyBatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                     nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d, nn.GroupNorm, nn.LayerNorm),
                    rule_norm),
    **dict.fromkeys((nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish,
                     nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid), rule_activation),
    nn.PReLU: rule_prelu,
    **dict.fromkeys((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                     nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
                    rule_passthrough),
    nn.Flatten: rule_flatten,
    SelfAttention: rule_attention,
    nn.MultiheadAttention: rule_multihead_attention,
}
"""Module class -> rule; a module's rule is that of the first class of its MRO listed here."""

LEAF_MODULES: tuple[type, ...] = (SelfAttention,)
"""Module classes outside ``torch.nn`` that `trace` keeps as one node (their rule sees the whole module)."""

MULTI_INPUT_MODULES: tuple[type, ...] = (nn.MultiheadAttention,)
"""Module classes whose rule takes several tensor inputs (query, key, value)."""

FUNCTION_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "tanh", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "softplus", "relu6", "hardtanh",
                     "mish"), rule_activation),
    **dict.fromkeys(("dropout", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
                     "adaptive_avg_pool2d", "adaptive_max_pool2d", "contiguous", "clone", "detach"), rule_passthrough),
    **dict.fromkeys(("truediv", "div", "neg"), rule_scale),
    **dict.fromkeys(("add", "sub", "mul", "iadd", "isub", "imul"), rule_tie),
    **dict.fromkeys(("flatten", "view", "reshape"), rule_flatten),
    **dict.fromkeys(("mean", "amax", "sum"), rule_reduce),
    **dict.fromkeys(("getattr", "size", "dim"), rule_size),
    "getitem": rule_getitem,
    **dict.fromkeys(("transpose", "permute"), rule_transpose),
    **dict.fromkeys(("cat", "concat", "concatenate"), rule_cat),
}
"""Function or method name (``node.target.__name__`` or the method's name) -> rule."""


def module_rule(ctx: InferContext, node: fx.Node) -> Rule:
    """The rule for a ``call_module`` node: by class, else `rule_activation` if named in
    ``elementwise=``, else `rule_fixed`."""
    mod = ctx.modules[node.target]
    for cls in type(mod).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return rule_activation if type(mod).__name__ in ctx.extra else rule_fixed


def function_rule(ctx: InferContext, node: fx.Node) -> Rule:
    """The rule for a ``call_function`` / ``call_method`` node: `rule_constant` without tensor inputs,
    `rule_activation` if named in ``elementwise=``, else by name, else `rule_fixed`."""
    name = target_name(node)
    if not ctx.ins(node):
        return rule_constant
    if name in ctx.extra:
        return rule_activation
    return FUNCTION_RULES.get(name, rule_fixed)


# -- inputs ----------------------------------------------------------------------------------------

def example_input(data: Any, n: int = 2) -> Tensor:
    """The first ``n`` inputs of ``data``: ``(X, y)`` tensors, a Dataset, a DataLoader or any iterable of
    ``(x, y)`` batches, a dict of those (its ``"train"`` entry, else the first), or an object with
    ``.train`` (a zoo `DataSplit`). Targets are ignored; raises `UserError` for anything else."""
    if isinstance(data, Tensor):
        return data[:n]
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0][:n]
    if isinstance(data, dict) and data:
        return example_input(data["train"] if "train" in data else next(iter(data.values())), n)
    if hasattr(data, "train") and not isinstance(data, (nn.Module, torch.utils.data.Dataset)):
        return example_input(data.train, n)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        xs = [_input_of(data[i]) for i in range(min(n, len(data)))]
        x = torch.stack(xs) if xs and all(isinstance(v, Tensor) for v in xs) else (xs[0] if xs else None)
    elif hasattr(data, "__iter__") and not isinstance(data, dict):
        x = _input_of(next(iter(data), None))
        x = x[:n] if isinstance(x, Tensor) else x
    else:
        raise UserError(f"example_input: data must be (X, y) tensors, a Dataset, a DataLoader, an iterable of "
                        f"(x, y) batches, a dict of those or a split with .train; got {type(data).__name__}")
    if not isinstance(x, Tensor):
        raise UserError(f"example_input: the data holds no input tensor (empty, or inputs of type {type(x).__name__})")
    return x


def _input_of(item: Any) -> Any:
    return item[0] if isinstance(item, (tuple, list)) else item


def _input_for(model: nn.Module, input_shape: Sequence[int] | None, example: Tensor | None, data: Any) -> Tensor:
    if example is not None:
        return example
    if input_shape is None:
        spec = getattr(model, "modescape_spec", None)
        if spec and "input_shape" in spec:
            input_shape = spec["input_shape"]
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else "cpu"
    if input_shape is None and data is not None:
        x = example_input(data)
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    if input_shape is None:
        raise UserError("infer_spec needs the shape of one input: pass input_shape=(C, H, W) or (features,), "
                        "example=a batch of inputs, or data=the training data ((X, y), a Dataset or a DataLoader)")
    if any(isinstance(m, nn.Embedding) for m in model.modules()):  # a token model: ids, not features
        return torch.zeros((2, *[int(s) for s in input_shape]), dtype=torch.long, device=device)
    return torch.zeros((2, *[int(s) for s in input_shape]), dtype=dtype, device=device)


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, keeping `LEAF_MODULES` (the zoo's attention) as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_MODULES) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """The ``torch.fx`` graph `infer_spec` and the probes of `modescape.symmetry.probe` work on (the
    zoo's attention modules kept whole, everything else as ``fx.symbolic_trace``)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return trace(model)
    except Exception as e:  # fx raises many exception types for untraceable code
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {first_line}. "
            "Write its permutation spec by hand (PermutationSpec.from_dict, or --spec FILE.json in the shape "
            "printed by `modescape spec --json` for a traceable model)") from None


# -- the walk --------------------------------------------------------------------------------------

def _collect(ctx: InferContext, order: list[str]) -> PermutationSpec:
    """Every claimed axis whose group is not tied to the fixed input/output, one permutation per root;
    refined permutations are replaced by their parts, and permutations of one unit are left out."""
    groups = ctx.groups
    roots: dict[int, list[Axis]] = {}
    for (tensor, axis, offset, n_groups), (g, block) in ctx.claims.items():
        for r, b, gs, off in ctx.expand(g, block, n_groups, offset):
            roots.setdefault(r, []).append(Axis(tensor, axis, b, gs, off))
    node_groups: dict[int, list[tuple[str, str]]] = {}
    node_axes: dict[str, int] = {}
    for node, v in ctx.vals.items():
        if not isinstance(v, Val) or v.group <= 0 or v.block != 1 or v.shape is None or len(v.shape) < 2:
            continue
        r = groups.find(v.group)
        if r == 0 or r in groups.split:
            continue
        node_groups.setdefault(r, []).append((node.name, ctx.kinds.get(node.name, "other")))
        if v.axis != 1:
            node_axes[node.name] = v.axis
    sizes, axes, prods, nodes = {}, {}, {}, {}
    for r in sorted(roots):
        if groups.size[r] == 1:
            continue
        pname = groups.origin[r]
        sizes[pname] = int(groups.size[r])
        axes[pname] = sorted(roots[r], key=lambda a: (order.index(a.name), a.axis, a.offset, a.groups))
        prods[pname] = [m for g, ms in ctx.producers.items() if groups.find(g) == r for m in ms]
        nodes[pname] = node_groups.get(r, [])
    used = {n for ns in nodes.values() for n, _ in ns}
    return PermutationSpec(sizes, axes, prods, nodes, {n: a for n, a in node_axes.items() if n in used})


def infer_spec(model: nn.Module, input_shape: Sequence[int] | None = None, example: Tensor | None = None,
               elementwise: Iterable[str] = (), data: Any = None) -> PermutationSpec:
    """Infer the permutation spec of ``model`` from its ``torch.fx`` graph (model not modified).

    The input that teaches every node's shape: ``example`` (a batch), else ``input_shape`` (one
    sample's shape), else ``model.modescape_spec["input_shape"]`` (zoo models), else the first
    inputs of ``data`` (any form `example_input` takes).
    ``elementwise``: names of extra module classes or functions that act on each channel separately
    (custom activations), passed through like ReLU.
    A model that carries its own spec (a ``permutation_spec()`` method, as `modescape.hf.HFModel` for the
    GPT-2 family) gets that one, without tracing.
    Raises `UserError` naming the node it cannot handle.
    """
    if callable(getattr(model, "permutation_spec", None)):
        return model.permutation_spec()
    work = copy.deepcopy(model).eval()
    gm = _trace(work)
    x = _input_for(model, input_shape, example, data)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as e:
        raise UserError(f"running {type(model).__name__} on an input of shape {list(x.shape)} failed ({e}); "
                        "pass the right input_shape") from None
    # parameters, buffers and tied aliases (a head sharing its embedding's weight is in the state dict twice)
    order = list(dict.fromkeys([*(n for n, _ in work.named_parameters()), *(n for n, _ in work.named_buffers()),
                                *work.state_dict(keep_vars=True)]))
    ctx = InferContext(Groups(), dict(gm.named_modules()), set(order), frozenset(elementwise))
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ctx.vals[node] = Val(0, 1, ctx.shape(node))
        elif node.op == "get_attr":
            raise ctx.fail(node, "a parameter used outside its module (functional layer)")
        elif node.op == "output":
            outs: list[fx.Node] = []
            fx.node.map_arg(node.args[0], outs.append)  # every node in the (nested) output: never permuted
            for v in (v for o in outs for v in _flat(ctx.val(o))):
                for g in _groups_of(v):
                    ctx.groups.union(g, 0, f"output '{node.name}'")
        elif node.op == "call_module":
            if not node.args or not isinstance(ctx.val(node.args[0]), Val):
                raise ctx.fail(node, "its first argument is not a traced tensor")
            if len(ctx.ins(node)) > 1 and not isinstance(ctx.modules[node.target], MULTI_INPUT_MODULES):
                raise ctx.fail(node, "a module with several tensor inputs")
            ctx.vals[node] = module_rule(ctx, node)(ctx, node)
        else:  # call_function / call_method
            ctx.vals[node] = function_rule(ctx, node)(ctx, node)
    return _collect(ctx, order)


__all__ = ["FUNCTION_RULES", "LEAF_MODULES", "MODULE_RULES", "MULTI_INPUT_MODULES", "Groups", "InferContext", "Rule",
           "Val", "example_input", "infer_spec", "trace"]

"""The per-operation rules of `infer_spec` for layers and channel-wise operations.

What: one function per kind of operation, ``rule(ctx, node) -> Val | None`` (see `context`), for the
operations of MLPs and conv nets: `rule_linear` (Linear / Conv, grouped convolutions included: every
output starts a new permutation), `rule_norm` (BatchNorm, InstanceNorm, LayerNorm, GroupNorm),
`rule_activation`, `rule_prelu`, `rule_passthrough` (pooling, dropout, copies), `rule_scale`,
`rule_tie` (``+``, ``-``, ``*``: residual streams), `rule_flatten`, `rule_reduce` (global pooling),
`rule_size`, and the fallbacks `rule_constant` and `rule_fixed`. The rules that move the channel axis,
cut it into segments or heads, or start it from token ids (embedding, attention, concatenation,
indexing, transposes) are in `rules_layout`; the tables that map modules and functions to rules, and
the walk that applies them, are in `infer`.

Why apart from the walk: each rule is a small, self-contained statement about one operation's
symmetry, read and tested on its own (every rule is exercised by ``tests/test_symmetry.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch.fx as fx
from torch import nn

from .context import InferContext, Val, groups_of


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
        for (ga, _, _), (gb, _, _) in zip(ctx.parts(first), ctx.parts(v), strict=True):
            ctx.groups.union(ga, gb, where)
    for v in ranked:
        if v.group == 0:
            d = (v.rank or 2) - key
            if v.shape is None or (d >= 0 and v.shape[d] != 1):  # spans the channels: fixes them
                for g in groups_of(first):
                    ctx.groups.union(g, 0, where)
    ctx.kinds[node.name] = "tie"
    rank = len(shape) if shape is not None else (first.rank or 2)
    return replace(first, shape=shape, axis=rank - key)


def _reshape_axis(in_shape: Sequence[int], out_shape: Sequence[int], axis: int) -> tuple[int, int] | None:
    """Where the channel ``axis`` of ``in_shape`` goes in ``out_shape``: (new axis, block factor), or None
    when the reshape splits or moves it. Kept whole (factor 1), or merged with everything after it into
    the last axis (a flatten: each channel a block of the trailing size)."""
    outer, inner = math.prod(in_shape[:axis]), math.prod(in_shape[axis + 1 :])
    size = in_shape[axis]
    for a2 in range(len(out_shape)):
        if math.prod(out_shape[:a2]) == outer:
            if out_shape[a2] == size and math.prod(out_shape[a2 + 1 :]) == inner:
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
    axis = v.axis if keep else v.axis - len([d for d in dims if d < v.axis])
    return replace(v, shape=ctx.shape(node), axis=axis)


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


__all__ = [
    "rule_activation",
    "rule_constant",
    "rule_fixed",
    "rule_flatten",
    "rule_linear",
    "rule_norm",
    "rule_passthrough",
    "rule_prelu",
    "rule_reduce",
    "rule_scale",
    "rule_size",
    "rule_tie",
]

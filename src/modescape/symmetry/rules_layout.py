"""The rules of `infer_spec` for operations that move, cut or start the channel axis.

What: the rules (``rule(ctx, node) -> Val | None``, see `context`) for what sequence models and
multi-branch networks add to the channel-wise operations of `rules`: `rule_embedding` (token ids in, a
new permutation out), `rule_attention` (the zoo's `SelfAttention`) and `rule_multihead_attention`
(``nn.MultiheadAttention``), which permute heads as wholes and the units inside every head (``:heads``,
``:qk``, ``:vo``); `rule_cat` (a concatenation along the channels keeps each part's permutation on its
own segment); `rule_getitem` (indexing, tuple outputs) and `rule_transpose` (the channel axis moves).

Why a module of its own: these are the rules whose values are not "one permutation on axis 1": heads
and inner units (an `Axis` with ``block`` / ``groups``), segments (``Val.segs``) and channels-last
layouts. docs/transformers.md explains the symmetry they encode.
"""

from __future__ import annotations

from dataclasses import replace

import torch.fx as fx

from .context import InferContext, Val, target_name
from .rules import rule_tie


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
        d0, d1 = (int(a) % rank for a in args[:2])
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
    return (
        ctx.groups.new(n_heads, f"{name}:heads"),
        ctx.groups.new(head_dim, f"{name}:qk"),
        ctx.groups.new(head_dim, f"{name}:vo"),
    )


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
        for proj, v, n_in, inner in (
            ("q_proj_weight", vals[0], e, qk),
            ("k_proj_weight", vals[1], mod.kdim, qk),
            ("v_proj_weight", vals[2], mod.vdim, vo),
        ):
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


__all__ = ["rule_attention", "rule_cat", "rule_embedding", "rule_getitem", "rule_multihead_attention", "rule_transpose"]

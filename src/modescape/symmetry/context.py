"""The state `infer_spec` carries through a ``torch.fx`` graph: permutations, values, claims.

What: `Groups`, a union-find over candidate permutations (group 0 is "fixed": the model's input and
output), which can also *refine* a permutation into one of its groups times one of the units inside
every group (a grouped convolution, a GroupNorm); `Val`, what is known of one node's tensor (the
permutation on its channel axis, its block, its shape, the axis, or the segments of a concatenation);
and `InferContext`, everything the per-operation rules share while walking one graph: the union-find,
the claimed ``(tensor, axis)`` pairs, each node's value and kind, and the producing modules.

Why a module of its own: the rules (`rules`, `rules_layout`) and the walk (`infer`) both speak this
vocabulary, and nothing here knows any particular operation. A rule is ``Rule = (ctx, node) -> Val |
None``: it reads its inputs' values (`InferContext.ins`, ``single``), records the tensor axes it touches
(`InferContext.claim`, ``claim_heads``), ties permutations (``ctx.groups.union``) and returns its output's
value; `InferContext.fail` makes the `UserError` that names the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch.fx as fx
from torch import nn

from ..errors import UserError


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
                raise UserError(
                    f"{where}: ties permutations with two different group structures "
                    f"({self.size[self.find(o1)]} and {self.size[self.find(o2)]} groups)"
                )
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
                raise UserError(
                    f"{where}: a permutation already split into {self.size[self.find(outer)]} "
                    f"groups is used with {n_groups} groups"
                )
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
        return [v for a in found for v in flat_vals(self.val(a))]

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

    def claim(
        self, tensor: str, axis: int, group: int, block: int, where: str, groups: int = 1, offset: int = 0
    ) -> None:
        """Record that axis ``axis`` of parameter/buffer ``tensor`` (its entries from ``offset``, in
        ``groups`` copies) is indexed by ``group`` (tied if seen)."""
        if tensor not in self.tensors:
            return
        old_g, old_b = self.claims.setdefault((tensor, axis, offset, groups), (group, block))
        if old_b != block:
            raise UserError(f"{where}: axis {axis} of '{tensor}' is used with two block sizes")
        self.groups.union(old_g, group, where)

    def claim_heads(
        self, tensor: str, axis: int, heads: int, inner: int, n_heads: int, head_dim: int, where: str, offset: int = 0
    ) -> None:
        """An axis of ``n_heads`` heads of ``head_dim`` entries from ``offset``: the heads permuted as wholes
        (``heads``), the entries inside every head alike (``inner``)."""
        if n_heads > 1:
            self.claim(tensor, axis, heads, head_dim, where, 1, offset)
        if head_dim > 1:
            self.claim(tensor, axis, inner, 1, where, n_heads, offset)

    def fail(self, node: fx.Node, why: str) -> UserError:
        target = target_name(node, str(node.target))
        return UserError(
            f"cannot infer the permutation spec at fx node '{node.name}' ({node.op} {target}): {why}. "
            f"Pass elementwise=['{target}'] if it acts on each channel separately, or write the "
            f"spec by hand (PermutationSpec.from_dict / --spec FILE.json)"
        )

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
        assert n_groups is not None and m is not None  # a split group's parts have sizes (Groups.refine)
        return self.expand(outer, block * m, groups, offset) + self.expand(inner, block, groups * n_groups, offset)


def flat_vals(v: Any) -> list[Val]:
    """The tensors' values in ``v`` (a `Val`, None, or a tuple of them)."""
    if isinstance(v, Val):
        return [v]
    if isinstance(v, (tuple, list)):
        return [x for item in v for x in flat_vals(item)]
    return []


def groups_of(v: Val) -> list[int]:
    """The permutations on ``v``'s channel axis: one, or one per concatenated part."""
    return [g for g, _, _ in v.segs] if v.segs else [v.group]


Rule = Callable[[InferContext, fx.Node], "Val | tuple[Val, ...] | None"]  # a tuple: a module with several outputs


__all__ = ["Groups", "InferContext", "Rule", "Val", "flat_vals", "groups_of", "target_name"]

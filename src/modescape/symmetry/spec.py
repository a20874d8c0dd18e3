"""Permutation specs: which axes of which tensors share one permutation, and how to apply permutations.

Hidden units of a network can be reordered without changing the function it computes, as long as
every tensor that indexes those units is reordered the same way: the producing layer's output rows
and bias, every normalisation parameter *and running statistic* on that channel, and the consuming
layers' input columns. A `PermutationSpec` lists, for every such permutation, the (tensor, axis,
block) triples it acts on; ``block`` > 1 means the axis holds ``block`` consecutive entries per unit
(a Linear reading a flattened [C, H, W] map permutes blocks of H*W columns). Two more fields place a
permutation on part of an axis, so that several permutations can share one axis: ``offset`` (where
its entries start: the key rows of a fused q/k/v projection start at d) and ``groups`` (the entries
``offset : offset + groups * n * block`` are ``groups`` consecutive copies of the n units, each
permuted the same way: the dimensions inside every attention head, the channels inside every group
of a GroupNorm). Permutations on one axis act on different segments, or on different digits of the
index ``(group, unit, block)`` of one segment, so they commute.

This module is the data model only (the spec, its JSON form, `apply`, random / identity / inverse /
composed permutations), so that hand-written specs need nothing else. `infer_spec`, which builds a
spec from a model's ``torch.fx`` graph, lives in `modescape.symmetry.infer`.

Convention (git-re-basin's): ``apply(spec, state, perms)`` index-selects every listed axis with its
permutation, so unit ``k`` of the result is unit ``perms[p][k]`` of the input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import input_file
from ..errors import UserError

Perms = dict[str, Tensor]  # permutation name -> LongTensor [n]


@dataclass(frozen=True)
class Axis:
    """One permuted axis: tensor ``name``, its ``axis``, ``block`` consecutive entries per unit.

    ``groups`` and ``offset`` (defaults 1 and 0: the whole axis) place it on part of the axis: the
    entries ``offset : offset + groups * n * block`` seen as ``[groups, n, block]``, the permutation of
    the n units applied in every group alike.
    """

    name: str
    axis: int
    block: int = 1
    groups: int = 1
    offset: int = 0

    @property
    def whole(self) -> bool:
        """Whether the axis is the permutation's alone (no groups, no offset)."""
        return self.groups == 1 and self.offset == 0

    def to_list(self) -> list:
        """``[tensor, axis, block]``, with ``groups, offset`` appended when not the defaults."""
        out: list = [self.name, self.axis, self.block]
        return out if self.whole else out + [self.groups, self.offset]

    def describe(self) -> str:
        bits = [f"blocks of {self.block}"] if self.block > 1 else []
        bits += [f"in each of {self.groups} groups"] if self.groups > 1 else []
        bits += [f"from entry {self.offset}"] if self.offset else []
        return f"{self.name}[{self.axis}]" + (f" ({', '.join(bits)})" if bits else "")


@dataclass
class PermutationSpec:
    """Permutation name -> size and the axes it acts on.

    ``sizes``: {perm: n units}; ``axes``: {perm: [Axis, ...]} covering parameters and buffers.
    ``producers``: {perm: module names whose outputs start it} (for naming layers on the CLI).
    ``nodes``: {perm: [(fx node name, kind)]}: the traced values whose channel axis it indexes, kind
    one of ``linear`` (a Linear/Conv output with channels on axis 1), ``proj`` (a Linear / Embedding /
    attention output with channels last, as in sequence models), ``norm``, ``act`` (an activation),
    ``tie`` (a sum), ``other``; empty for hand-written specs (activation matching and REPAIR need it).
    ``node_axes``: {fx node name: channel axis} for the nodes whose channels are not on axis 1
    (``[B, T, C]`` values of sequence models: axis 2).
    """

    sizes: dict[str, int]
    axes: dict[str, list[Axis]]
    producers: dict[str, list[str]] = field(default_factory=dict)
    nodes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    node_axes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[tuple[str, int, int, int, int], str] = {}
        for p, axes in self.axes.items():
            if p not in self.sizes:
                raise UserError(f"permutation '{p}' has axes but no size in the spec")
            for a in axes:
                key = (a.name, a.axis, a.offset, a.groups, a.block)
                if key in seen:
                    raise UserError(
                        f"axis {a.axis} of '{a.name}' is claimed by two permutations "
                        f"('{seen[key]}' and '{p}'): they must be one"
                    )
                seen[key] = p

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
        out: dict[str, Any] = {
            "permutations": {
                p: {
                    "size": self.sizes[p],
                    "axes": [a.to_list() for a in self.axes[p]],
                    "producers": self.producers.get(p, []),
                    "nodes": [list(n) for n in self.nodes.get(p, [])],
                }
                for p in self.sizes
            }
        }
        if self.node_axes:
            out["node_axes"] = dict(self.node_axes)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        """Inverse of `to_dict`: ``{"permutations": {name: {"size": n, "axes": [[tensor, axis, block], ...]}}}``
        (an axis may add ``groups, offset``: ``[tensor, axis, block, groups, offset]``)."""
        try:
            perms = d["permutations"]
            sizes = {p: int(v["size"]) for p, v in perms.items()}
            axes = {
                p: [Axis(str(a[0]), int(a[1]), *[int(x) for x in a[2:5]]) for a in v["axes"]] for p, v in perms.items()
            }
            producers = {p: list(v.get("producers", [])) for p, v in perms.items()}
            nodes = {p: [(str(n[0]), str(n[1])) for n in v.get("nodes", [])] for p, v in perms.items()}
            node_axes = {str(k): int(v) for k, v in d.get("node_axes", {}).items()}
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
            raise UserError(
                f"malformed permutation spec ({e!r}); expected "
                '{"permutations": {name: {"size": n, "axes": [[tensor, axis, block], ...]}}}'
            ) from None
        return cls(sizes, axes, producers, nodes, node_axes)

    @classmethod
    def load(cls, path) -> PermutationSpec:
        input_file(path, "permutation spec")  # a regular file: a FIFO would hang the reader
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read permutation spec {path}: {e}") from None
        except UnicodeDecodeError:
            raise UserError(f"cannot read permutation spec {path}: not a text (JSON) file") from None

    def check(self, state: Mapping[str, Tensor]) -> None:
        """Raise `UserError` if a tensor the spec names has the wrong size on a permuted axis.

        Tensors the spec names but ``state`` lacks are fine (a point without buffers).
        """
        shared: dict[tuple[str, int], int] = {}
        for axes in self.axes.values():
            for a in axes:
                shared[(a.name, a.axis)] = shared.get((a.name, a.axis), 0) + 1
        for p, axes in self.axes.items():
            for a in axes:
                if a.name in state:
                    t = state[a.name]
                    need = self.sizes[p] * a.block * a.groups
                    size = t.shape[a.axis] if a.axis < t.dim() else None
                    alone = a.whole and shared[(a.name, a.axis)] == 1  # then it must fill the axis exactly
                    if size is None or (size != need if alone else size < a.offset + need):
                        where = "" if a.whole else f" from entry {a.offset}"
                        raise UserError(
                            f"tensor '{a.name}' has shape {list(t.shape)}, but permutation '{p}' "
                            f"expects {need} entries on axis {a.axis}{where}: "
                            f"the spec is for a different model"
                        )

    def summary(self) -> str:
        """Human-readable listing, one permutation per block."""
        lines = []
        for p in self.sizes:
            lines.append(f"{p}  (n={self.sizes[p]})")
            for a in self.axes[p]:
                lines.append(f"    {a.describe()}")
        return "\n".join(lines)


# -- applying permutations ---------------------------------------------------------------------


def axis_index(perm: Tensor, block: int = 1, groups: int = 1, offset: int = 0, length: int | None = None) -> Tensor:
    """The index along a whole axis of ``length`` entries (default: just the segment) that applies
    ``perm`` to the units of the segment ``offset : offset + groups * n * block`` seen as [groups, n, block]."""
    n = perm.shape[0]
    seg = (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1)
    if groups > 1:
        seg = (torch.arange(groups, device=perm.device)[:, None] * (n * block) + seg).reshape(-1)
    length = offset + groups * n * block if length is None else length
    if offset == 0 and length == seg.shape[0]:
        return seg
    idx = torch.arange(length, device=perm.device)
    idx[offset : offset + seg.shape[0]] = seg + offset
    return idx


def permute_tensor(t: Tensor, axis: int, perm: Tensor, block: int = 1, groups: int = 1, offset: int = 0) -> Tensor:
    """Index-select ``axis`` of ``t`` with ``perm`` (expanded to blocks, repeated over groups, placed at
    ``offset``; the rest of the axis unchanged)."""
    return t.index_select(axis, axis_index(perm.to(t.device), block, groups, offset, t.shape[axis]))


def unit_rows(t: Tensor, a: Axis, n: int) -> Tensor:
    """The ``n`` units of axis ``a`` of ``t`` as rows: [n, everything else of the segment] (for matching)."""
    t = t.movedim(a.axis, 0)
    seg = t[a.offset : a.offset + a.groups * n * a.block]
    return seg.reshape(a.groups, n, a.block, -1).transpose(0, 1).reshape(n, -1)


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
                t = permute_tensor(t, a.axis, perms[p], a.block, a.groups, a.offset)
        out[name] = t
    return out


def head_blocks(spec: PermutationSpec) -> dict[str, tuple[int, int]]:
    """{tensor: (axis, entries per head)} for every tensor axis an attention ``...:heads`` permutation acts
    on (the per-head normalisation of `modescape.directions`); the axis is cut into consecutive heads."""
    out: dict[str, tuple[int, int]] = {}
    for p, axes in spec.axes.items():
        if p.endswith(":heads"):
            for a in axes:
                out[a.name] = (a.axis, a.block)
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


__all__ = [
    "Axis",
    "PermutationSpec",
    "Perms",
    "apply",
    "axis_index",
    "compose",
    "head_blocks",
    "identity_perms",
    "invert",
    "permute_tensor",
    "random_perms",
    "unit_rows",
]

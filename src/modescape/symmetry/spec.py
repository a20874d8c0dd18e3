"""Permutation specs: which axes of which tensors share one permutation, and how to apply permutations.

Hidden units of a network can be reordered without changing the function it computes, as long as
every tensor that indexes those units is reordered the same way: the producing layer's output rows
and bias, every normalisation parameter *and running statistic* on that channel, and the consuming
layers' input columns. A `PermutationSpec` lists, for every such permutation, the (tensor, axis,
block) triples it acts on; ``block`` > 1 means the axis holds ``block`` consecutive entries per unit
(a Linear reading a flattened [C, H, W] map permutes blocks of H*W columns).

This module is the data model only (the spec, its JSON form, `apply`, random / identity / inverse /
composed permutations), so that hand-written specs need nothing else. `infer_spec`, which builds a
spec from a model's ``torch.fx`` graph, lives in `modescape.symmetry.infer`.

Convention (git-re-basin's): ``apply(spec, state, perms)`` index-selects every listed axis with its
permutation, so unit ``k`` of the result is unit ``perms[p][k]`` of the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

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


__all__ = ["Axis", "PermutationSpec", "Perms", "apply", "compose", "identity_perms", "invert", "permute_tensor",
           "random_perms"]

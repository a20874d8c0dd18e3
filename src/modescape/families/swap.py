"""The swap path (Brea et al. 2019): from a point to the same point with two hidden units exchanged.

Exchanging units i and j of one layer (their incoming weights, biases, norm parameters and outgoing
weights, all together) gives a different point that computes the same function. The straight line

    point(t) = (1 - t) theta + t swap_ij(theta)

moves both units' incoming and outgoing weights towards their mean, reaches it at t = 1/2 (the
*permutation point*, where the two units are identical and the network is effectively one unit
smaller), and continues to the swapped positions. Brea et al. show that such permutation points are
saddles (or lie on flat valleys) of the loss, so the loss along this line rises to a barrier at
t = 1/2 unless the two units were already alike.

It is the `Line` between theta and swap_ij(theta), carrying which permutation and units it swaps;
build one with `modescape.symmetry.swap_path`, which knows every axis the units occupy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from .lines import Line


class SwapPath(Line):
    """``point(t) = (1 - t) theta + t swapped``; t = 1/2 is the permutation point.

    ``perm``: the permutation (layer) whose units ``i`` and ``j`` are exchanged; ``buffers``: theta's and
    the swapped point's (its running statistics permuted the same way).
    """

    def __init__(
        self,
        theta: Mapping[str, Tensor],
        swapped: Mapping[str, Tensor],
        perm: str,
        i: int,
        j: int,
        buffers: Sequence[Mapping[str, Tensor]] | None = None,
    ):
        super().__init__(theta, swapped, buffers=buffers)
        self.perm, self.i, self.j = perm, int(i), int(j)

    def describe(self) -> dict:
        return {
            "family": "SwapPath",
            "coords": ["t"],
            "perm": self.perm,
            "i": self.i,
            "j": self.j,
            "meaning": "(1 - t) theta + t swap_ij(theta); t = 1/2 is the permutation point",
        }


__all__ = ["SwapPath"]

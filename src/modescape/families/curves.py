"""Curves between two points of weight space: Bezier curves and polygonal chains (Garipov et al. 2018).

Both are `LinearFamily`s with n >= 3 *bends* w_0 .. w_{n-1}: the endpoints w_0 and w_{n-1} are frozen
buffers (the two trained networks being connected), the inner bends are trainable ``nn.Parameter``s.
They differ only in how the curve parameter t in [0, 1] becomes n coefficients:

    Bezier:     a_j(t) = C(n-1, j) t^j (1-t)^(n-1-j)
    PolyChain:  a_j(t) = max(0, 1 - |t (n-1) - j|)      (straight pieces through every bend)

so w(t) = sum_j a_j(t) w_j is one matrix product for K values of t at once, differentiable in the
inner bends. Both return exactly w_0 at t = 0 and w_{n-1} at t = 1; the chain passes exactly through
w_j at t = j / (n-1). Given the endpoints' ``buffers``, the point at t carries ``(1 - t) b_0 + t b_1``
(BatchNorm statistics of the two trained networks; the curve's inner points have none of their own).

>>> curve = Bezier.on_segment(a, b, bends=3)  # inner bend initialised at the midpoint
>>> curve(0.5)  # a point: dict[str, Tensor]
>>> curve(torch.linspace(0, 1, 61))  # a stacked point [61, ...]
>>> torch.optim.SGD(curve.parameters(), lr=0.01)  # only the inner bends train
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .base import LinearFamily

Point = Mapping[str, Tensor]


class Curve(LinearFamily):
    """A curve w(t), t in [0, 1], through n >= 3 bends; endpoints frozen, inner bends trainable.

    ``bends``: the n points w_0 .. w_{n-1} (w_0 and w_{n-1} are the curve's endpoints).
    Subclasses define ``coefficients(t [K, 1] float64) -> [K, n]``.
    """

    dim = 1
    kind = "curve"

    def __init__(self, bends: Sequence[Point], buffers: Sequence[Point] | None = None):
        bends = list(bends)
        if len(bends) < 3:
            raise UserError(
                f"a {type(self).__name__} needs at least 3 bends (two endpoints and one inner "
                f"bend); got {len(bends)}. For the straight segment use bends=3 with the "
                f"inner bend on the segment, or families.lines.Line"
            )
        super().__init__(bends, trainable=[False] + [True] * (len(bends) - 2) + [False], buffers=buffers)
        if self.n_buffer_anchors not in (0, 2):
            raise UserError(f"a curve carries the buffers of its two endpoints; got {self.n_buffer_anchors}")

    @property
    def n_bends(self) -> int:
        return self.n_anchors

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        t = coords[:, :1]
        return torch.cat([1.0 - t, t], dim=1)

    @classmethod
    def on_segment(cls, a: Point, b: Point, bends: int = 3, buffers: Sequence[Point] | None = None) -> Curve:
        """The curve from ``a`` to ``b`` with inner bends on the segment: w_j = a + j/(n-1) (b - a)."""
        if bends < 3:
            raise UserError(f"bends must be >= 3, got {bends}")
        pts = [dict(a)]
        for j in range(1, bends - 1):
            s = j / (bends - 1)
            pts.append({k: a[k] + s * (b[k] - a[k]) for k in a})
        pts.append(dict(b))
        return cls(pts, buffers)

    @classmethod
    def through(cls, a: Point, b: Point, inner: Sequence[Point], buffers: Sequence[Point] | None = None) -> Curve:
        """The curve from ``a`` to ``b`` with inner bends initialised at the given points."""
        return cls([a, *inner, b], buffers)

    def bend(self, j: int) -> dict[str, Tensor]:
        """Bend j as a point (detached)."""
        return {k: v.detach() for k, v in self.anchor_point(j).items()}

    def bends(self) -> list[dict[str, Tensor]]:
        return [self.bend(j) for j in range(self.n_bends)]

    def describe(self) -> dict:
        return {
            "family": type(self).__name__,
            "coords": ["t"],
            "bends": self.n_bends,
            "meaning": f"{self.kind} curve from bend 0 (t = 0) to bend {self.n_bends - 1} (t = 1)",
        }


class Bezier(Curve):
    """Bezier curve: w(t) = sum_j C(n-1, j) t^j (1-t)^(n-1-j) w_j."""

    kind = "bezier"

    def __init__(self, bends: Sequence[Point], buffers: Sequence[Point] | None = None):
        super().__init__(bends, buffers)
        n = self.n_anchors
        self._binom = torch.tensor([math.comb(n - 1, j) for j in range(n)], dtype=torch.float64)
        self._powers = torch.arange(n, dtype=torch.float64)

    def coefficients(self, coords: Tensor) -> Tensor:
        """coords [K, 1] -> [K, n] Bernstein coefficients (torch.pow(0, 0) = 1 gives exact ends)."""
        t = coords[:, :1]
        j = self._powers.to(coords.device)
        return self._binom.to(coords.device) * torch.pow(t, j) * torch.pow(1.0 - t, j.flip(0))


class PolyChain(Curve):
    """Polygonal chain: w(t) = sum_j max(0, 1 - |t (n-1) - j|) w_j, straight between the bends."""

    kind = "polychain"

    def coefficients(self, coords: Tensor) -> Tensor:
        """coords [K, 1] -> [K, n] hat functions; t (n-1) snapped to integers within 1e-12 so that
        t = j / (n-1) gives exactly bend j."""
        n = self.n_anchors
        s = coords[:, :1] * (n - 1)
        r = torch.round(s)
        s = torch.where((s - r).abs() < 1e-12, r, s)
        j = torch.arange(n, dtype=coords.dtype, device=coords.device)
        return torch.clamp(1.0 - (s - j).abs(), min=0.0)


CURVES: dict[str, type[Curve]] = {"bezier": Bezier, "polychain": PolyChain}


def curve_class(kind: str) -> type[Curve]:
    """``"bezier"`` | ``"polychain"`` -> the class."""
    try:
        return CURVES[kind.lower()]
    except KeyError:
        raise UserError(f"unknown curve '{kind}': use one of {', '.join(CURVES)}") from None

"""The family base classes: coordinates in, (stacked) points out.

A `LinearFamily` keeps its anchor points as flat vectors, stacked in a matrix ``W`` of shape [n, D]
(frozen anchors as buffers, trainable ones as ``nn.Parameter``), and a subclass says only how
coordinates become coefficients: ``coefficients(coords [K, d]) -> [K, n]``. Then

    point(coords) = unflatten(coefficients(coords) @ W)

is one matrix product for K points at once, differentiable in the trainable anchors. Families are
``nn.Module``s so their trainable anchors go straight into an optimiser and their state into a
safetensors file.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import space as sp
from ..space import Layout
from ..errors import UserError


class Family(nn.Module):
    """Coordinates -> points. ``family(coords)``: coords [K, dim] -> stacked point; [dim] -> point."""

    dim: int = 1

    def forward(self, coords) -> sp.Point:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define forward(coords)")

    def _coords(self, coords) -> tuple[Tensor, bool]:
        """Normalise coordinates to [K, dim] float64; ``single`` when one point was asked for.

        A scalar is one point of a 1-d family; a 1-d tensor is K points of a 1-d family, or one point
        of a d-dimensional family; a 2-d tensor is [K, dim].
        """
        c = torch.as_tensor(coords, dtype=torch.float64)
        single = c.dim() == 0 or (c.dim() == 1 and self.dim > 1)
        if c.dim() == 0:
            c = c.reshape(1, 1)
        elif c.dim() == 1:
            c = c.reshape(1, -1) if self.dim > 1 else c.reshape(-1, 1)
        if c.dim() != 2 or c.shape[-1] != self.dim:
            raise UserError(f"{type(self).__name__} takes {self.dim} coordinate(s) per point; "
                            f"got coordinates of shape {list(c.shape)}")
        return c, single


class LinearFamily(Family):
    """point(c) = sum_j coefficients(c)[j] * anchor_j.

    ``anchors``: a list of points; ``trainable``: which of them are ``nn.Parameter`` (others are frozen
    buffers). Subclasses define ``coefficients(coords [K, dim] float64) -> [K, n]``.
    """

    def __init__(self, anchors: Sequence[Mapping[str, Tensor]], trainable: Sequence[bool] | None = None):
        super().__init__()
        if len(anchors) == 0:
            raise UserError("a family needs at least one anchor point")
        self.layout = Layout.of(anchors[0])
        trainable = list(trainable) if trainable is not None else [False] * len(anchors)
        if len(trainable) != len(anchors):
            raise UserError("trainable must have one flag per anchor")
        self.n_anchors = len(anchors)
        self._trainable = tuple(bool(t) for t in trainable)
        for j, (a, t) in enumerate(zip(anchors, trainable)):
            flat = self.layout.flatten(a).detach().clone()
            if t:
                self.register_parameter(f"anchor_{j}", nn.Parameter(flat))
            else:
                self.register_buffer(f"anchor_{j}", flat)

    @property
    def trainable(self) -> tuple[bool, ...]:
        return self._trainable

    def anchor(self, j: int) -> Tensor:
        """Anchor j as a flat vector [D]."""
        return getattr(self, f"anchor_{j}")

    def anchor_point(self, j: int) -> sp.Point:
        """Anchor j as a point."""
        return self.layout.unflatten(self.anchor(j))

    def matrix(self) -> Tensor:
        """All anchors stacked: [n, D]."""
        return torch.stack([self.anchor(j) for j in range(self.n_anchors)])

    def coefficients(self, coords: Tensor) -> Tensor:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define coefficients(coords)")

    def flat(self, coords) -> Tensor:
        """Flat points [K, D] (or [D] for a single coordinate)."""
        c, single = self._coords(coords)
        w = self.matrix()
        a = self.coefficients(c.to(w.device)).to(w.dtype)
        out = a @ w
        return out[0] if single else out

    def forward(self, coords) -> sp.Point:
        return self.layout.unflatten(self.flat(coords))

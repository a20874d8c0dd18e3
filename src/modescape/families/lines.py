"""Lines and planes in weight space: the families that loss-landscape slices sweep.

* `Line(a, b)`: ``point(t) = (1 - t) a + t b`` (Goodfellow et al. 2015); t = 0 is ``a``, t = 1 is ``b``.
  `Line.from_direction(origin, d)`: ``origin + t d``.
* `Plane(origin, dx, dy)`: ``point(x, y) = origin + x dx + y dy`` (Li et al. 2018), with directions
  from `modescape.directions`.
* `PlaneThrough(a, b, c)`: the plane through three models (Garipov et al. 2018) with an orthonormal
  basis: origin ``a``, ``u = (b - a) / ||b - a||``, ``v`` = the part of ``c - a`` orthogonal to ``u``,
  normalised. Coordinates are in weight-space units; ``model_coords`` gives the three models' (x, y).

All are `LinearFamily` subclasses: the anchors are stacked in ``W`` [n, D] and ``coefficients(coords)``
is [K, n], so K points are one matrix product. Given the models' ``buffers``, a line carries A's and B's
combined with ``(1 - t, t)`` and the plane through three models carries A's, B's and C's combined with
the point's barycentric coordinates, so each model's own point evaluates exactly as that model (the
reference's ``dir_type='states'``); a plane around one model carries that model's buffers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .. import space as sp
from ..errors import UserError
from .base import LinearFamily


class Line(LinearFamily):
    """``point(t) = (1 - t) a + t b``; coords [K] or [K, 1] -> stacked point [K, ...]."""

    dim = 1

    def __init__(
        self,
        a: Mapping[str, Tensor],
        b: Mapping[str, Tensor],
        trainable: tuple[bool, bool] = (False, False),
        buffers: Sequence[Mapping[str, Tensor]] | None = None,
    ):
        """``buffers``: ``(A's, B's)`` (combined with ``(1 - t, t)``) or ``(one model's,)``."""
        super().__init__([a, b], trainable, buffers)
        if self.n_buffer_anchors not in (0, 1, 2):
            raise UserError(f"a line carries the buffers of at most its two models; got {self.n_buffer_anchors}")

    @classmethod
    def from_direction(
        cls, origin: Mapping[str, Tensor], direction: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None
    ) -> Line:
        """The line ``origin + t * direction`` (so t = 0 is the origin), with the origin's ``buffers``."""
        return cls(origin, sp.add(origin, direction), buffers=None if buffers is None else [buffers])

    def coefficients(self, coords: Tensor) -> Tensor:
        t = coords[:, 0]
        return torch.stack([1.0 - t, t], dim=1)

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        if self.n_buffer_anchors == 2:
            return self.coefficients(coords)
        return super().buffer_coefficients(coords)

    def describe(self) -> dict:
        return {"family": "Line", "coords": ["t"], "meaning": "(1 - t) a + t b"}


class Plane(LinearFamily):
    """``point(x, y) = origin + x dx + y dy``; coords [K, 2] -> stacked point [K, ...]."""

    dim = 2

    def __init__(
        self,
        origin: Mapping[str, Tensor],
        dx: Mapping[str, Tensor],
        dy: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor] | None = None,
    ):
        """``buffers``: the origin model's, kept at every point (default: none; the evaluator's own)."""
        super().__init__([origin, dx, dy], buffers=None if buffers is None else [buffers])

    @property
    def origin(self) -> sp.Point:
        return self.anchor_point(0)

    @property
    def directions(self) -> tuple[sp.Point, sp.Point]:
        return self.anchor_point(1), self.anchor_point(2)

    def coefficients(self, coords: Tensor) -> Tensor:
        ones = torch.ones(coords.shape[0], 1, dtype=coords.dtype, device=coords.device)
        return torch.cat([ones, coords], dim=1)

    def project(self, point: Mapping[str, Tensor]) -> Tensor:
        """Least-squares (x, y) of ``point`` in this plane: solves the 2x2 normal equations. [2] float64."""
        w = self.matrix().double()
        v = self.layout.flatten(point).to(w).reshape(-1) - w[0]
        d = w[1:]  # [2, D]
        gram = d @ d.T
        return torch.linalg.solve(gram, d @ v)

    def describe(self) -> dict:
        return {"family": "Plane", "coords": ["x", "y"], "meaning": "origin + x dx + y dy"}


class PlaneThrough(Plane):
    """The plane through models ``a``, ``b``, ``c`` with an orthonormal basis (origin ``a``).

    ``model_coords``: [3, 2] float64, the (x, y) of a, b, c: (0, 0), (||b - a||, 0), (<c - a, u>, ||v'||).
    ``buffers``: ``(a's, b's, c's)``, combined at (x, y) with its barycentric coordinates over the three
    models (exactly (1, 0, 0), (0, 1, 0), (0, 0, 1) at the models).
    """

    model_coords: Tensor  # a registered buffer (nn.Module attributes are otherwise typed Tensor | Module)

    def __init__(
        self,
        a: Mapping[str, Tensor],
        b: Mapping[str, Tensor],
        c: Mapping[str, Tensor],
        buffers: Sequence[Mapping[str, Tensor]] | None = None,
    ):
        layout_names = list(a)
        fa = torch.cat([a[k].detach().reshape(-1).double() for k in layout_names])
        fb = torch.cat([b[k].detach().reshape(-1).double() for k in layout_names]).to(fa.device)
        fc = torch.cat([c[k].detach().reshape(-1).double() for k in layout_names]).to(fa.device)
        ab, ac = fb - fa, fc - fa
        nab = ab.norm()
        if float(nab) == 0.0:
            raise UserError(
                "models A and B are the same point: a plane through them is not defined; pick a different B"
            )
        u = ab / nab
        cu = ac @ u
        v = ac - cu * u
        nv = v.norm()
        if float(nv) <= 1e-12 * max(float(ac.norm()), 1.0):
            raise UserError("the three models are collinear: no unique plane passes through them; pick a different C")
        v = v / nv
        like = {k: a[k] for k in layout_names}
        du = {k: t.to(a[k].dtype) for k, t in sp.unflatten(u, like).items()}
        dv = {k: t.to(a[k].dtype) for k, t in sp.unflatten(v, like).items()}
        LinearFamily.__init__(self, [a, du, dv], buffers=buffers)
        if self.n_buffer_anchors not in (0, 3):
            raise UserError(
                f"the plane through three models carries all three models' buffers; got {self.n_buffer_anchors}"
            )
        self.register_buffer(
            "model_coords", torch.tensor([[0.0, 0.0], [float(nab), 0.0], [float(cu), float(nv)]], dtype=torch.float64)
        )

    def barycentric(self, coords: Tensor) -> Tensor:
        """[K, 2] plane coordinates -> [K, 3] weights (alpha, beta, gamma) of a, b, c: the point's weights
        over the three models (they sum to 1; exact at the models' own coordinates)."""
        mc = self.model_coords.to(coords.device)
        (xb, _), (xc, yc) = mc[1], mc[2]
        gamma = coords[:, 1] / yc
        beta = (coords[:, 0] - gamma * xc) / xb
        return torch.stack([1.0 - beta - gamma, beta, gamma], dim=1)

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        return self.barycentric(coords)

    def describe(self) -> dict:
        return {
            "family": "PlaneThrough",
            "coords": ["x", "y"],
            "meaning": "a + x u + y v, orthonormal u, v",
            "models": self.model_coords.tolist(),
        }

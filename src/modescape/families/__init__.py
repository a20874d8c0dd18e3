"""Families of points: objects that map coordinates to points in weight space.

Every family here is *linear in its anchors*: point(c) = sum_j a_j(c) * w_j, with anchor points w_j
and coefficient functions a_j. A line, a plane, a Bezier curve, a polygonal chain, a simplex and an
affine subspace differ only in their coefficients, so they share one implementation (`base`), are
differentiable in their trainable anchors, and can be swept (landscapes) or trained (curves).
"""

from ..space import Layout
from .base import Family, LinearFamily

__all__ = ["Family", "LinearFamily", "Layout"]

from .lines import Line, Plane, PlaneThrough  # noqa: E402

__all__ += ["Line", "Plane", "PlaneThrough"]

"""Families of points: objects that map coordinates to points in weight space.

Every family here is *linear in its anchors*: point(c) = sum_j a_j(c) * w_j, with anchor points w_j
and coefficient functions a_j. A line, a plane, the plane through three models, a Bezier curve, a
polygonal chain and a swap path differ only in their coefficients, so they share one implementation
(`base`), are differentiable in their trainable anchors, and can be swept (landscapes) or trained
(curves). A family between models also carries the models' buffers (`base`, "Buffers").
"""

from ..space import Layout
from .base import Family, LinearFamily
from .curves import Bezier, Curve, PolyChain, curve_class
from .lines import Line, Plane, PlaneThrough
from .simplex import Simplex
from .subspace import AffineSubspace, make_projection
from .swap import SwapPath

__all__ = [
    "Bezier",
    "Curve",
    "Family",
    "Layout",
    "Line",
    "LinearFamily",
    "Plane",
    "PlaneThrough",
    "PolyChain",
    "SwapPath",
    "curve_class",
]
__all__ += ["AffineSubspace", "Simplex", "make_projection"]

"""Grids of coordinates: the one home of grid order and of ``A:B:N`` ranges.

A `Grid` holds coordinates per dimension, in order; its points are row-major (the last dimension varies
fastest: for a plane ``x`` outer, ``y`` inner), and every result stores its coordinates explicitly.
``"A:B:N"`` means N points from A to B inclusive. Sizes are checked before any array exists, so a typo
such as ``-1:1:1000000000`` is one line, not gigabytes of memory. It needs only numpy (imported on first use), so the
command line checks ranges before it imports anything heavy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .lazy import lazy

np = lazy("numpy")  # imported on first use: the command line starts without loading numpy
if TYPE_CHECKING:
    from numpy import ndarray

MAX_POINTS = 4_000_000  # a 2001 x 2001 grid; more is almost surely a typo (and a very long run)


def parse_range(text: str | Sequence[float], steps: int | None = None, what: str = "range") -> ndarray:
    """``"A:B:N"`` -> N points from A to B inclusive (float64); ``"A:B"`` uses ``steps``; a list is taken as is."""
    if not isinstance(text, str):
        arr = np.asarray(text, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            raise UserError(f"{what} is empty")
        return arr
    parts = text.split(":")
    try:
        if len(parts) == 3:
            a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
        elif len(parts) == 2 and steps is not None:
            a, b, n = float(parts[0]), float(parts[1]), int(steps)
        else:
            raise ValueError
    except ValueError:
        raise UserError(
            f"{what} '{text}' must look like A:B:N (N points from A to B inclusive), e.g. -1:1:51"
        ) from None
    if n < 1:
        raise UserError(f"{what} '{text}' asks for {n} points; N must be at least 1")
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UserError(f"{what} '{text}' has a non-finite end")
    if not math.isfinite(b - a):  # e.g. -1e308:1e308: the grid's steps would overflow to inf and NaN
        raise UserError(f"{what} '{text}' spans more than a float64 can hold: use ends closer together")
    if n == 1 and a != b:
        raise UserError(f"{what} '{text}' asks for 1 point between two different ends: give N >= 2 points")
    if n > MAX_POINTS:
        raise UserError(f"{what} '{text}' asks for {n:,} points (at most {MAX_POINTS:,}): use fewer points")
    return np.linspace(a, b, n)


@dataclass
class Grid:
    """Coordinates per dimension, in order; points are row-major (the last dimension varies fastest)."""

    coords: dict[str, ndarray]

    @classmethod
    def parse(cls, **ranges: str | Sequence[float]) -> Grid:
        """``Grid.parse(x="-1:1:51", y="0:1:11")``; dimensions in keyword order."""
        return cls({d: parse_range(r, what=f"--{d}") for d, r in ranges.items()})

    @property
    def dims(self) -> list[str]:
        return list(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.coords.values())

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def points(self, first: slice | None = None) -> ndarray:
        """[K, d] float64 coordinates in row-major order (optionally of a slice of the first dimension)."""
        axes = [np.asarray(v, dtype=np.float64) for v in self.coords.values()]
        if first is not None:
            axes[0] = axes[0][first]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)


def as_grid(grid: Grid | Mapping[str, Any] | str | Sequence[float], dims: Sequence[str]) -> Grid:
    """A `Grid` from a Grid, a dict {dim: range}, or (1-d only) one range; dims checked against the family."""
    if isinstance(grid, Grid):
        g = grid
    elif isinstance(grid, Mapping):
        g = Grid({d: parse_range(r, what=f"--{d}") for d, r in grid.items()})
    else:
        if len(dims) != 1:
            raise UserError(f"a {len(dims)}-d family needs a grid per dimension {list(dims)}: pass a dict or a Grid")
        g = Grid({dims[0]: parse_range(grid, what=f"--{dims[0]}")})
    if len(g.dims) != len(dims):
        raise UserError(f"the family has {len(dims)} coordinate(s) {list(dims)}; the grid has {g.dims}")
    return g


def auto_range(values: ndarray, n: int, margin: float = 0.25) -> ndarray:
    """n points covering ``values`` with a relative margin on each side (for planes through models or paths)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return np.linspace(lo - margin * span, hi + margin * span, n)


__all__ = ["Grid", "MAX_POINTS", "as_grid", "auto_range", "parse_range"]

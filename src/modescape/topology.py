"""The shape of a landscape in numbers: sublevel-set persistence, the merge tree of minima, basins.

A contour plot is read by eye; "skip connections smooth the landscape" needs a number. This module takes
any grid result (1-D, 2-D or N-D: an ``xarray.Dataset`` from `modescape.landscape.sweep` or
`modescape.store.load`, a ``DataArray``, or a plain array with coordinates) and computes the
0-dimensional persistent homology of its sublevel sets on the grid graph (Edelsbrunner & Harer 2010):

* every local minimum m is **born** at its value ``b = f(m)``; when the sublevel set ``{f <= t}`` grows
  past a saddle where m's component meets a component with a lower minimum, m **dies** at ``d`` = the
  saddle's value (the elder rule: the younger component dies). ``d - b`` is m's **persistence**, the
  barrier that keeps a descent from m out of a deeper basin. The global minimum never dies: its death is
  ``+inf`` here (``pairs(essential="max")`` puts the largest value instead);
* the **merge tree** (join tree) of the minima: leaves are minima, inner nodes the saddles where
  components join, heights the values;
* the **basins** above a threshold T: minima with persistence > T, the global one included; the
  **deepest spurious basin**: the largest persistence of a minimum other than the global one;
* **roughness** ``R = sum_{non-global m} (d_m - b_m) / (max f - min f)`` and **smoothness**
  ``S = 1 / (1 + R)``: S = 1 for a landscape with one basin, towards 0 for a chaotic one.

The grid graph joins each cell to its axis neighbours (``neighbourhood=4`` in 2-D, ``"axis"``: 2N in N-D)
or to all cells of its 3^N - 1 block (``8`` in 2-D, ``"full"``). Ties are broken by grid index (a stable
sort), and pairs of zero persistence (a plateau that runs down into a lower component) are not minima
and are dropped, as gudhi does.

The union-find itself is in `modescape.persistence`: one sort of the cells, a few passes over the
neighbours and a loop over the minima (about 0.1 s for a 501 x 501 surface with a few hundred minima; see
bench/topology.py).

Results are a `TopologyResult` (``to_dict()``); figures are in `modescape.plots.topology`; the CLI is
``modescape topology RESULT``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserError
from .persistence import NEIGHBOURHOODS, neighbourhood_kind, sublevel_persistence

DEFAULT_THRESHOLD = "1%"  # of the loss range: basins shallower than this are noise


# -- inputs ---------------------------------------------------------------------------------------


def default_dims(ndim: int) -> tuple[str, ...]:
    """Dimension names of a plain array: ``t`` (a line), ``x, y`` (a plane), ``x, y, z``, else ``d0, d1, ...``."""
    if ndim == 1:
        return ("t",)
    return ("x", "y", "z")[:ndim] if ndim <= 3 else tuple(f"d{i}" for i in range(ndim))


def _grid_values(
    result: Any, metric: str, coords: Mapping[str, Any] | Sequence[Any] | None
) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray], str]:
    """(values float64 [shape], dims, coords per dim, metric name) of a Dataset, DataArray or array."""
    if hasattr(result, "data_vars"):  # xarray.Dataset
        if metric not in result.data_vars:
            names = ", ".join(sorted(str(n) for n in result.data_vars)) or "none"
            raise UserError(f"the result has no variable '{metric}': choose one of {names}")
        result = result[metric]
    if hasattr(result, "dims") and hasattr(result, "coords") and hasattr(result, "values"):  # DataArray
        dims = tuple(str(d) for d in result.dims)
        values = np.asarray(result.values, dtype=np.float64)
        cs = {
            d: (
                np.asarray(result.coords[d].values, dtype=np.float64)
                if d in result.coords
                else np.arange(values.shape[i], dtype=np.float64)
            )
            for i, d in enumerate(dims)
        }
        name = str(result.name) if result.name is not None else metric
        if coords is not None:
            raise UserError("coordinates come with an xarray result: pass coords only with a plain array")
        return values, dims, cs, name
    try:
        values = np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(
            f"expected a grid result (xarray Dataset or DataArray) or an array of numbers; got {type(result).__name__}"
        ) from None
    if values.ndim == 0:
        raise UserError("a topology needs a grid of values (1-D or more); got a single number")
    if coords is None:
        dims = default_dims(values.ndim)
        cs = {d: np.arange(n, dtype=np.float64) for d, n in zip(dims, values.shape, strict=True)}
    else:
        items = (
            list(coords.items())
            if isinstance(coords, Mapping)
            else list(zip(default_dims(len(coords)), coords, strict=True))
        )
        if len(items) != values.ndim:
            raise UserError(f"the array has {values.ndim} dimensions; {len(items)} coordinate arrays were given")
        dims = tuple(str(d) for d, _ in items)
        cs = {}
        for (d, c), n in zip(items, values.shape, strict=True):
            c = np.asarray(c, dtype=np.float64).reshape(-1)
            if c.size != n:
                raise UserError(f"coordinates of '{d}' have {c.size} values; the array has {n} along it")
            cs[d] = c
    return values, dims, cs, metric


def _check_finite(values: np.ndarray, metric: str) -> None:
    if values.size == 0:
        raise UserError(f"'{metric}' is empty: there is no landscape to analyse")
    nan = np.isnan(values)
    if nan.any():
        raise UserError(
            f"'{metric}' has {int(nan.sum())} NaN of {values.size} cells (an unfinished sweep?): "
            f"rerun the sweep with the same --out to finish it, then analyse it"
        )
    inf = ~np.isfinite(values)
    if inf.any():
        raise UserError(
            f"'{metric}' has {int(inf.sum())} infinite cells (the loss overflowed there): "
            f"sweep a smaller range, or analyse another metric"
        )


# -- the result -----------------------------------------------------------------------------------


@dataclass
class MergeTree:
    """The merge (join) tree of the minima, optionally pruned at a persistence threshold.

    Nodes: ``kind`` (``"minimum"`` or ``"saddle"``), ``value`` [nodes], ``index`` [nodes, ndim] (grid index),
    ``parent`` (-1 for the root), ``minimum`` (the minimum's id in the `TopologyResult` for leaves,
    -1 for saddles). Leaves are the minima with persistence above ``threshold`` (and the global one);
    every inner node joins exactly two subtrees. The root is the last saddle (or the global minimum if
    it is alone); above it the global minimum's component lives on to +inf.
    """

    kind: list[str]
    value: np.ndarray
    index: np.ndarray
    parent: np.ndarray
    minimum: np.ndarray
    threshold: float

    @property
    def n_nodes(self) -> int:
        return len(self.kind)

    @property
    def root(self) -> int:
        return int(np.flatnonzero(self.parent < 0)[0])

    def children(self, node: int) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.parent == node)]

    @property
    def leaves(self) -> list[int]:
        return [i for i, k in enumerate(self.kind) if k == "minimum"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "nodes": [
                {
                    "id": i,
                    "kind": k,
                    "value": float(v),
                    "index": [int(j) for j in ix],
                    "parent": int(p),
                    "minimum": int(mn),
                }
                for i, (k, v, ix, p, mn) in enumerate(
                    zip(self.kind, self.value, self.index, self.parent, self.minimum, strict=True)
                )
            ],
        }


@dataclass
class TopologyResult:
    """0-dimensional sublevel persistence of a grid result, its merge tree and basins.

    Minima are numbered in birth order (id 0: the global minimum). ``births`` / ``deaths`` [K] their
    values (``deaths[0] = inf``); ``minima`` / ``saddles`` [K, ndim] grid indices of each minimum and of
    the saddle cell where it dies (-1 for the global one); ``merged_into`` [K] the elder minimum whose
    component it joins there (-1 for the global one). ``threshold`` (loss units) is the one ``basins``
    counts with. ``values`` is the grid itself; ``labels`` the steepest-descent basin (minimum id) of
    every cell.
    """

    metric: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    neighbourhood: str
    threshold: float
    births: np.ndarray
    deaths: np.ndarray
    minima: np.ndarray
    saddles: np.ndarray
    merged_into: np.ndarray
    value_min: float
    value_max: float
    values: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    # -- numbers --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def n_neighbours(self) -> int:
        nd = len(self.shape)
        return 2 * nd if self.neighbourhood == "axis" else 3**nd - 1

    @property
    def value_range(self) -> float:
        return self.value_max - self.value_min

    @property
    def persistence(self) -> np.ndarray:
        """[K] death - birth (inf for the global minimum)."""
        return self.deaths - self.births

    @property
    def n_minima(self) -> int:
        """Local minima (persistence > 0), the global one included."""
        return int(self.births.size)

    def basin_count(self, threshold: float | str | None = None) -> int:
        """Minima with persistence > ``threshold`` (loss units, or ``"P%"`` of the loss range; default: the
        result's own threshold), the global minimum included."""
        t = self.threshold if threshold is None else resolve_threshold(threshold, self.value_range)
        return int(1 + np.count_nonzero(self.persistence[1:] > t))

    @property
    def basins(self) -> int:
        """`basin_count` at the result's threshold."""
        return self.basin_count()

    @property
    def deepest_spurious(self) -> int | None:
        """Id of the non-global minimum with the largest persistence (None when there is one minimum)."""
        if self.n_minima < 2:
            return None
        return int(1 + np.argmax(self.persistence[1:]))

    @property
    def deepest_spurious_depth(self) -> float:
        """The largest persistence of a minimum other than the global one (0 when there is none)."""
        i = self.deepest_spurious
        return 0.0 if i is None else float(self.persistence[i])

    @property
    def total_persistence(self) -> float:
        """Sum of the persistence of the non-global minima (loss units)."""
        return float(self.persistence[1:].sum())

    @property
    def roughness(self) -> float:
        """``total_persistence / (max - min)`` (0 for one basin or a constant grid)."""
        r = self.value_range
        return self.total_persistence / r if r > 0 else 0.0

    @property
    def smoothness(self) -> float:
        """``1 / (1 + roughness)``: 1 for a single basin, towards 0 for a chaotic landscape."""
        return 1.0 / (1.0 + self.roughness)

    def pairs(self, essential: str = "inf") -> np.ndarray:
        """[K, 2] (birth, death); the global minimum's death is ``inf`` or, with ``essential="max"``, the
        largest value of the grid."""
        if essential not in ("inf", "max"):
            raise UserError(f"unknown essential '{essential}': use inf or max")
        d = self.deaths.copy()
        if essential == "max":
            d[0] = self.value_max
        return np.stack([self.births, d], axis=1)

    def point(self, index: Sequence[int]) -> dict[str, float]:
        """The coordinates of a grid index, by dimension."""
        return {d: float(self.coords[d][int(i)]) for d, i in zip(self.dims, index, strict=True)}

    # -- structures -----------------------------------------------------------------------------
    def merge_tree(self, threshold: float | str | None = 0.0) -> MergeTree:
        """The join tree of the minima with persistence > ``threshold`` (0: all of them; ``None``: the
        result's threshold). A pruned minimum's subtree is absorbed into the component it joins (all its
        descendants are shallower than it: the elder rule)."""
        t = self.threshold if threshold is None else resolve_threshold(threshold, self.value_range)
        keep = self.persistence > t
        keep[0] = True
        rep = self._representatives(keep)
        leaves = np.flatnonzero(keep)
        events = leaves[1:][np.lexsort((leaves[1:], self.deaths[leaves[1:]]))]  # in order of death
        n_leaf, n_sad = leaves.size, events.size
        top = np.full(self.n_minima, -1, dtype=np.int64)
        top[leaves] = np.arange(n_leaf)
        top_l, rep_l, merged_l = top.tolist(), rep.tolist(), self.merged_into.tolist()
        parent = [-1] * (n_leaf + n_sad)
        for s, i in enumerate(events.tolist(), start=n_leaf):
            elder = rep_l[merged_l[i]]
            parent[top_l[elder]] = s
            parent[top_l[i]] = s
            top_l[elder] = s
        return MergeTree(
            ["minimum"] * n_leaf + ["saddle"] * n_sad,
            np.concatenate([self.births[leaves], self.deaths[events]]),
            np.concatenate([self.minima[leaves], self.saddles[events]]).reshape(-1, len(self.dims)),
            np.array(parent, dtype=np.int64),
            np.concatenate([leaves, np.full(n_sad, -1, dtype=np.int64)]),
            float(t),
        )

    def _representatives(self, keep: np.ndarray) -> np.ndarray:
        """[K] for every minimum the kept minimum it ends up in (itself when kept): follow ``merged_into``."""
        rep = np.arange(self.n_minima).tolist()
        merged = self.merged_into.tolist()
        for i in np.flatnonzero(~keep).tolist():  # the elder has a smaller id: one pass in order suffices
            rep[i] = rep[merged[i]]
        return np.array(rep, dtype=np.int64)

    def basin_map(self, threshold: float | str | None = None) -> np.ndarray:
        """[shape] id of the basin every cell belongs to: its steepest-descent minimum, merged (as in the
        merge tree) into the elder minimum while its persistence is at most ``threshold``."""
        t = self.threshold if threshold is None else resolve_threshold(threshold, self.value_range)
        keep = self.persistence > t
        keep[0] = True
        return self._representatives(keep)[self.labels]

    # -- output ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The numbers, without the per-minimum lists."""
        ds = self.deepest_spurious
        return {
            "metric": self.metric,
            "dims": list(self.dims),
            "shape": list(self.shape),
            "neighbourhood": self.neighbourhood,
            "n_neighbours": self.n_neighbours,
            "value_min": self.value_min,
            "value_max": self.value_max,
            "threshold": self.threshold,
            "n_minima": self.n_minima,
            "basins": self.basins,
            "deepest_spurious_depth": self.deepest_spurious_depth,
            "deepest_spurious": None if ds is None else {**self._minimum(ds)},
            "total_persistence": self.total_persistence,
            "roughness": self.roughness,
            "smoothness": self.smoothness,
            "global_minimum": self.point(self.minima[0]),
        }

    def _minimum(self, i: int) -> dict[str, Any]:
        glob = i == 0
        return {
            "id": int(i),
            "index": [int(v) for v in self.minima[i]],
            "coords": self.point(self.minima[i]),
            "birth": float(self.births[i]),
            "death": None if glob else float(self.deaths[i]),
            "persistence": None if glob else float(self.persistence[i]),
            "saddle_index": None if glob else [int(v) for v in self.saddles[i]],
            "saddle_coords": None if glob else self.point(self.saddles[i]),
            "merged_into": None if glob else int(self.merged_into[i]),
        }

    def to_dict(self, max_detail: int = 100) -> dict[str, Any]:
        """The summary; every (birth, death) pair (death ``None``: the global minimum, which never dies) with
        the grid indices of its minimum and saddle; and the ``max_detail`` most persistent basins above the
        threshold in detail (coordinates, saddle, the minimum each joins)."""
        pers = self.persistence
        big = np.flatnonzero(pers > self.threshold)
        big = big[np.argsort(-pers[big], kind="stable")][:max_detail]  # the global minimum (inf) first
        deaths: list = self.deaths.tolist()
        deaths[0] = None
        sad: list = self.saddles.tolist()
        sad[0] = None
        return {
            **self.summary(),
            "essential_death": "null: the global minimum's component never dies (+inf)",
            "pairs": [list(p) for p in zip(self.births.tolist(), deaths, strict=True)],
            "minima_index": self.minima.tolist(),
            "saddles_index": sad,
            "merged_into": self.merged_into.tolist(),
            "basin_minima": [self._minimum(int(i)) for i in big],
        }


def resolve_threshold(threshold: float | str | None, value_range: float) -> float:
    """A threshold in loss units: a number as it is, ``"P%"`` as P percent of the loss range, None as the
    default (1% of the range)."""
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if isinstance(threshold, str):
        text = threshold.strip()
        try:
            if text.endswith("%"):
                t = float(text[:-1]) / 100.0 * value_range
            else:
                t = float(text)
        except ValueError:
            raise UserError(
                f"threshold '{threshold}' must be a number (loss units) or a percentage of the loss range such as 1%"
            ) from None
    else:
        t = float(threshold)
    if not math.isfinite(t) or t < 0:
        raise UserError(f"the threshold must be a finite number >= 0; got {threshold!r}")
    return t


def persistence(
    result: Any,
    metric: str = "train_loss",
    *,
    coords: Mapping[str, Any] | Sequence[Any] | None = None,
    neighbourhood: int | str = "axis",
    threshold: float | str | None = None,
) -> TopologyResult:
    """Sublevel-set persistence, merge tree and basins of a grid result (see the module docstring).

    ``result``: an ``xarray.Dataset`` (``metric`` names the variable), a ``DataArray``, or an array
    (``coords``: a dict {dim: values} or one array per dimension; default indices). ``neighbourhood``:
    ``"axis"`` (default; 4 in 2-D, 2N in N-D) or ``"full"`` (8 in 2-D, the 3^N - 1 cells around).
    ``threshold``: loss units, or ``"P%"`` of the loss range (default 1%), for ``basins``.
    NaN cells (an unfinished sweep) and infinite cells are refused with a `UserError`.
    """
    values, dims, cs, name = _grid_values(result, metric, coords)
    _check_finite(values, name)
    kind = neighbourhood_kind(neighbourhood, values.ndim)
    raw = sublevel_persistence(values, kind)
    flat = values.reshape(-1)
    births = flat[raw.minima]
    deaths = np.where(raw.saddle >= 0, flat[np.maximum(raw.saddle, 0)], np.inf)
    keep = deaths > births  # zero persistence: a plateau running into a lower component, not a minimum
    keep[0] = True
    new = np.cumsum(keep) - 1
    rep_l, merged_l = np.arange(keep.size).tolist(), raw.merged_into.tolist()
    for i in np.flatnonzero(~keep).tolist():  # the elder has a smaller id: one pass in order
        rep_l[i] = rep_l[merged_l[i]]
    rep = np.array(rep_l, dtype=np.int64)
    kept = np.flatnonzero(keep)
    merged = np.where(raw.merged_into[kept] >= 0, new[rep[np.maximum(raw.merged_into[kept], 0)]], -1)
    vmin, vmax = float(flat.min()), float(flat.max())
    sad = raw.saddle[kept]
    saddles = np.stack(np.unravel_index(np.maximum(sad, 0), values.shape), axis=1).astype(np.int64)
    saddles[sad < 0] = -1
    return TopologyResult(
        metric=name,
        dims=dims,
        coords=cs,
        neighbourhood=kind,
        threshold=resolve_threshold(threshold, vmax - vmin),
        births=births[kept],
        deaths=deaths[kept],
        minima=np.stack(np.unravel_index(raw.minima[kept], values.shape), axis=1).astype(np.int64),
        saddles=saddles,
        merged_into=merged.astype(np.int64),
        value_min=vmin,
        value_max=vmax,
        values=values,
        labels=new[rep[raw.labels]].reshape(values.shape),
    )


__all__ = [
    "MergeTree",
    "NEIGHBOURHOODS",
    "TopologyResult",
    "neighbourhood_kind",
    "persistence",
    "resolve_threshold",
    "sublevel_persistence",
]

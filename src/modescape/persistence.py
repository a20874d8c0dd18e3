"""0-dimensional sublevel-set persistence of an array on its grid graph: the core of `modescape.topology`.

The algorithm (vectorised in numpy; a Python loop only over the merges): rank the cells by value; point
every cell at its lowest neighbour below it (steepest descent) and follow the pointers to a minimum by
pointer jumping, which labels every cell with the descent basin it belongs to. A descent basin below any
level is connected, so the sublevel components are unions of basins, joined by grid edges between
basins at level ``max(f(u), f(v))``. The minimum spanning tree of that basin graph (scipy) holds every
merge; a union-find over its edges in order, elder rule, gives the pairs and the merge tree. Cost: one
sort of the cells, a few passes over the neighbours and a loop over the minima (about 0.1 s for a
501 x 501 surface with a few hundred minima; see bench/topology.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UserError

NEIGHBOURHOODS = ("axis", "full")


def neighbourhood_kind(neighbourhood: int | str, ndim: int) -> str:
    """``"axis"`` or ``"full"`` from their names, or a neighbour count: ``2N`` (axis) or ``3^N - 1`` (full),
    so 4 and 8 in 2-D; a 1-D grid has one graph, which every spelling (2, 4, 8, axis, full) gives."""
    if isinstance(neighbourhood, str) and neighbourhood.strip().isdigit():
        neighbourhood = int(neighbourhood)
    if isinstance(neighbourhood, str) and neighbourhood in NEIGHBOURHOODS:
        return "axis" if ndim == 1 else neighbourhood
    if isinstance(neighbourhood, (int, np.integer)) and not isinstance(neighbourhood, bool):
        k = int(neighbourhood)
        if ndim == 1 and k in (2, 4, 8):
            return "axis"
        if k == 2 * ndim:
            return "axis"
        if k == 3**ndim - 1:
            return "full"
    raise UserError(
        f"unknown neighbourhood {neighbourhood!r} for a {ndim}-D grid: use axis or {2 * ndim} (the axis "
        f"neighbours), full or {3**ndim - 1} (every other cell of the 3^{ndim} block)"
    )


def _half_offsets(ndim: int, kind: str) -> list[tuple[int, ...]]:
    """One offset of each neighbour pair {o, -o} (the first nonzero entry positive)."""
    if kind == "axis":
        return [tuple(int(i == j) for j in range(ndim)) for i in range(ndim)]
    out = []
    for o in itertools.product((-1, 0, 1), repeat=ndim):
        nz = [v for v in o if v]
        if nz and nz[0] > 0:
            out.append(tuple(o))
    return out


def _pair_slices(o: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices a, b of an array such that ``arr[b]`` is the neighbour at offset o of ``arr[a]``."""
    a, b = [], []
    for v in o:
        a.append(slice(0, -1) if v > 0 else slice(1, None) if v < 0 else slice(None))
        b.append(slice(1, None) if v > 0 else slice(0, -1) if v < 0 else slice(None))
    return tuple(a), tuple(b)


# -- the union-find --------------------------------------------------------------------------------


@dataclass
class RawPersistence:
    """Every rank-minimum (zero persistence included), ids in birth order (0: the global minimum)."""

    order: np.ndarray  # [n] cells by rank
    minima: np.ndarray  # [M] flat index of each minimum
    saddle: np.ndarray  # [M] flat index of the cell where it dies (-1: never)
    merged_into: np.ndarray  # [M] the elder minimum it joins (-1: never)
    labels: np.ndarray  # [n] the descent basin (minimum id) of every cell


def sublevel_persistence(values: np.ndarray, neighbourhood: int | str = "axis") -> RawPersistence:
    """The core: 0-dimensional sublevel persistence of a finite array on its grid graph (see the module
    docstring for the method). Returns every minimum of the rank order, zero persistence included."""
    values = np.asarray(values, dtype=np.float64)
    shape, ndim, n = values.shape, values.ndim, values.size
    kind = neighbourhood_kind(neighbourhood, ndim)
    flat = values.reshape(-1)
    order = np.argsort(flat, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    rank_g = rank.reshape(shape)
    halves = _half_offsets(ndim, kind)
    strides = np.array([int(np.prod(shape[i + 1 :])) for i in range(ndim)], dtype=np.int64)

    # steepest descent: every cell points at its lowest-ranked neighbour below it (itself if none)
    padded = np.pad(rank_g, 1, constant_values=n)
    best = rank_g.copy()
    step = np.zeros(shape, dtype=np.int64)
    for o in halves:
        for s in (1, -1):
            oo = [s * v for v in o]
            nb = padded[tuple(slice(1 + v, 1 + v + m) for v, m in zip(oo, shape, strict=True))]
            lower = nb < best
            best = np.where(lower, nb, best)
            step[lower] = int(np.dot(oo, strides))
    parent = np.arange(n, dtype=np.int64) + step.reshape(-1)
    while True:  # pointer jumping: every cell to the minimum its descent ends in
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    is_min = parent == np.arange(n)
    minima = np.flatnonzero(is_min)
    minima = minima[np.argsort(rank[minima], kind="stable")]  # birth order: id 0 is the global minimum
    m = minima.size
    mid = np.empty(n, dtype=np.int64)
    mid[minima] = np.arange(m)
    labels = mid[parent]
    saddle = np.full(m, -1, dtype=np.int64)
    merged = np.full(m, -1, dtype=np.int64)
    if m == 1:
        return RawPersistence(order, minima, saddle, merged, labels)

    # edges between descent basins, each at the rank of its higher end; the lightest per pair of basins
    lab_g = labels.reshape(shape)
    us, vs, ws = [], [], []
    for o in halves:
        a, b = _pair_slices(o)
        la, lb = lab_g[a], lab_g[b]
        cross = la != lb
        if cross.any():
            us.append(la[cross])
            vs.append(lb[cross])
            ws.append(np.maximum(rank_g[a][cross], rank_g[b][cross]))
    u, v, w = np.concatenate(us), np.concatenate(vs), np.concatenate(ws)
    pair = np.minimum(u, v) * m + np.maximum(u, v)
    if m * m * n < 2**62:  # one sort of (basin pair, rank) keys
        key = np.sort(pair * n + w)
        pair, w = key // n, key % n
    else:
        by = np.lexsort((w, pair))
        pair, w = pair[by], w[by]
    first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])  # the lightest edge of each pair of basins
    lo, hi, w = pair[first] // m, pair[first] % m, w[first]

    # the merges lie on a minimum spanning tree of the basin graph; union-find over it, elder rule
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    mst = minimum_spanning_tree(coo_matrix((w.astype(np.float64) + 1.0, (lo, hi)), shape=(m, m))).tocoo()
    ew = np.rint(mst.data).astype(np.int64) - 1
    seq = np.lexsort((np.minimum(mst.row, mst.col), ew))
    root_l = list(range(m))  # union-find parents (plain lists: the loop is Python)

    def find(x: int) -> int:
        while root_l[x] != x:
            root_l[x] = root_l[root_l[x]]
            x = root_l[x]
        return x

    for a_, b_, r in zip(mst.row[seq].tolist(), mst.col[seq].tolist(), ew[seq].tolist(), strict=True):
        ra, rb = find(a_), find(b_)
        elder, younger = (ra, rb) if ra < rb else (rb, ra)  # ids are in birth order
        saddle[younger] = order[r]
        merged[younger] = elder
        root_l[younger] = elder
    return RawPersistence(order, minima, saddle, merged, labels)


__all__ = ["NEIGHBOURHOODS", "RawPersistence", "neighbourhood_kind", "sublevel_persistence"]

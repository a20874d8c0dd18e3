"""Figures of a landscape's topology (`modescape.topology.TopologyResult`).

* persistence diagram: one point (birth, death) per local minimum; the distance above the diagonal is
  its persistence; the global minimum, which never dies, sits on the dashed "inf" line; the dotted line
  is the basin threshold (points above it count as basins);
* merge tree: leaves are minima at their values, a horizontal bar is the saddle where two components
  join (the younger one dies there); pruned to the most persistent minima when there are too many;
* minima on the landscape: filled contours (2-D, quantile levels) or the curve (1-D) with the global
  minimum (star), the basins above the threshold (numbered circles, their saddles as crosses) and the
  other minima (dots).

Arrays are indexed [x, y] (the grid order of `modescape.landscape.Grid`); matplotlib wants [y, x], hence
``.T``. Every function draws on ``ax`` (or a new figure saved atomically to ``path``) and returns the axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import REFERENCE, figure, nice_levels, round_colorbar, save_figure


def _new(ax, figsize):
    if ax is not None:
        return ax, False
    _, ax = figure(figsize=figsize)  # the constrained layout: room for legends below and colorbars
    return ax, True


def _done(ax, own: bool, path) -> None:
    if own and path is not None:
        save_figure(ax.figure, path, dpi=120)


def _legend_below(ax, ncol: int = 2) -> None:
    """The legend under the axes, clear of the data (the layout makes room for it)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=ncol, fontsize=8, frameon=False)


def plot_persistence_diagram(topo, path: str | Path | None = None, ax=None, threshold: float | str | None = None):
    """Birth against death of every minimum, the diagonal, the threshold line and the essential pair."""
    from ..topology import resolve_threshold

    ax, own = _new(ax, (5.2, 5))
    t = topo.threshold if threshold is None else resolve_threshold(threshold, topo.value_range)
    lo, hi = topo.value_min, topo.value_max
    span = (hi - lo) or 1.0
    top = hi + 0.08 * span
    b, d = topo.births[1:], topo.deaths[1:]
    big = (d - b) > t
    ax.plot([lo, hi], [lo, hi], **{**REFERENCE, "ls": "-"})
    ax.plot([lo, hi], [lo + t, hi + t], ":", color="tab:red", lw=1, label=f"threshold {t:.3g}")
    ax.axhline(top, **{**REFERENCE, "ls": "--"})
    ax.text(hi, top, "inf ", va="bottom", ha="right", fontsize=8, color="0.3")
    ax.scatter(b[~big], d[~big], s=6, color="0.55", lw=0, label=f"below threshold ({int((~big).sum())})")
    ax.scatter(b[big], d[big], s=22, color="tab:blue", lw=0, label=f"basins ({int(big.sum())} + global)")
    ax.scatter(
        [topo.births[0]], [top], marker="*", s=140, color="gold", edgecolor="black", zorder=5, label="global minimum"
    )
    ax.set_xlim(lo - 0.04 * span, hi + 0.04 * span)
    ax.set_ylim(lo - 0.04 * span, top + 0.06 * span)
    ax.set_xlabel(f"birth ({topo.metric})")
    ax.set_ylabel("death")
    ax.set_title(
        f"persistence: {topo.n_minima} minima, {topo.basin_count(t)} basins, smoothness {topo.smoothness:.3f}",
        fontsize=10,
    )
    _legend_below(ax)
    _done(ax, own, path)
    return ax


def _tree_layout(tree) -> np.ndarray:
    """x position of every node: leaves in depth-first order from the root, the elder branch (the one
    holding the lower minimum) first, so the global minimum is on the left; inner nodes at the mean of
    their children."""
    n = tree.n_nodes
    kids: list[list[int]] = [[] for _ in range(n)]
    for c, p in enumerate(tree.parent.tolist()):
        if p >= 0:
            kids[p].append(c)
    order, stack = [], [tree.root]
    while stack:  # pre-order, iteratively (trees of noisy landscapes are deep)
        v = stack.pop()
        order.append(v)
        stack.extend(kids[v])
    low = tree.value.astype(np.float64).copy()  # the lowest minimum below each node: the elder branch
    for v in reversed(order):
        for c in kids[v]:
            low[v] = min(low[v], low[c])
    for k in kids:
        k.sort(key=lambda c: low[c])
    x = np.zeros(n)
    order, stack = [], [tree.root]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(reversed(kids[v]))
    leaf = 0
    for v in order:
        if not kids[v]:
            x[v] = leaf
            leaf += 1
    for v in reversed(order):  # children before parents
        if kids[v]:
            x[v] = float(np.mean([x[c] for c in kids[v]]))
    return x


def plot_merge_tree(
    topo, path: str | Path | None = None, ax=None, threshold: float | str | None = 0.0, max_leaves: int = 200
):
    """The join tree of the minima above ``threshold`` (default all); at most ``max_leaves`` leaves: the
    most persistent, the threshold raised to keep them (said in the title)."""
    from ..topology import resolve_threshold

    ax, own = _new(ax, (7, 4.6))
    t = topo.threshold if threshold is None else resolve_threshold(threshold, topo.value_range)
    note = ""
    pers = np.sort(topo.persistence[1:])[::-1]
    if 1 + int((pers > t).sum()) > max_leaves:
        t = float(pers[max_leaves - 1])  # keeps the max_leaves - 1 most persistent non-global minima
        note = f" (the {max_leaves} most persistent of {topo.n_minima})"
    tree = topo.merge_tree(t)
    x = _tree_layout(tree)
    y = tree.value
    segs = []
    for c, p in enumerate(tree.parent.tolist()):
        if p >= 0:
            segs.append([(x[c], y[c]), (x[c], y[p]), (x[p], y[p])])
    from matplotlib.collections import LineCollection

    ax.add_collection(LineCollection(segs, colors="tab:blue", linewidths=1.0))
    r = tree.root
    span = topo.value_range or 1.0
    ax.annotate(
        "",
        xy=(x[r], topo.value_max + 0.06 * span),
        xytext=(x[r], y[r]),
        arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 1.0},
    )
    leaves = np.array(tree.leaves, dtype=np.int64)
    glob = leaves[tree.minimum[leaves] == 0]
    ax.scatter(x[leaves], y[leaves], s=12, color="tab:blue", zorder=3)
    ax.scatter(x[glob], y[glob], marker="*", s=140, color="gold", edgecolor="black", zorder=4)
    if leaves.size <= 30:
        for v in leaves:
            ax.annotate(
                str(int(tree.minimum[v])),
                (x[v], y[v]),
                textcoords="offset points",
                xytext=(0, -11),
                ha="center",
                fontsize=7,
            )
    ax.set_xlim(-1, max(1.0, float(x.max()) + 1))
    ax.set_ylim(topo.value_min - 0.05 * span, topo.value_max + 0.1 * span)
    ax.set_xticks([])
    ax.set_ylabel(topo.metric)
    ax.set_title(f"merge tree: {leaves.size} minima with persistence > {t:.3g}{note}", fontsize=10)
    _done(ax, own, path)
    return ax


def plot_minima(
    topo, path: str | Path | None = None, ax=None, threshold: float | str | None = None, max_dots: int = 2000
):
    """The landscape (2-D filled contours, or the 1-D curve) with its minima marked; None for N-D > 2."""
    from ..topology import resolve_threshold

    nd = len(topo.dims)
    if nd > 2:
        return None
    ax, own = _new(ax, (6, 5) if nd == 2 else (7, 4))
    t = topo.threshold if threshold is None else resolve_threshold(threshold, topo.value_range)
    pers = topo.persistence
    big = np.flatnonzero(pers > t)  # the global minimum (inf) included
    small = np.flatnonzero(~(pers > t))
    if small.size > max_dots:
        small = small[np.argsort(-pers[small], kind="stable")[:max_dots]]
    axes = [topo.coords[d] for d in topo.dims]

    def at(idx):
        return [axes[k][idx[:, k]] for k in range(nd)]

    if nd == 2:
        z = topo.values
        levels, norm = nice_levels(z, 24)
        cs = ax.contourf(axes[0], axes[1], z.T, levels=levels, cmap="viridis", norm=norm)
        ax.contour(axes[0], axes[1], z.T, levels=levels, colors="k", linewidths=0.3, alpha=0.4, norm=norm)
        round_colorbar(ax.figure.colorbar(cs, ax=ax, label=topo.metric))
        ax.set_xlabel(topo.dims[0])
        ax.set_ylabel(topo.dims[1])
        sx, sy = at(topo.minima[small])
        ax.plot(sx, sy, ".", color="white", ms=3, alpha=0.8, label=f"other minima ({int((~(pers > t)).sum())})")
        spurious = big[big > 0]
        if spurious.size:
            bx, by = at(topo.minima[spurious])
            ax.plot(bx, by, "o", color="white", mec="black", ms=7, label=f"basins above {t:.3g}")
            qx, qy = at(topo.saddles[spurious])
            ax.plot(qx, qy, "x", color="red", ms=6, mew=1.5, label="their saddles")
            if spurious.size <= 30:
                for i, xx, yy in zip(spurious, bx, by, strict=True):
                    ax.annotate(
                        str(int(i)),
                        (xx, yy),
                        textcoords="offset points",
                        xytext=(5, 4),
                        fontsize=8,
                        color="white",
                        weight="bold",
                    )
        gx, gy = at(topo.minima[:1])
        ax.plot(gx, gy, "*", color="gold", mec="black", ms=15, label="global minimum")
    else:
        c = axes[0]
        ax.plot(c, topo.values, color="tab:blue", lw=1.2)
        for ids, style, label in (
            (small, dict(marker=".", color="0.4", ms=5), "other minima"),
            (big[big > 0], dict(marker="o", color="white", mec="black", ms=7), f"basins above {t:.3g}"),
            (np.array([0]), dict(marker="*", color="gold", mec="black", ms=14), "global minimum"),
        ):
            if ids.size:
                ax.plot(c[topo.minima[ids, 0]], topo.births[ids], ls="none", label=label, **style)
        ax.set_xlabel(topo.dims[0])
        ax.set_ylabel(topo.metric)
    _legend_below(ax)
    ax.set_title(
        f"{topo.metric}: {topo.basin_count(t)} basins, deepest spurious {topo.deepest_spurious_depth:.3g}", fontsize=10
    )
    _done(ax, own, path)
    return ax


def plot_topology(topo, out_dir: str | Path, prefix: str | None = None) -> list[Path]:
    """Write the persistence diagram, the merge tree and (1-D, 2-D) the minima on the landscape into
    ``out_dir`` as ``{prefix}_persistence.png``, ``_merge_tree.png``, ``_minima.png`` (prefix: the metric)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or topo.metric
    paths = [out / f"{prefix}_persistence.png", out / f"{prefix}_merge_tree.png"]
    plot_persistence_diagram(topo, paths[0])
    plot_merge_tree(topo, paths[1])
    if len(topo.dims) <= 2:
        paths.append(out / f"{prefix}_minima.png")
        plot_minima(topo, paths[2])
    return paths


def plot_topology_panel(topo, path: str | Path, title: str | None = None) -> Path:
    """The three figures side by side in one file (the minima panel only for 1-D and 2-D grids)."""
    nd = len(topo.dims)
    n = 3 if nd <= 2 else 2
    fig, axes = figure(1, n, figsize=(5.6 * n, 5.2), gridspec_kw={"width_ratios": [1.2, 1.3, 1][-n:]})
    if nd <= 2:
        plot_minima(topo, ax=axes[0])
    plot_merge_tree(topo, ax=axes[-2])
    plot_persistence_diagram(topo, ax=axes[-1])
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=110)


__all__ = ["plot_merge_tree", "plot_minima", "plot_persistence_diagram", "plot_topology", "plot_topology_panel"]

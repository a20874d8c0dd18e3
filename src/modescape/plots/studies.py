"""The figures of the studies (`modescape.studies`): series against a shared x in side-by-side panels, and the
train loss along swap paths. Studies arrange what they measured; the drawing and the one atomic save are here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import REFERENCE, figure, legend_outside, save_figure, series_styles


def plot_series(
    path: str | Path,
    panels: Sequence[Mapping[str, Any]],
    title: str | None = None,
    width: float = 4.4,
    height: float = 3.5,
) -> Path:
    """One figure of ``panels`` side by side, each ``{"series": [{"label", "x", "y", "style"?}], "xlabel",
    "ylabel", "logx"?, "logy"?, "refs"?: [{"y", "label"}], "vline"?: x}``: a colour and marker per series
    (`modescape.plots.base.series_styles`), reference lines grey and dotted, the legend below."""
    fig, axes = figure(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    handles: dict[str, Any] = {}
    labels_all = []
    for p in panels:
        for s in p["series"]:
            if s["label"] not in labels_all:
                labels_all.append(s["label"])
    styles = dict(zip(labels_all, series_styles(len(labels_all)), strict=True))
    for ax, p in zip(axes[0], panels, strict=True):
        for s in p["series"]:
            st = styles[s["label"]]
            ls = s.get("style", "-")
            (h,) = ax.plot(
                s["x"],
                s["y"],
                ls=ls,
                color=st["color"],
                marker=st["marker"],
                ms=3.5,
                lw=1.5,
                label=s["label"],
                markevery=max(1, len(s["x"]) // 12),
            )
            handles.setdefault(s["label"], h)
        for ref in p.get("refs", []):
            ax.axhline(ref["y"], **{**REFERENCE, "ls": ref.get("style", REFERENCE["ls"])})
            ax.annotate(
                ref["label"],
                (0.01, ref["y"]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="0.35",
                va="bottom",
            )
        if p.get("vline") is not None:
            ax.axvline(p["vline"], **REFERENCE)
        if p.get("logx"):
            ax.set_xscale("log", base=p.get("logx_base", 10))
        if p.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(p.get("ylabel", ""))
        if p.get("title"):
            ax.set_title(p["title"], fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_outside(fig, list(handles.values()), list(handles), where="below", fontsize=8)
    return save_figure(fig, path)


def plot_swap_losses(swaps, start, path, title) -> Path:
    """The train loss along several swap paths (``{label: {"t", "loss", "i", "j", "eigenvalues"}}``) with the
    smallest Hessian eigenvalue at each midpoint, and at A (``start``) in the title."""

    fig, ax = figure(figsize=(6.0, 4.2))
    for st, (label, s) in zip(series_styles(len(swaps)), swaps.items(), strict=True):
        ax.plot(
            s["t"],
            s["loss"],
            "-",
            marker=st["marker"],
            color=st["color"],
            ms=3,
            label=f"{label} ({s['i']}, {s['j']}): min eig at t=1/2 {s['eigenvalues'][0]:.3g}",
        )
    ax.axvline(0.5, **REFERENCE)
    ax.set_title(f"{title}; min Hessian eig at A: {start[0]:.3g}", fontsize=9)
    ax.set_xlabel("t  (0: model A, 1: the two units swapped)")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    legend_outside(fig, where="below", ncol=1, handles=ax.get_lines()[: len(swaps)])
    return save_figure(fig, path)


def plot_density_overlay(densities: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Several spectral densities (`modescape.curvature.Density`, by label) on one axis."""
    from .curvature import plot_density

    fig, ax = figure(figsize=(6, 4))
    for label, dens in densities.items():
        plot_density(dens, ax=ax)
        ax.lines[-1].set_label(label)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_minima_grid(rows: Sequence[Sequence[tuple[str, Any]]], path: str | Path) -> Path:
    """A grid of `modescape.plots.topology.plot_minima` panels: ``rows`` of ``(title, TopologyResult)``."""
    from .topology import plot_minima

    n_cols = max(len(r) for r in rows)
    fig, axes = figure(len(rows), n_cols, figsize=(4.4 * n_cols, 3.8 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, (title, topo) in enumerate(row):
            plot_minima(topo, ax=axes[i][j])
            axes[i][j].set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_map_grid(
    x: Sequence[float], rows: Sequence[Sequence[tuple[str, Any]]], path: str | Path, label: str, cmap: str = "magma"
) -> Path:
    """A grid of maps on one colour scale (from 0): ``rows`` of ``(title, values indexed [x][y])`` over the square
    grid ``x`` by ``x``, with one colour bar labelled ``label``."""
    import numpy as np

    from .base import round_colorbar

    n_cols = max(len(r) for r in rows)
    vmax = max(float(np.nanmax(np.asarray(v, dtype=float))) for r in rows for _, v in r)
    fig, axes = figure(len(rows), n_cols, figsize=(4.0 * n_cols + 1.0, 3.4 * len(rows)), squeeze=False)
    im = None
    for i, row in enumerate(rows):
        for j, (title, values) in enumerate(row):
            im = axes[i][j].pcolormesh(
                x, x, np.asarray(values, dtype=float).T, cmap=cmap, shading="nearest", vmin=0, vmax=vmax
            )
            axes[i][j].set_title(title, fontsize=9)
    round_colorbar(fig.colorbar(im, ax=axes, label=label))
    return save_figure(fig, path)


__all__ = ["plot_density_overlay", "plot_map_grid", "plot_minima_grid", "plot_series", "plot_swap_losses"]

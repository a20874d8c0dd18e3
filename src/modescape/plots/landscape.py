"""Figures of landscape results (``xarray.Dataset`` from `modescape.landscape`).

* 1-D (dim ``t``): loss on the left axis and accuracy on the right, train solid and test dashed.
* 2-D (dims ``x``, ``y``): contour lines, filled contours, heatmap and 3-D surface (matplotlib PNG);
  models (``attrs["models"]``: labels and (x, y)) and a trajectory (``attrs["path"]``: [T, 2]) are
  drawn on the contour plots; convexity maps as ``|lambda_min / lambda_max|``.
* Interactive: plotly surface and contour side by side in one self-contained HTML file (plotly.js
  inlined, so it opens offline).
* VTK: a legacy-format structured grid (``.vtk``, ASCII) with the surface as z and the value as a
  point scalar, for ParaView.

Every function takes the Dataset and a path (or folder) and returns the paths it wrote. Arrays are
indexed [x, y] (the grid order of `modescape.landscape.Grid`); matplotlib wants [y, x], hence ``.T``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ..errors import UserError
from .base import pyplot as _plt
from .base import save_figure, save_html, save_text


def _levels(z: np.ndarray, n: int = 30) -> np.ndarray:
    """Contour levels: log-spaced when the values are positive and span more than a decade."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise UserError("nothing to plot: every value is NaN or infinite (an unfinished sweep, or a loss that is "
                        "not finite at these points: check the checkpoint's own loss)")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.array([lo - 1e-12, lo + 1e-12])
    if lo > 0 and hi / lo > 10:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


def _markers(ds: xr.Dataset) -> tuple[list[tuple[str, float, float]], np.ndarray | None]:
    models = ds.attrs.get("models")
    pts: list[tuple[str, float, float]] = []
    if isinstance(models, str):
        models = json.loads(models)
    if models:
        for label, (mx, my) in zip(models["labels"], models["coords"]):
            pts.append((str(label), float(mx), float(my)))
    path = ds.attrs.get("path")
    return pts, (np.asarray(path, dtype=np.float64) if path is not None and len(path) else None)


def _decorate(ax, ds: xr.Dataset) -> None:
    pts, path = _markers(ds)
    if path is not None:
        ax.plot(path[:, 0], path[:, 1], "-o", color="crimson", ms=3, lw=1.2, label="trajectory")
        ax.plot(path[-1, 0], path[-1, 1], "*", color="crimson", ms=12)
    for label, mx, my in pts:
        ax.plot(mx, my, "o", color="white", mec="black", ms=8)
        ax.annotate(label, (mx, my), textcoords="offset points", xytext=(6, 6), fontsize=10, weight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75, "lw": 0})
    if path is not None:
        ax.legend(loc="upper right", fontsize=8)


def _axis_labels(ds: xr.Dataset) -> tuple[str, str]:
    pca = ds.attrs.get("explained_variance")
    if pca:
        return f"PC1 ({100 * pca[0]:.1f}% var.)", f"PC2 ({100 * pca[1]:.1f}% var.)"
    return "x", "y"


def plot_line(ds: xr.Dataset, path: str | Path, title: str | None = None) -> Path:
    """Loss (left axis) and accuracy (right axis) along a line, train solid and test dashed."""
    plt = _plt()
    dim = list(ds.dims)[0]
    t = ds[dim].values
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax2 = None
    colors = {"loss": "tab:blue", "accuracy": "tab:red", "error": "tab:red"}
    lines = []
    for split in ("train", "test", ""):
        style = "--" if split == "test" else "-"
        for metric in ("loss", "accuracy", "error"):
            name = f"{split}_{metric}" if split else metric
            if name not in ds:
                continue
            target = ax if metric == "loss" else (ax2 or ax.twinx())
            if metric != "loss":
                ax2 = target
            lines += target.plot(t, ds[name].values, style, color=colors[metric], label=name.replace("_", " "))
    ax.set_xlabel(dim)
    ax.set_ylabel("loss", color="tab:blue")
    if ax2 is not None:
        ax2.set_ylabel("accuracy", color="tab:red")
    for end in (0.0, 1.0):
        if t.min() <= end <= t.max() and ds.attrs.get("family", {}).get("family") == "Line":
            ax.axvline(end, color="gray", lw=0.6, ls=":")
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    ax.set_title(title or "loss and accuracy along the line")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_surface(ds: xr.Dataset, out_dir: str | Path, var: str = "train_loss", prefix: str | None = None,
                 kinds: Sequence[str] = ("contour", "contourf", "heatmap", "surface")) -> list[Path]:
    """Contour lines, filled contours, heatmap and 3-D surface of ``var`` as ``{prefix}_{kind}.png``."""
    plt = _plt()
    if var not in ds:
        raise UserError(f"the result has no variable '{var}'; it has {', '.join(map(str, ds.data_vars))}")
    xd, yd = list(ds[var].dims)
    x, y, z = ds[xd].values, ds[yd].values, ds[var].values  # z [x, y]
    xl, yl = _axis_labels(ds)
    out_dir = Path(out_dir)
    prefix = prefix or var
    written = []
    levels = _levels(z)
    for kind in kinds:
        if kind == "surface":
            fig = plt.figure(figsize=(6.4, 5.2))
            ax = fig.add_subplot(projection="3d")
            gx, gy = np.meshgrid(x, y, indexing="ij")
            ax.plot_surface(gx, gy, z, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel(var)
        else:
            fig, ax = plt.subplots(figsize=(6.0, 5.0))
            if kind == "contour":
                cs = ax.contour(x, y, z.T, levels=levels, cmap="viridis")
                ax.clabel(cs, cs.levels[::4], inline=True, fontsize=7, fmt="%.3g")
            elif kind == "contourf":
                cs = ax.contourf(x, y, z.T, levels=levels, cmap="viridis")
                fig.colorbar(cs, ax=ax, label=var)
            elif kind == "heatmap":
                im = ax.pcolormesh(x, y, z.T, cmap="viridis", shading="nearest")
                fig.colorbar(im, ax=ax, label=var)
            else:
                raise UserError(f"unknown plot kind '{kind}': use contour, contourf, heatmap or surface")
            _decorate(ax, ds)
            ax.set_aspect("auto")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{var} ({kind})")
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / f"{prefix}_{kind}.png", dpi=100))
    return written


def plot_convexity(ds: xr.Dataset, path: str | Path) -> Path:
    """Heatmap of ``|lambda_min / lambda_max|`` (Li et al. 2018, fig. 7)."""
    plt = _plt()
    xd, yd = list(ds["convexity_ratio"].dims)
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    im = ax.pcolormesh(ds[xd].values, ds[yd].values, ds["convexity_ratio"].values.T, cmap="magma", shading="nearest")
    fig.colorbar(im, ax=ax, label="|lambda_min / lambda_max|")
    _decorate(ax, ds)
    ax.set_xlabel(xd)
    ax.set_ylabel(yd)
    ax.set_title("convexity map")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_html(ds: xr.Dataset, path: str | Path, var: str = "train_loss", title: str | None = None) -> Path:
    """One self-contained HTML file: interactive 3-D surface and contour of ``var`` (2-D), or the curves (1-D)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    dims = list(ds[var].dims)
    if len(dims) == 1:
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        t = ds[dims[0]].values
        for name in ds.data_vars:
            if ds[name].dims != (dims[0],):
                continue
            fig.add_trace(go.Scatter(x=t, y=ds[name].values, name=str(name),
                                     line={"dash": "dash" if str(name).startswith("test") else "solid"}),
                          secondary_y=not str(name).endswith("loss"))
        fig.update_xaxes(title_text=dims[0])
        fig.update_yaxes(title_text="loss", secondary_y=False)
        fig.update_yaxes(title_text="accuracy", secondary_y=True)
    else:
        x, y, z = ds[dims[0]].values, ds[dims[1]].values, ds[var].values
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]],
                            subplot_titles=(f"{var}: surface", f"{var}: contour"))
        fig.add_trace(go.Surface(x=x, y=y, z=z.T, colorscale="Viridis", showscale=False, name=var), row=1, col=1)
        fig.add_trace(go.Contour(x=x, y=y, z=z.T, colorscale="Viridis", ncontours=30, name=var,
                                 colorbar={"title": var}), row=1, col=2)
        pts, traj = _markers(ds)
        if traj is not None:
            fig.add_trace(go.Scatter(x=traj[:, 0], y=traj[:, 1], mode="lines+markers", name="trajectory",
                                     line={"color": "crimson"}), row=1, col=2)
        if pts:
            fig.add_trace(go.Scatter(x=[p[1] for p in pts], y=[p[2] for p in pts], mode="markers+text",
                                     text=[p[0] for p in pts], textposition="top right", name="models",
                                     marker={"color": "white", "size": 10, "line": {"color": "black", "width": 1}}),
                          row=1, col=2)
    fig.update_layout(title=title or f"modescape: {var}", height=560, width=1150)
    return save_html(fig, path)


def export_vtk(ds: xr.Dataset, path: str | Path, var: str = "train_loss", log: bool = False,
               zmax: float | None = None) -> Path:
    """A legacy VTK structured grid (ASCII) of ``var`` over (x, y), z = value (log10 when ``log``), for ParaView."""
    dims = list(ds[var].dims)
    if len(dims) != 2:
        raise UserError("VTK export needs a 2-D result (a plane); this one is 1-D")
    x, y, z = ds[dims[0]].values, ds[dims[1]].values, np.array(ds[var].values, dtype=np.float64)
    if zmax is not None:
        z = np.minimum(z, zmax)
    if log:
        z = np.log10(np.maximum(z, 1e-12))
    nx, ny = len(x), len(y)
    lines = ["# vtk DataFile Version 3.0", f"modescape {var}", "ASCII", "DATASET STRUCTURED_GRID",
             f"DIMENSIONS {nx} {ny} 1", f"POINTS {nx * ny} double"]
    # VTK order: x fastest
    for j in range(ny):
        for i in range(nx):
            lines.append(f"{x[i]:.9g} {y[j]:.9g} {z[i, j]:.9g}")
    lines += [f"POINT_DATA {nx * ny}", f"SCALARS {var} double 1", "LOOKUP_TABLE default"]
    for j in range(ny):
        for i in range(nx):
            lines.append(f"{z[i, j]:.9g}")
    return save_text("\n".join(lines) + "\n", path)


def plot_result(ds: xr.Dataset, out_dir: str | Path, vtk: bool = False, var: str | None = None) -> list[Path]:
    """Every figure that fits the result into ``out_dir``: PNGs, ``landscape.html`` and optionally ``.vtk``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    data_vars = [str(v) for v in ds.data_vars]
    if "convexity_ratio" in data_vars:
        written.append(plot_convexity(ds, out_dir / "convexity.png"))
        var = var or "lambda_max"
    var = var or next((v for v in ("train_loss", "loss", "test_loss") if v in data_vars), data_vars[0])
    if var not in data_vars:
        raise UserError(f"no variable '{var}' in this result; it has {', '.join(data_vars)}")
    short = {d: int(ds.sizes[d]) for d in ds[var].dims if ds.sizes[d] < 2}
    if short:
        raise UserError(f"a figure needs at least 2 points along each axis; this result has "
                        f"{', '.join(f'{n} along {d}' for d, n in short.items())}")
    if len(ds[var].dims) == 1:
        written.append(plot_line(ds, out_dir / "line.png"))
    else:
        for v in [var] + [w for w in ("test_loss", "train_accuracy", "test_accuracy") if w in data_vars and w != var]:
            kinds = ("contour", "contourf", "heatmap", "surface") if v == var else ("contourf",)
            written += plot_surface(ds, out_dir, v, kinds=kinds)
        if vtk:
            written.append(export_vtk(ds, out_dir / f"{var}.vtk", var))
    written.append(write_html(ds, out_dir / "landscape.html", var))
    return written

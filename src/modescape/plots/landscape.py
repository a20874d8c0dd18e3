"""Figures of landscape results (``xarray.Dataset`` from `modescape.landscape`).

* 1-D (dim ``t``): loss on the left axis and accuracy on the right, train solid and test dashed.
* 2-D (dims ``x``, ``y``): contour lines, filled contours, heatmap and 3-D surface (matplotlib PNG);
  models (``attrs["models"]``: labels and (x, y)) and a trajectory (``attrs["path"]``: [T, 2]) are
  drawn on the contour plots; convexity maps as ``|lambda_min / lambda_max|``.
* Interactive: plotly surface and contour side by side in one HTML page, which loads the
  ``plotly.min.js`` written once beside it (no CDN: it opens offline).
* VTK: a legacy-format structured grid (``.vtk``, ASCII) with the surface as z and the value as a
  point scalar, for ParaView.

Every function takes the Dataset and a path (or folder) and returns the paths it wrote. Titles name the
runs compared (``labels=``, else the checkpoints in the result's provenance, via `base.run_names`). Arrays are
indexed [x, y] (the grid order of `modescape.landscape.Grid`); matplotlib wants [y, x], hence ``.T``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import UserError
from .base import (
    REFERENCE,
    compared,
    figure,
    labels_of,
    legend_outside,
    nice_levels,
    plotly_dash,
    round_colorbar,
    run_names,
    save_figure,
    save_html,
    save_text,
    split_style,
)
from .base import pyplot as _plt


def _levels(z: np.ndarray, n: int = 20) -> np.ndarray:
    """Contour levels on round numbers (`base.nice_levels`): log-spaced when the values are positive and span
    more than a decade."""
    return nice_levels(z, n)[0]


def _attr_list(ds: xr.Dataset, key: str) -> list | None:
    value = ds.attrs.get(key)
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) and len(value) else None


def _markers(ds: xr.Dataset) -> tuple[list[tuple[str, float, float]], np.ndarray | None]:
    models = ds.attrs.get("models")
    pts: list[tuple[str, float, float]] = []
    if isinstance(models, str):
        models = json.loads(models)
    if models:
        for label, (mx, my) in zip(models["labels"], models["coords"], strict=True):
            pts.append((str(label), float(mx), float(my)))
    path = ds.attrs.get("path")
    return pts, (np.asarray(path, dtype=np.float64) if path is not None and len(path) else None)


def _runs(ds: xr.Dataset, labels: Sequence | None = None) -> list[str]:
    """The names of the runs a result compares: ``labels`` (strings as given, paths shortened together), else
    the trajectory's run folder or the checkpoints in the result's provenance, shortened by `base.run_names`."""
    if labels is not None:
        return labels_of(labels) or []
    if ds.attrs.get("run_dir"):
        return run_names([str(ds.attrs["run_dir"])])
    ckpts = _attr_list(ds, "checkpoints")
    return run_names([str(c) for c in ckpts]) if ckpts else []


def _subject(ds: xr.Dataset, labels: Sequence | None = None) -> str:
    """What a landscape result is of, for titles: ``a -> b`` (a line), ``A = a, B = b, C = c`` (a plane
    through models), ``around a`` (random directions), ``trajectory of runs/a``."""
    names = _runs(ds, labels)
    if not names:
        return ""
    if ds.attrs.get("run_dir") and labels is None:
        return f"trajectory of {names[0]}"
    if len(names) == 1:
        return f"around {names[0]}"
    pts, _ = _markers(ds)
    if len(pts) == len(names) and len(names) > 2:
        return ", ".join(f"{p[0]} = {n}" for p, n in zip(pts, names, strict=True))
    return compared(names)


def _title(what: str, subject: str) -> str:
    return f"{what}: {subject}" if subject else what


def _decorate(ax, ds: xr.Dataset) -> None:
    pts, path = _markers(ds)
    if path is not None:
        ax.plot(path[:, 0], path[:, 1], "-o", color="crimson", ms=3, lw=1.2, label="trajectory")
        ax.plot(path[-1, 0], path[-1, 1], "*", color="crimson", ms=12)
    for label, mx, my in pts:
        ax.plot(mx, my, "o", color="white", mec="black", ms=8)
        ax.annotate(
            label,
            (mx, my),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=10,
            weight="bold",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75, "lw": 0},
        )
    if path is not None:
        ax.legend(loc="upper right", fontsize=8)


def _axis_labels(ds: xr.Dataset) -> tuple[str, str]:
    named = ds.attrs.get("axis_labels")  # e.g. Hessian eigenvectors with their eigenvalues
    if named and len(named) == 2:
        return str(named[0]), str(named[1])
    pca = ds.attrs.get("explained_variance")
    if pca:
        return f"PC1 ({100 * pca[0]:.1f}% var.)", f"PC2 ({100 * pca[1]:.1f}% var.)"
    return "x", "y"


def plot_line(ds: xr.Dataset, path: str | Path, title: str | None = None, labels: Sequence | None = None) -> Path:
    """Loss (left axis) and accuracy (right axis) along a line, train solid and test dashed (`base.split_style`),
    the legend below the axes. The title names the runs: ``labels`` (e.g. ``(Path(a), Path(b))``), else the
    checkpoints in the result's provenance."""
    dim = list(ds.dims)[0]
    t = ds[dim].values
    fig, ax = figure(figsize=(6.4, 4.6))
    ax2 = None
    colors = {"loss": "tab:blue", "accuracy": "tab:red", "error": "tab:red"}
    lines = []
    for split in ("train", "test", ""):
        for metric in ("loss", "accuracy", "error"):
            name = f"{split}_{metric}" if split else metric
            if name not in ds:
                continue
            target = ax if metric == "loss" else (ax2 or ax.twinx())
            if metric != "loss":
                ax2 = target
            lines += target.plot(
                t, ds[name].values, split_style(name), color=colors[metric], label=name.replace("_", " ")
            )
    names = _runs(ds, labels)
    pts, _ = _markers(ds)
    family = ds.attrs.get("family")
    ends = len(names) == 2 or len(pts) == 2 or (isinstance(family, dict) and family.get("family") == "Line")
    ax.set_xlabel(f"{dim}  ({names[0]} at 0, {names[1]} at 1)" if len(names) == 2 and dim == "t" else dim)
    ax.set_ylabel("loss", color="tab:blue")
    if ax2 is not None:
        ax2.set_ylabel("accuracy", color="tab:red")
    for end in (0.0, 1.0):
        if ends and t.min() <= end <= t.max():
            ax.axvline(end, **REFERENCE)
    legend_outside(fig, lines, where="below", ncol=min(len(lines), 4))
    ax.set_title(title or _title("loss and accuracy along the line", _subject(ds, labels)), fontsize=10)
    return save_figure(fig, path)


def plot_surface(
    ds: xr.Dataset,
    out_dir: str | Path,
    var: str = "train_loss",
    prefix: str | None = None,
    kinds: Sequence[str] = ("contour", "contourf", "heatmap", "surface"),
    labels: Sequence | None = None,
) -> list[Path]:
    """Contour lines, filled contours, heatmap and 3-D surface of ``var`` as ``{prefix}_{kind}.png``: levels
    and colorbar ticks on round numbers (log-spaced when positive values span more than a decade), titles
    naming the runs (``labels``, else the result's checkpoints)."""
    from matplotlib.colors import LogNorm

    plt = _plt()
    if var not in ds:
        raise UserError(f"the result has no variable '{var}'; it has {', '.join(map(str, ds.data_vars))}")
    xd, yd = list(ds[var].dims)
    x, y, z = ds[xd].values, ds[yd].values, ds[var].values  # z [x, y]
    xl, yl = _axis_labels(ds)
    out_dir = Path(out_dir)
    prefix = prefix or var
    subject = _subject(ds, labels)
    written = []
    levels, norm = nice_levels(z)
    for kind in kinds:
        if kind == "surface":
            fig = plt.figure(figsize=(6.4, 5.4), layout="constrained")
            ax = fig.add_subplot(projection="3d")
            gx, gy = np.meshgrid(x, y, indexing="ij")
            ax.plot_surface(gx, gy, z, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel(var)
            ax.set_box_aspect(None, zoom=0.85)  # room for the axis labels
        else:
            fig, ax = figure(figsize=(6.0, 5.0))
            if kind == "contour":
                cs = ax.contour(x, y, z.T, levels=levels, cmap="viridis", norm=norm)
                ax.clabel(cs, cs.levels[:: max(1, len(cs.levels) // 6)], inline=True, fontsize=7, fmt="%g")
            elif kind == "contourf":
                cs = ax.contourf(x, y, z.T, levels=levels, cmap="viridis", norm=norm)
                round_colorbar(fig.colorbar(cs, ax=ax, label=var))
            elif kind == "heatmap":
                hnorm = LogNorm(vmin=float(levels[0]), vmax=float(levels[-1])) if norm is not None else None
                im = ax.pcolormesh(x, y, z.T, cmap="viridis", shading="nearest", norm=hnorm)
                round_colorbar(fig.colorbar(im, ax=ax, label=var))
            else:
                raise UserError(f"unknown plot kind '{kind}': use contour, contourf, heatmap or surface")
            _decorate(ax, ds)
            ax.set_aspect("auto")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(_title(f"{var} ({kind})", subject), fontsize=10)
        written.append(save_figure(fig, out_dir / f"{prefix}_{kind}.png", dpi=100))
    return written


def plot_convexity(ds: xr.Dataset, path: str | Path, labels: Sequence | None = None) -> Path:
    """Heatmap of ``|lambda_min / lambda_max|`` (Li et al. 2018, fig. 7), colorbar ticks on round values."""
    xd, yd = list(ds["convexity_ratio"].dims)
    fig, ax = figure(figsize=(6.0, 5.0))
    im = ax.pcolormesh(ds[xd].values, ds[yd].values, ds["convexity_ratio"].values.T, cmap="magma", shading="nearest")
    round_colorbar(fig.colorbar(im, ax=ax, label="|lambda_min / lambda_max|"))
    _decorate(ax, ds)
    ax.set_xlabel(xd)
    ax.set_ylabel(yd)
    ax.set_title(_title("convexity map", _subject(ds, labels)), fontsize=10)
    return save_figure(fig, path, dpi=100)


def write_html(
    ds: xr.Dataset,
    path: str | Path,
    var: str = "train_loss",
    title: str | None = None,
    labels: Sequence | None = None,
    plotlyjs: str | Path | None = None,
) -> Path:
    """An HTML page: interactive 3-D surface and contour of ``var`` (2-D), or the curves (1-D, train solid and
    test dashed). The camera shows the whole surface with its axis titles. The page loads ``plotly.min.js``
    from the folder ``plotlyjs`` (default: its own; written there once, so the pages of a result share it and
    open offline; ``"inline"``: one self-contained page)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    dims = list(ds[var].dims)
    subject = _subject(ds, labels)
    if len(dims) == 1:
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        t = ds[dims[0]].values
        for name in ds.data_vars:
            if ds[name].dims != (dims[0],):
                continue
            fig.add_trace(
                go.Scatter(x=t, y=ds[name].values, name=str(name), line={"dash": plotly_dash(str(name))}),
                secondary_y=not str(name).endswith("loss"),
            )
        fig.update_xaxes(title_text=dims[0])
        fig.update_yaxes(title_text="loss", secondary_y=False)
        fig.update_yaxes(title_text="accuracy", secondary_y=True)
        fig.update_layout(height=560, width=1000)
    else:
        xl, yl = _axis_labels(ds)
        x, y, z = ds[dims[0]].values, ds[dims[1]].values, ds[var].values
        fig = make_subplots(
            rows=1,
            cols=2,
            specs=[[{"type": "surface"}, {"type": "xy"}]],
            column_widths=[0.55, 0.45],
            horizontal_spacing=0.06,
            subplot_titles=(f"{var}: surface", f"{var}: contour"),
        )
        fig.add_trace(go.Surface(x=x, y=y, z=z.T, colorscale="Viridis", showscale=False, name=var), row=1, col=1)
        fig.add_trace(
            go.Contour(
                x=x, y=y, z=z.T, colorscale="Viridis", ncontours=30, name=var, colorbar={"title": {"text": var}}
            ),
            row=1,
            col=2,
        )
        pts, traj = _markers(ds)
        if traj is not None:
            fig.add_trace(
                go.Scatter(
                    x=traj[:, 0], y=traj[:, 1], mode="lines+markers", name="trajectory", line={"color": "crimson"}
                ),
                row=1,
                col=2,
            )
        if pts:
            fig.add_trace(
                go.Scatter(
                    x=[p[1] for p in pts],
                    y=[p[2] for p in pts],
                    mode="markers+text",
                    text=[p[0] for p in pts],
                    textposition="top right",
                    name="models",
                    marker={"color": "white", "size": 10, "line": {"color": "black", "width": 1}},
                ),
                row=1,
                col=2,
            )
        # the whole surface in view, its axes titled: a fixed box (z flatter than x, y) seen from a little
        # further out than plotly's default eye (1.25, 1.25, 1.25)
        fig.update_scenes(
            xaxis_title_text=xl,
            yaxis_title_text=yl,
            zaxis_title_text=var,
            aspectmode="manual",
            aspectratio={"x": 1.0, "y": 1.0, "z": 0.7},
            camera={
                "eye": {"x": 1.55, "y": -1.55, "z": 1.05},
                "center": {"x": 0, "y": 0, "z": -0.1},
                "up": {"x": 0, "y": 0, "z": 1},
            },
        )
        fig.update_xaxes(title_text=xl, row=1, col=2)
        fig.update_yaxes(title_text=yl, row=1, col=2)
        fig.update_layout(height=620, width=1250, margin={"l": 10, "r": 10, "t": 80, "b": 40})
    fig.update_layout(title={"text": title or _title(f"modescape: {var}", subject)})
    return save_html(fig, path, plotlyjs)


def export_vtk(
    ds: xr.Dataset, path: str | Path, var: str = "train_loss", log: bool = False, zmax: float | None = None
) -> Path:
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
    lines = [
        "# vtk DataFile Version 3.0",
        f"modescape {var}",
        "ASCII",
        "DATASET STRUCTURED_GRID",
        f"DIMENSIONS {nx} {ny} 1",
        f"POINTS {nx * ny} double",
    ]
    # VTK order: x fastest
    for j in range(ny):
        for i in range(nx):
            lines.append(f"{x[i]:.9g} {y[j]:.9g} {z[i, j]:.9g}")
    lines += [f"POINT_DATA {nx * ny}", f"SCALARS {var} double 1", "LOOKUP_TABLE default"]
    for j in range(ny):
        for i in range(nx):
            lines.append(f"{z[i, j]:.9g}")
    return save_text("\n".join(lines) + "\n", path)


def plot_result(
    ds: xr.Dataset,
    out_dir: str | Path,
    vtk: bool = False,
    var: str | None = None,
    labels: Sequence | None = None,
    plotlyjs: str | Path | None = None,
) -> list[Path]:
    """Every figure that fits the result into ``out_dir``: PNGs, ``landscape.html`` and optionally ``.vtk``.
    ``labels``: the runs' names for the titles (default: from the result's provenance); ``plotlyjs``: the
    folder of the shared ``plotly.min.js`` (default ``out_dir``; see `write_html`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    data_vars = [str(v) for v in ds.data_vars]
    if "convexity_ratio" in data_vars:
        written.append(plot_convexity(ds, out_dir / "convexity.png", labels=labels))
        var = var or "lambda_max"
    var = var or next((v for v in ("train_loss", "loss", "test_loss") if v in data_vars), data_vars[0])
    if var not in data_vars:
        raise UserError(f"no variable '{var}' in this result; it has {', '.join(data_vars)}")
    short = {d: int(ds.sizes[d]) for d in ds[var].dims if ds.sizes[d] < 2}
    if short:
        raise UserError(
            f"a figure needs at least 2 points along each axis; this result has "
            f"{', '.join(f'{n} along {d}' for d, n in short.items())}"
        )
    if len(ds[var].dims) == 1:
        written.append(plot_line(ds, out_dir / "line.png", labels=labels))
    else:
        for v in [var] + [w for w in ("test_loss", "train_accuracy", "test_accuracy") if w in data_vars and w != var]:
            kinds = ("contour", "contourf", "heatmap", "surface") if v == var else ("contourf",)
            written += plot_surface(ds, out_dir, v, kinds=kinds, labels=labels)
        if vtk:
            written.append(export_vtk(ds, out_dir / f"{var}.vtk", var))
    written.append(write_html(ds, out_dir / "landscape.html", var, labels=labels, plotlyjs=plotlyjs))
    return written

"""Figures of low-loss volumes: planes through simplices and wedges, the intrinsic-dimension curve, the radial
experiment.

Each takes results (`modescape.landscape.sweep` Datasets with the three points' plane coordinates in
``attrs["models"]``, or their `plane_numbers`; `modescape.subspace.IntrinsicDimension`,
`modescape.subspace.RadialResult`, or their ``to_dict()``) and a path, draws, saves atomically
(`base.save_figure`) and returns the path written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import REFERENCE, figure, nice_levels, round_colorbar, save_figure, split_style


def _as_dict(result: Any) -> Mapping[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else result


def _models(ds) -> tuple[list[str], np.ndarray]:
    models = ds.attrs.get("models") or {}
    if isinstance(models, str):
        models = json.loads(models)
    return [str(lab) for lab in models.get("labels", [])], np.asarray(models.get("coords", []), dtype=np.float64)


def plane_numbers(ds, metric: str = "test_error") -> dict[str, Any]:
    """A plane's sweep as JSON-able numbers (``x``, ``y``, ``metric``, ``z`` indexed [x][y], ``models``): what
    a study stores and draws back with `plot_simplex_plane` / `plot_wedge` (which take either form)."""
    labels, xy = _models(ds)
    return {
        "x": ds["x"].values.tolist(),
        "y": ds["y"].values.tolist(),
        "metric": metric,
        "z": ds[metric].values.tolist(),
        "models": {"labels": labels, "coords": xy.tolist()},
    }


def _plane_arrays(ds, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """x, y, z [nx, ny], labels and plane coordinates of a sweep Dataset or of its `plane_numbers`."""
    if isinstance(ds, Mapping) and not hasattr(ds, "data_vars"):  # an xarray Dataset is a Mapping too
        if ds.get("metric", metric) != metric:
            raise ValueError(f"the plane holds {ds.get('metric')!r}, not {metric!r}")
        models = ds.get("models") or {}
        return (
            np.asarray(ds["x"], dtype=np.float64),
            np.asarray(ds["y"], dtype=np.float64),
            np.asarray(ds["z"], dtype=np.float64),
            [str(lab) for lab in models.get("labels", [])],
            np.asarray(models.get("coords", []), dtype=np.float64),
        )
    labels, xy = _models(ds)
    return ds["x"].values, ds["y"].values, ds[metric].values, labels, xy


def _draw_plane(ax, ds, metric: str, segments: Sequence[tuple[int, int, str]], title: str | None, fig) -> None:
    """Filled contour of ``metric`` on a plane through three points, the points labelled, and the given
    segments (i, j, line style) between them; drawn to scale."""
    scale = 100.0 if metric.endswith("error") else 1.0
    x, y, zxy, labels, xy = _plane_arrays(ds, metric)
    z = zxy.T * scale  # [ny, nx]
    levels, norm = nice_levels(z, 18)  # round levels (log ones when the values span more than a decade)
    cs = ax.contourf(x, y, z, levels=levels, cmap="viridis", norm=norm)  # low = dark
    round_colorbar(
        fig.colorbar(
            cs, ax=ax, shrink=0.8, label=metric.replace("_", " ") + (" (%)" if metric.endswith("error") else "")
        )
    )
    for i, j, style in segments:
        if i < len(xy) and j < len(xy):
            ax.plot(xy[[i, j], 0], xy[[i, j], 1], style, color="white", lw=1.6)
    for lab, (px, py) in zip(labels, xy, strict=False):
        ax.plot(px, py, "o", color="white", mec="black", ms=7)
        ax.annotate(
            lab,
            (px, py),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=9,
            weight="bold",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75, "lw": 0},
        )
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title, fontsize=10)


def plot_simplex_plane(ds, path: str | Path, metric: str = "test_error", title: str | None = None) -> Path:
    """``metric`` on the plane through a 2-simplex's three vertices (the whole triangle lies in it), with
    its edges (Benton et al. 2021, Figure 1)."""
    fig, ax = figure(figsize=(5.6, 4.4))
    _draw_plane(ax, ds, metric, [(0, 1, "-"), (1, 2, "-"), (0, 2, "-")], title, fig)
    return save_figure(fig, path)


def plot_wedge(
    planes: Mapping[str, Any], path: str | Path, metric: str = "test_error", title: str | None = None
) -> Path:
    """The wedge test's planes side by side: ``before`` (through three optima, their segments dashed) and
    ``after`` (through optima A, B and the connector: the spokes A-connector and B-connector solid, the
    segment A-B dashed); either may be missing."""
    panels = [(k, planes[k]) for k in ("before", "after") if k in planes]
    if not panels:
        raise ValueError("plot_wedge needs a 'before' or an 'after' plane")
    fig, axes = figure(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    for ax, (name, ds) in zip(axes[0], panels, strict=True):
        if name == "before":
            segs, sub = [(0, 1, "--"), (1, 2, "--"), (0, 2, "--")], "before: the plane through three optima"
        else:
            segs, sub = [(0, 1, "--"), (0, 2, "-"), (1, 2, "-")], "after: optima A, B and the connector"
        _draw_plane(ax, ds, metric, segs, sub, fig)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_intrinsic_dimension(result: Any, path: str | Path, title: str | None = None) -> Path:
    """Accuracy against the subspace dimension d (log axis): test (and train) accuracy per d, full training's
    accuracy and the 90% threshold as horizontal lines, d_int90 marked (Li et al. 2018, Figure 3)."""
    r = _as_dict(result)
    rows = sorted(r["rows"], key=lambda row: row["dim"])
    d = np.array([row["dim"] for row in rows], dtype=np.float64)
    fig, ax = figure(figsize=(5.6, 3.8))
    metric = r.get("metric", "test_accuracy")
    other = "train_accuracy" if metric != "train_accuracy" else None
    if other and all(other in row for row in rows):  # train solid, test dashed, as every figure
        ax.plot(
            d,
            [100 * row[other] for row in rows],
            ls=split_style(other),
            marker="s",
            color="tab:blue",
            alpha=0.7,
            label=other.replace("_", " "),
        )
    ax.plot(
        d,
        [100 * row[metric] for row in rows],
        ls=split_style(metric),
        marker="o",
        color="tab:blue",
        label=metric.replace("_", " "),
    )
    ax.axhline(100 * r["full"][metric], **REFERENCE, label=f"full training ({metric.replace('_', ' ')})")
    ax.axhline(
        100 * r["target"], color="crimson", ls="-.", lw=1.0, label=f"{int(round(100 * r['threshold']))}% of full"
    )
    if r.get("d_int90"):
        ax.axvline(r["d_int90"], color="crimson", ls="--", lw=1, label=f"d_int90 = {r['d_int90']}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_radial(result: Any, path: str | Path, title: str | None = None) -> Path:
    """The radial experiment: the train loss at the start and reached after training in a random subspace,
    against the distance r the start was moved (Fort and Jastrzebski 2019)."""
    r = _as_dict(result)
    rows = sorted(r["rows"], key=lambda row: row["r"])
    radii = [row["r"] for row in rows]
    fig, ax = figure(figsize=(5.4, 3.6))  # both are train losses (solid); the start in the reference style
    ax.plot(radii, [row["start_loss"] for row in rows], marker="s", **REFERENCE, label="at the start")
    ax.plot(
        radii,
        [row["train_loss"] for row in rows],
        ls=split_style("train"),
        marker="o",
        label=f"after training (d = {r['dim']})",
    )
    ax.set_yscale("log")
    ax.set_xlabel("distance r from theta_0")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


__all__ = ["plane_numbers", "plot_intrinsic_dimension", "plot_radial", "plot_simplex_plane", "plot_wedge"]

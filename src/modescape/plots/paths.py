"""Figures of paths: metrics along t for several paths, the plane through a curve, swap paths, alignments.

Each takes results (`modescape.paths.PathResult`, `modescape.connect.PlaneResult`, a swap analysis dict)
and a path, draws, saves atomically (`base.save_figure`) and returns the path written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .base import pyplot, save_figure


def plot_paths(results: Sequence, path: str | Path, metrics: Sequence[str] = ("train_loss", "test_error"),
               title: str | None = None) -> Path:
    """Metrics along t for several paths (e.g. the curve and the straight segment), one panel per metric."""
    plt = pyplot()
    metrics = [m for m in metrics if m in results[0].metrics.names]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for r in results:
            scale = 100.0 if m.endswith("error") else 1.0
            ax.plot(r.t.numpy(), (r.metrics[m] * scale).numpy(), label=r.name, lw=1.8)
        ax.set_xlabel("t")
        ax.set_ylabel(m.replace("_", " ") + (" (%)" if m.endswith("error") else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_plane(result, path: str | Path, metric: str = "test_error", title: str | None = None) -> Path:
    """Filled contour of ``metric`` on the plane through a curve's bends, with the curve, its bends and the
    straight segment (Garipov et al. 2018, Figure 1); drawn to scale."""
    plt = pyplot()
    z = result.values[metric].numpy().T * (100.0 if metric.endswith("error") else 1.0)  # [ny, nx]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    levels = np.geomspace(max(lo, 1e-3), hi, 18) if hi > lo > 0 else 18
    cs = ax.contourf(result.x.numpy(), result.y.numpy(), z, levels=levels, cmap="viridis")  # low = dark, as the surfaces
    fig.colorbar(cs, ax=ax, shrink=0.8, label=metric.replace("_", " ") + (" (%)" if metric.endswith("error") else ""))
    c, b = result.curve.numpy(), result.bends.numpy()
    ax.plot(c[:, 0], c[:, 1], color="white", lw=2, label="curve")
    ax.plot(b[[0, 2], 0], b[[0, 2], 1], color="white", lw=1.2, ls="--", label="segment")
    ax.scatter(b[[0, 2], 0], b[[0, 2], 1], color="black", zorder=3, s=30, label="endpoints")
    ax.scatter(b[1:2, 0], b[1:2, 1], color="red", marker="x", zorder=3, s=40, label="bend")
    ax.set_aspect("equal")  # distances in weight space, to scale
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(frameon=True, facecolor="0.7", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_swap(res: Mapping, path: str | Path) -> Path:
    """Loss along a swap path (a `modescape.symmetry.swap_analysis` dict) with the permutation point marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(res["t"], res["loss"], "-o", ms=3)
    ax.axvline(0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel(f"t  (swap units {res['i']} and {res['j']} of {res['perm']})")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_alignment(curves: Mapping, path: str | Path, title: str | None = None, log_loss: bool = False) -> Path:
    """Loss and accuracy of every line of an alignment (``{name: PathResult}``; train dashed, test solid)
    on one figure. ``log_loss``: a logarithmic loss axis (aligned lines are often 100x flatter)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, c) in enumerate(curves.items()):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split, style in (("train", "--"), ("test", "-")):
                key = f"{split}_{metric}"
                if key in c.metrics.names:
                    ax.plot(c.t.numpy(), c.metrics[key].numpy(), style, color=colors[k % len(colors)],
                            label=f"{name} ({split})")
    axes[0].set_ylabel("loss")
    if log_loss:
        axes[0].set_yscale("log")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("t  (A at 0, B at 1)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["plot_alignment", "plot_paths", "plot_plane", "plot_swap"]

"""The figures of the grokking study (`modescape.studies.grokking`): the run (accuracies, weight norm and
sharpness against the step), the 1-D slices stacked over the checkpoints, and the trajectory on its PCA
plane with the test loss. The study arranges what it measured; the drawing and the atomic save are here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import REFERENCE, figure, save_figure

EVENT_STYLES = {"memorised": ":", "generalised": "--"}


def plot_grokking_run(
    history: Sequence[Mapping[str, float]],
    checkpoints: Sequence[Mapping[str, Any]],
    events: Mapping[str, int | None],
    path: str | Path,
    title: str,
    linthresh: float = 1.0,
) -> Path:
    """Three panels against the epoch (= the step, full batch): train and test accuracy per epoch, the weight
    norm and the sharpness (Hessian and GGN top eigenvalue, filter-normalised ``d^T H d``; log scale when the
    eigenvalues are positive) per checkpoint;
    ``events`` (``memorised``, ``generalised``: epochs or None) as grey vertical lines, x on a symlog scale
    linear below ``linthresh``."""
    ep = [h["epoch"] for h in history]
    ce = [c["epoch"] for c in checkpoints]
    fig, axes = figure(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(ep, [h["train_accuracy"] for h in history], label="train accuracy")
    ax.plot(ep, [h["test_accuracy"] for h in history], label="test accuracy")
    ax.set_xlabel("epoch (= step: full batch)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    ax = axes[1]
    ax.plot(ce, [c["weight_norm"] for c in checkpoints], "k.-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight norm ||w||")
    ax = axes[2]
    ax.plot(ce, [c["lambda_max"] for c in checkpoints], ".-", label="Hessian lambda_max")
    ax.plot(ce, [c["ggn_lambda_max"] for c in checkpoints], ".-", label="GGN lambda_max")
    log = all(c[k] > 0 for c in checkpoints for k in ("lambda_max", "ggn_lambda_max"))
    curv = [c["filter_curvature"] if c["filter_curvature"] > 0 or not log else float("nan") for c in checkpoints]
    ax.plot(ce, curv, ".-", label="filter-normalised d^T H d")
    if log:  # on a log axis a non-positive d^T H d (a concave slice) is left out
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.set_title("sharpness of the training loss", fontsize=9)
    last = max(ep + ce)
    for ax in axes:
        ax.set_xscale("symlog", linthresh=max(1.0, linthresh))
        ax.set_xlim(0, last * 1.05)
        ax.grid(alpha=0.3)
        for key, style in EVENT_STYLES.items():
            if events.get(key):
                ax.axvline(events[key], **{**REFERENCE, "ls": style})
    return save_figure(fig, path)


def plot_grokking_slices(checkpoints: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """log10 train and test loss along each checkpoint's 1-D filter-normalised slice (``slice``: ``alpha``,
    ``train_loss``, ``test_loss``), one row per checkpoint."""
    ce = [c["epoch"] for c in checkpoints]
    alphas = checkpoints[0]["slice"]["alpha"]
    fig, axes = figure(1, 2, figsize=(10, 3.6), sharey=True)
    step = max(1, len(ce) // 8)
    for ax, key in zip(axes, ("train_loss", "test_loss"), strict=True):
        z = np.log10(np.array([c["slice"][key] for c in checkpoints]))
        im = ax.imshow(
            z, aspect="auto", origin="lower", cmap="viridis", extent=(alphas[0], alphas[-1], -0.5, len(ce) - 0.5)
        )
        ax.set_yticks(range(0, len(ce), step))
        ax.set_yticklabels([ce[i] for i in range(0, len(ce), step)])
        ax.set_xlabel("alpha (filter-normalised direction)")
        ax.set_title(f"log10 {key.replace('_', ' ')} along a 1-D slice", fontsize=9)
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("checkpoint (epoch)")
    return save_figure(fig, path)


def plot_grokking_plane(plane: Mapping[str, Any], path: str | Path) -> Path:
    """The test loss (log10) on the trajectory's PCA plane (``x``, ``y``, ``test_loss`` [x][y], ``path``
    [T, 2], ``explained``) with the trajectory on top (a square at its start)."""
    fig, ax = figure(figsize=(5.2, 4.2))
    x, y = np.array(plane["x"]), np.array(plane["y"])
    z = np.log10(np.array(plane["test_loss"]))
    cs = ax.contourf(x, y, z.T, levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 test loss")
    xy = np.array(plane["path"])
    ax.plot(xy[:, 0], xy[:, 1], "w.-", lw=1, ms=3)
    ax.plot(xy[0, 0], xy[0, 1], "ws", ms=5)
    ax.set_xlabel(f"PC1 ({plane['explained'][0]:.0%})")
    ax.set_ylabel(f"PC2 ({plane['explained'][1]:.0%})")
    ax.set_title("trajectory on the test-loss plane", fontsize=9)
    return save_figure(fig, path)


__all__ = ["plot_grokking_plane", "plot_grokking_run", "plot_grokking_slices"]

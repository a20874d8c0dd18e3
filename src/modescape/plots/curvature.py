"""Figures of curvature results: the Hessian's spectral density (`modescape.curvature.Density`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import figure, labels_of, save_figure


def plot_density(
    dens, path: str | Path | None = None, ax=None, log: bool = True, title: str | None = None, label: Any = None
):
    """Draw a `Density` (log scale by default: Hessian spectra are heavy-tailed) on ``ax`` or a new figure;
    a new figure is saved to ``path`` (atomically) when given. ``label``: the checkpoint (a path is shortened
    to its run, `base.run_names`), named in the default title. Returns the axes."""
    own = ax is None
    if own:
        fig, ax = figure(figsize=(6, 4))
    y = dens.values.clamp_min(1e-12) if log else dens.values
    ax.plot(dens.grid.numpy(), y.numpy(), lw=1.2)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-8, float(y.max()) * 1e-10))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel(f"density (SLQ, sigma={dens.sigma:.2g})")
    of = f" of {(labels_of([label]) or [''])[0]}" if label is not None else ""
    ax.set_title(
        title or f"Hessian spectral density{of} ({dens.nodes.shape[0]} probes, {dens.nodes.shape[1]} steps)",
        fontsize=10,
    )
    if own and path is not None:
        save_figure(ax.figure, path, dpi=120)
    return ax


__all__ = ["plot_density"]

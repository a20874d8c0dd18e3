"""Figures of benchmark measurements: how cost grows with the size of the work (``bench/scaling.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import figure, save_figure


def plot_scaling(
    rows: Sequence[Mapping[str, Any]], path: str | Path | None = None, title: str | None = None, ylabel: str = "seconds"
):
    """Log-log time against size, one panel per varied quantity, one line per measured task.

    ``rows``: ``{"task", "variable", "x": [sizes], "seconds": [times], "exponent": fitted slope}`` each;
    the fitted power law ``c * x ** exponent`` is drawn dashed through the points, and a slope-1 guide
    dotted. ``ylabel``: what was timed (e.g. CPU seconds). Saved to ``path`` (atomically) when given.
    Returns the figure.
    """
    from matplotlib.ticker import NullFormatter

    variables = list(dict.fromkeys(r["variable"] for r in rows))
    fig, axes = figure(1, len(variables), figsize=(4.0 * len(variables), 3.6), squeeze=False)
    for ax, var in zip(axes[0], variables, strict=True):
        for i, r in enumerate(r for r in rows if r["variable"] == var):
            x, t = np.asarray(r["x"], dtype=float), np.asarray(r["seconds"], dtype=float)
            color = f"C{i}"
            ax.loglog(x, t, "o", color=color, label=f"{r['task']} (slope {r['exponent']:.2f})")
            c = np.exp(np.mean(np.log(t) - r["exponent"] * np.log(x)))
            ax.loglog(x, c * x ** r["exponent"], "--", color=color, lw=1)
            ax.loglog(x, t[0] * x / x[0], ":", color="gray", lw=0.8)
        for axis in (ax.xaxis, ax.yaxis):  # decades labelled, minor ticks bare: no overlapping labels
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(var)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or "time against size (dotted: slope 1)", fontsize=10)
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig


__all__ = ["plot_scaling"]

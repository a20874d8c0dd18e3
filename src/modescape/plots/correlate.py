"""The figure of a sharpness-versus-generalisation study (`modescape.correlate.Correlation`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import figure, legend_outside, save_figure, series_styles


def plot_correlation(result, path: str | Path, title: str | None = None) -> Path:
    """Left: Kendall's tau of each measure with the gap (bars). Right: each measure's ranks against the gap's,
    one colour and marker per measure (no two alike, `base.series_styles`), the legend beside the panel."""
    ms = result.measures
    taus = [result.tau[m][0] for m in ms]
    fig, (a, b) = figure(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    colors = ["tab:blue" if (t if math.isfinite(t) else 0) >= 0 else "tab:red" for t in taus]
    a.barh(range(len(ms)), [t if math.isfinite(t) else 0 for t in taus], color=colors)
    a.set_yticks(range(len(ms)), ms)
    a.invert_yaxis()
    a.axvline(0, color="k", lw=0.8)
    a.set_xlim(-1, 1)
    a.set_xlabel(f"Kendall tau with the generalisation gap ({result.gap})")
    gaps = np.array([r["gap"] for r in result.rows])
    gr = gaps.argsort().argsort()
    for m, style in zip(ms, series_styles(len(ms)), strict=True):
        v = np.array([r[m] for r in result.rows], dtype=float)
        b.plot(gr, v.argsort().argsort(), ls="none", alpha=0.75, ms=6, label=m, mfc="none", mew=1.4, **style)
    b.set_xlabel("rank of the gap")
    b.set_ylabel("rank of the measure")
    legend_outside(b, where="right", fontsize=7, ncol=1 if len(ms) <= 16 else 2)
    fig.suptitle(
        title or f"sharpness measures against the generalisation gap over {len(result.rows)} runs", fontsize=10
    )
    return save_figure(fig, path, dpi=120)


__all__ = ["plot_correlation"]

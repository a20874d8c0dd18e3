"""The figure of a sharpness-versus-generalisation study (`modescape.correlate.Correlation`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import pyplot, save_figure


def plot_correlation(result, path: str | Path) -> Path:
    """Left: Kendall's tau of each measure with the gap (bars). Right: each measure's ranks against the gap."""
    plt = pyplot()
    ms = result.measures
    taus = [result.tau[m][0] for m in ms]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    colors = ["tab:blue" if (t if math.isfinite(t) else 0) >= 0 else "tab:red" for t in taus]
    a.barh(range(len(ms)), [t if math.isfinite(t) else 0 for t in taus], color=colors)
    a.set_yticks(range(len(ms)), ms)
    a.invert_yaxis()
    a.axvline(0, color="k", lw=0.8)
    a.set_xlim(-1, 1)
    a.set_xlabel(f"Kendall tau with the generalisation gap ({result.gap})")
    gaps = np.array([r["gap"] for r in result.rows])
    gr = gaps.argsort().argsort()
    for m in ms:
        v = np.array([r[m] for r in result.rows], dtype=float)
        b.plot(gr, v.argsort().argsort(), "o", alpha=0.6, label=m)
    b.set_xlabel("rank of the gap")
    b.set_ylabel("rank of the measure")
    b.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{len(result.rows)} runs")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


__all__ = ["plot_correlation"]

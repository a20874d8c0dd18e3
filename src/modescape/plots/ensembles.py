"""Figures of ensembles and weight averages: metrics as members are added, reliability diagrams, and the
SGD iterates against their running SWA average.

Each takes results (`modescape.ensembles.EnsembleResult`, ``ensemble_curve`` lists, probabilities, a
trainer history) and a path, draws, saves atomically (`base.save_figure`) and returns the path written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import pyplot, save_figure

_LABELS = {
    "accuracy": "test error (%)",
    "nll": "test NLL",
    "brier": "Brier score",
    "ece": "ECE (%)",
    "disagreement": "disagreement (%)",
}


def _value(metric: str, v: float) -> float:
    """Accuracy is drawn as error; ECE and disagreement in percent."""
    if metric == "accuracy":
        return 100.0 * (1.0 - v)
    return 100.0 * v if metric in ("ece", "disagreement") else v


def plot_ensemble(
    results: Mapping[str, Any],
    path: str | Path,
    metrics: Sequence[str] = ("accuracy", "nll"),
    references: Mapping[str, Mapping[str, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Ensemble metrics against the number of members, one panel per metric, one line per ensemble
    (``{name: EnsembleResult or ensemble_curve list}``); ``references`` (``{name: metrics}``, e.g. one model
    or the SWA model) are drawn as horizontal lines."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics, strict=True):
        for k, (name, res) in enumerate(results.items()):
            curve = res.curve if hasattr(res, "curve") else res
            xs = [c["members"] for c in curve]
            ax.plot(xs, [_value(m, c[m]) for c in curve], "-o", ms=3, color=colors[k % len(colors)], label=name)
        for k, (name, ref) in enumerate((references or {}).items()):
            if m in ref:
                ax.axhline(
                    _value(m, ref[m]), ls="--", lw=1.2, color=colors[(len(results) + k) % len(colors)], label=name
                )
        ax.set_xlabel("members")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_LABELS.get(m, m))
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(
    models: Mapping[str, tuple[Any, Any]], path: str | Path, bins: int = 15, title: str | None = None
) -> Path:
    """Reliability diagrams: accuracy against confidence in the bins of the expected calibration error
    (`modescape.ensembles.reliability`), one line per model (``{name: (probs [N, C], targets [N])}``), with
    the ECE in the legend; the diagonal is perfect calibration."""
    from ..ensembles import calibration_error, reliability

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    for name, (probs, targets) in models.items():
        r = reliability(probs, targets, bins)
        full = r["count"].numpy() > 0
        ece = calibration_error(probs, targets, bins)
        ax.plot(
            r["confidence"].numpy()[full],
            r["accuracy"].numpy()[full],
            "-o",
            ms=3,
            label=f"{name} (ECE {100 * ece:.2f}%)",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    lo = min(0.9, float(ax.get_xlim()[0]))
    ax.set_xlim(max(lo, 0.0), 1.0)
    ax.set_ylim(max(lo, 0.0), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_swa(
    history: Sequence[Mapping[str, float]], path: str | Path, metric: str = "test_accuracy", title: str | None = None
) -> Path:
    """The trainer's per-epoch history of a SWA run: ``metric`` of the SGD iterate and of the running SWA
    average (``swa_<metric>``, from the epoch averaging starts); accuracies are drawn as errors."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    acc = metric.endswith("accuracy")
    conv = (lambda v: 100.0 * (1.0 - v)) if acc else (lambda v: v)
    ep = np.array([h["epoch"] for h in history])
    ax.plot(ep, [conv(h[metric]) for h in history], "-o", ms=3, label="SGD iterate")
    swa = [(h["epoch"], conv(h[f"swa_{metric}"])) for h in history if f"swa_{metric}" in h]
    if swa:
        ax.plot(*zip(*swa, strict=True), "-s", ms=3, label="SWA average")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.replace("accuracy", "error").replace("_", " ") + (" (%)" if acc else ""))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["plot_ensemble", "plot_reliability", "plot_swa"]

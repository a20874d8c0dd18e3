"""Figures of paths: metrics along t for several paths, the plane through a curve, swap paths, alignments,
and a fast geometric ensemble as members are added.

Each takes results (`modescape.paths.PathResult`, `modescape.connect.PlaneResult`, a swap analysis dict,
`modescape.ensembles.FGEResult`) and a path, draws, saves atomically (`base.save_figure`) and returns the
path written. They follow the conventions of `base`: train solid and test dashed, reference lines grey and
dotted, legends outside the data, round colorbar ticks, and titles that name the runs compared
(``labels=``: strings as given, paths shortened together by `base.run_names`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    COLORS,
    REFERENCE,
    figure,
    labels_of,
    legend_outside,
    nice_levels,
    round_colorbar,
    save_figure,
    split_handles,
    split_of,
    split_style,
    with_runs,
)


def _ends_label(labels: Sequence | None) -> str:
    names = labels_of(labels)
    return f"t  ({names[0]} at 0, {names[1]} at 1)" if names and len(names) == 2 else "t"


def plot_paths(
    results: Sequence,
    path: str | Path,
    metrics: Sequence[str] = ("train_loss", "test_error"),
    title: str | None = None,
    labels: Sequence | None = None,
) -> Path:
    """Metrics along t for several paths (e.g. the curve and the straight segment), one panel per metric: a
    colour per path, train solid and test dashed. ``labels``: the two endpoints' runs (e.g. ``(Path(a),
    Path(b))``), named in the title and on the t axis."""
    metrics = [m for m in metrics if m in results[0].metrics.names]
    fig, axes = figure(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    handles = []
    for ax, m in zip(axes[0], metrics, strict=True):
        scale = 100.0 if m.endswith("error") else 1.0
        for k, r in enumerate(results):
            (line,) = ax.plot(
                r.t.numpy(),
                (r.metrics[m] * scale).numpy(),
                split_style(m),
                color=COLORS[k % len(COLORS)],
                label=r.name,
                lw=1.8,
            )
            if ax is axes[0][0]:
                handles.append(line)
        ax.set_xlabel(_ends_label(labels))
        ax.set_ylabel(m.replace("_", " ") + (" (%)" if m.endswith("error") else ""))
        ax.grid(alpha=0.3)
    splits = [s for s in ("train", "test") if any(split_of(m) == s for m in metrics)]
    legend_outside(fig, handles + (split_handles(splits) if len(splits) > 1 else []), where="below")
    if title or labels:
        fig.suptitle(title or with_runs("metrics along the paths", labels), fontsize=10)
    return save_figure(fig, path)


def plot_plane(
    result, path: str | Path, metric: str = "test_error", title: str | None = None, labels: Sequence | None = None
) -> Path:
    """Filled contour of ``metric`` on the plane through a curve's bends, with the curve, its bends and the
    straight segment (Garipov et al. 2018, Figure 1); drawn to scale, levels and colorbar ticks on round
    numbers, the legend below the axes (clear of the x label). ``labels``: the endpoints' runs."""
    pct = metric.endswith("error")
    z = result.values[metric].numpy().T * (100.0 if pct else 1.0)  # [ny, nx]
    fig, ax = figure(figsize=(7.0, 4.8))
    levels, norm = nice_levels(z, 18)
    cs = ax.contourf(result.x.numpy(), result.y.numpy(), z, levels=levels, cmap="viridis", norm=norm)  # low = dark
    round_colorbar(fig.colorbar(cs, ax=ax, shrink=0.8, label=metric.replace("_", " ") + (" (%)" if pct else "")))
    c, b = result.curve.numpy(), result.bends.numpy()
    ax.plot(c[:, 0], c[:, 1], color="white", lw=2, label="curve")
    ax.plot(b[[0, 2], 0], b[[0, 2], 1], color="white", lw=1.2, ls="--", label="segment")
    ax.scatter(b[[0, 2], 0], b[[0, 2], 1], color="black", zorder=3, s=30, label="endpoints")
    ax.scatter(b[1:2, 0], b[1:2, 1], color="red", marker="x", zorder=3, s=40, label="bend")
    names = labels_of(labels)
    if names and len(names) == 2:
        for name, (bx, by) in zip(names, b[[0, 2]], strict=True):
            ax.annotate(
                name, (bx, by), textcoords="offset points", xytext=(5, 5), fontsize=8, color="white", weight="bold"
            )
    ax.set_aspect("equal")  # distances in weight space, to scale
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    # the curve and segment are white: a grey legend box keeps them visible
    leg_handles, leg_labels = ax.get_legend_handles_labels()
    legend_outside(fig, leg_handles, leg_labels, where="below", ncol=4, frameon=True, facecolor="0.7")
    if title or labels:
        ax.set_title(title or with_runs(f"{metric.replace('_', ' ')} on the plane of the bends", labels), fontsize=10)
    return save_figure(fig, path)


def plot_swap(res: Mapping, path: str | Path, title: str | None = None, label: Any = None) -> Path:
    """Loss along a swap path (a `modescape.symmetry.swap_analysis` dict; training data, so solid) with the
    permutation point marked. ``label``: the checkpoint, named in the title."""
    fig, ax = figure(figsize=(4.8, 3.4))
    ax.plot(res["t"], res["loss"], ls=split_style("train"), marker="o", ms=3)
    ax.axvline(0.5, **REFERENCE)
    ax.set_xlabel(f"t  (swap units {res['i']} and {res['j']} of {res['perm']})")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    if title or label is not None:
        ax.set_title(title or with_runs("swap path", [label]), fontsize=10)
    return save_figure(fig, path)


def plot_alignment(
    curves: Mapping, path: str | Path, title: str | None = None, log_loss: bool = False, labels: Sequence | None = None
) -> Path:
    """Loss and accuracy of every line of an alignment (``{name: PathResult}``) on one figure: a colour per
    line, train solid and test dashed. ``log_loss``: a logarithmic loss axis (aligned lines are often 100x
    flatter). ``labels``: A's and B's runs (e.g. ``(Path(a), Path(b))``), named in the title and on the t
    axis; ``title`` replaces the default title."""
    fig, axes = figure(1, 2, figsize=(9, 3.8))
    handles, splits = [], []
    for k, (name, c) in enumerate(curves.items()):
        color = COLORS[k % len(COLORS)]
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for split in ("train", "test"):
                key = f"{split}_{metric}"
                if key in c.metrics.names:
                    ax.plot(
                        c.t.numpy(), c.metrics[key].numpy(), split_style(split), color=color, label=f"{name} ({split})"
                    )
                    splits += [split] if split not in splits else []
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color=color, label=str(name)))
    axes[0].set_ylabel("loss")
    if log_loss:
        axes[0].set_yscale("log")
    axes[1].set_ylabel("accuracy")
    names = labels_of(labels)
    for ax in axes:
        ax.set_xlabel(_ends_label(names) if names else "t  (A at 0, B at 1)")
        ax.grid(alpha=0.3)
    legend_outside(
        fig,
        handles + split_handles([s for s in ("train", "test") if s in splits]),
        where="below",
        ncol=len(handles) + len(splits),
    )
    if title or labels:
        fig.suptitle(title or with_runs("interpolation before and after alignment", labels), fontsize=10)
    return save_figure(fig, path)


def _get(obj, key: str):
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def plot_fge(
    result,
    path: str | Path,
    title: str | None = None,
    label: Any = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Fast geometric ensembling as members are added (`modescape.ensembles.FGEResult`, or its ``to_dict()``
    / ``fge.json``): test accuracy (%) and test NLL of the ensemble of the first m snapshots and of snapshot m
    alone, against m, with the start model as a reference line. ``label``: the start checkpoint, named in the
    title; ``baselines``: more reference lines, ``{name: {"accuracy": ..., "nll": ...}}`` (e.g. one model
    trained for the same budget)."""
    members, start = list(_get(result, "members")), _get(result, "start")
    m = np.array([r["members"] for r in members])
    fig, axes = figure(1, 2, figsize=(9, 3.8))
    style = split_style("test")  # every number here is measured on the test data
    for ax, key, scale, ylabel in (
        (axes[0], "accuracy", 100.0, "test accuracy (%)"),
        (axes[1], "nll", 1.0, "test NLL"),
    ):
        ax.plot(m, [scale * r[key] for r in members], style, marker="o", color=COLORS[0], label="FGE ensemble")
        ax.plot(
            m, [scale * r[f"single_{key}"] for r in members], style, marker="s", color=COLORS[1], label="snapshot alone"
        )
        if start and key in start:
            ax.axhline(scale * start[key], **REFERENCE, label="start model")
        for k, (name, values) in enumerate((baselines or {}).items()):
            if key in values:
                ax.axhline(scale * values[key], color=COLORS[(k + 2) % len(COLORS)], lw=1.0, ls=":", label=name)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("FGE members")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    leg_handles, leg_labels = axes[0].get_legend_handles_labels()
    legend_outside(fig, leg_handles, leg_labels, where="below")
    label_names = labels_of([label]) if label is not None else None
    run_name = label_names[0] if label_names else None
    fig.suptitle(title or ("fast geometric ensembling" + (f" from {run_name}" if run_name else "")), fontsize=10)
    return save_figure(fig, path)


__all__ = ["plot_alignment", "plot_fge", "plot_paths", "plot_plane", "plot_swap"]

"""What several studies share: number formatting, verdicts, the numbers of a path, and two figure kinds
(series against a shared x, and the interactive specs the report draws).

Figures go through `modescape.plots` (its layout, styles and one atomic save); this module only arranges
what a study measured into them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# -- numbers as text --------------------------------------------------------------------------------


def num(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits (``-`` for None or NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def pct(x: Any, digits: int = 2) -> str:
    """A fraction as a percentage (0.0737 -> ``7.37%``)."""
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{100 * float(x):.{digits}f}%"


def points(x: Any, digits: int = 2) -> str:
    """A difference of fractions in percentage points (0.0025 -> ``0.25 points``)."""
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{100 * float(x):.{digits}f} points"


def data_text(meta: Mapping[str, Any]) -> str:
    """``digits (1437 train / 360 test)`` from a `DataSplit`'s meta."""
    return f"{meta.get('name')} ({meta.get('n_train')} train / {meta.get('n_test')} test)"


def model_text(model: str, args: Mapping[str, Any]) -> str:
    """``mlp depth=2 width=64``."""
    return " ".join([model, *(f"{k}={v}" for k, v in args.items())])


def verdict_of(checks: Sequence[bool]) -> str:
    """``reproduced`` when every check holds, ``partly`` when some do, ``not reproduced`` when none does."""
    checks = [bool(c) for c in checks]
    if checks and all(checks):
        return "reproduced"
    if any(checks):
        return "partly"
    return "not reproduced"


def max_rise(values: Sequence[float]) -> float:
    """The largest increase between consecutive values (0 for a non-increasing sequence)."""
    v = [float(x) for x in values]
    return max([0.0] + [b - a for a, b in zip(v, v[1:], strict=False)])


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b of two sequences (`modescape.correlate.kendall`; NaN when undefined)."""
    from ..correlate import kendall

    return kendall(list(xs), list(ys))[0]


# -- paths ------------------------------------------------------------------------------------------


def path_numbers(res, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """What a study keeps of a `modescape.paths.PathResult`: ``t``, each metric's values, its summary
    (start, end, min, max, both barriers), the barriers by name (an accuracy's as its error), the length and
    the BN policy."""
    names = [m for m in (metrics or res.metrics.names) if m in res.metrics.names]
    summary = res.summary()
    return {
        "name": res.name,
        "bn": res.bn,
        "length": res.length,
        "t": res.t.tolist(),
        "values": {m: res.metrics[m].tolist() for m in names},
        "summary": {m: {k: v for k, v in summary[m].items() if not isinstance(v, (list, dict))} for m in names},
        "barriers": res.barriers(),
    }


def path_series(paths: Mapping[str, Mapping[str, Any]], metric: str, scale: float = 1.0) -> list[dict[str, Any]]:
    """Series of one metric along several stored paths (`path_numbers`), for `plot_series` / `lines_spec`."""
    return [{"label": name, "x": p["t"], "y": [scale * v for v in p["values"][metric]]} for name, p in paths.items()]


# -- figures ----------------------------------------------------------------------------------------


def plot_series(
    path: str | Path,
    panels: Sequence[Mapping[str, Any]],
    title: str | None = None,
    width: float = 4.4,
    height: float = 3.5,
) -> Path:
    """`modescape.plots.studies.plot_series` (matplotlib loads on first use, so the registry stays light)."""
    from ..plots.studies import plot_series as draw

    return draw(path, panels, title=title, width=width, height=height)


def lines_spec(
    title: str, series: Sequence[Mapping[str, Any]], xlabel: str, ylabel: str, logx: bool = False, logy: bool = False
) -> dict[str, Any]:
    """An interactive line chart for the report: ``series`` as in `plot_series`."""
    return {
        "kind": "lines",
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "logx": logx,
        "logy": logy,
        "series": [
            {"label": s["label"], "x": list(s["x"]), "y": list(s["y"]), "dash": s.get("style", "-") != "-"}
            for s in series
        ],
    }


def contour_spec(
    title: str,
    x: Sequence[float],
    y: Sequence[float],
    z: Sequence[Sequence[float]],
    xlabel: str,
    ylabel: str,
    zlabel: str,
    log: bool = False,
    markers: Sequence[Mapping[str, Any]] | None = None,
    path: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """An interactive contour for the report: ``z`` indexed [x][y] (a `landscape.sweep` variable), markers
    ``{"label", "x", "y"}`` and a path ``[[x, y], ...]`` drawn on top; ``log``: contour log10(z)."""
    return {
        "kind": "contour",
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "zlabel": zlabel,
        "log": log,
        "x": list(x),
        "y": list(y),
        "z": [list(r) for r in z],
        "markers": list(markers or []),
        "path": [list(p) for p in path] if path is not None else None,
    }


def bars_spec(title: str, labels: Sequence[str], values: Sequence[float], xlabel: str) -> dict[str, Any]:
    """An interactive horizontal bar chart for the report."""
    return {"kind": "bars", "title": title, "xlabel": xlabel, "labels": list(labels), "values": list(values)}


# -- flatness of one point (the swa and sam studies) -----------------------------------------------------


def flatness(
    ctx,
    model,
    point,
    buffers,
    split,
    eval_train: int | None = None,
    radius: float = 1.0,
    n_directions: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Test error and NLL (`modescape.ensembles.ensemble_metrics`), the largest Hessian eigenvalue on the
    training data (`modescape.curvature.eigenvalues`) and the filter-normalised 1-D sharpness (the rise of
    the train loss within ``radius`` along filter-normalised directions, `modescape.sharpness`) at ``point``
    with ``buffers`` (BatchNorm statistics; recomputed for BatchNorm models by the evaluator's default)."""
    from .. import curvature as cv
    from .. import sharpness as sh
    from ..ensembles import ensemble_metrics, predict_proba

    train = split.train if eval_train is None else (split.train[0][:eval_train], split.train[1][:eval_train])
    ev = ctx.evaluator(model, {"train": train, "test": split.test}, metrics=("loss", "error"))
    m = ensemble_metrics([predict_proba(ev, point, "test", buffers or None)], split.test[1])
    hev = ctx.evaluator(model, {"train": train}, metrics=("loss",))
    lam = float(cv.eigenvalues(hev, None, point, k=1, which="largest", tol=1e-3, seed=seed).values[0])
    t = sh.target(hev, None, point, source="train")
    f1 = sh.filter_sharpness(t, radius=radius, n_points=21, n_directions=n_directions, seed=seed)
    return {
        "test_error": 1 - m["accuracy"],
        "nll": m["nll"],
        "ece": m["ece"],
        "lambda_max": lam,
        "filter_1d": f1["value"],
        "filter_1d_curvature": f1.get("curvature", float("nan")),
    }


__all__ = [
    "bars_spec",
    "contour_spec",
    "data_text",
    "flatness",
    "kendall_tau",
    "lines_spec",
    "max_rise",
    "model_text",
    "num",
    "path_numbers",
    "path_series",
    "pct",
    "plot_series",
    "points",
    "verdict_of",
]

"""Do sharpness measures predict generalisation? Every measure on a set of trained runs, against the gap.

For each run folder (a ``modescape train --out RUN``: ``RUN/final.safetensors`` and its JSON sidecar,
which says how to rebuild the model and the data), `correlate` computes

* the generalisation gap at the final point, ``test - train`` of the loss (``gap="loss"``) or of the
  error (``gap="error"``, the default), with the evaluator's BN policy;
* every measure of `modescape.sharpness.measure_all` on the training data (or a first-``n_train``
  subset of it, for speed; the gap always uses all the data);

and Kendall's tau (``scipy.stats.kendalltau``, tau-b, with its p-value) between each measure and the gap
over the runs, as in Jiang et al. (2020). A grid over batch size, learning rate and width gives the
classic table. The result is a `Correlation`: a per-run table (``to_csv``), the taus (``to_dict``); its
figure is `modescape.plots.plot_correlation`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from . import sharpness as sh
from .errors import UserError
from .evaluate import Evaluator
from .progress import bar


@dataclass
class Correlation:
    """``rows``: one dict per run (``run``, ``gap``, train/test metrics, every measure);
    ``tau``: ``{measure: (tau, p_value)}``; ``measures``: the measure columns in order."""

    rows: list[dict[str, Any]]
    tau: dict[str, tuple[float, float]]
    measures: list[str]
    gap: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gap": self.gap,
            "measures": self.measures,
            "runs": self.rows,
            "kendall_tau": {k: {"tau": t, "p_value": p} for k, (t, p) in self.tau.items()},
        }

    def to_csv(self) -> str:
        """One row per run: run, gap, train/test loss and error, every measure."""
        cols = ["run", "gap", "train_loss", "test_loss", "train_error", "test_error"] + self.measures
        buf = StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in self.rows:
            w.writerow([r.get(c, "") for c in cols])
        return buf.getvalue()


def checkpoint_of(run: str | Path) -> Path:
    """``RUN/final.safetensors`` for a run folder; a checkpoint file is returned as is."""
    p = Path(run)
    if p.is_dir():
        f = p / "final.safetensors"
        if not f.exists():
            raise UserError(f"{p} has no final.safetensors: is it a finished `modescape train --out` folder?")
        return f
    if not p.exists():
        raise UserError(f"run not found: {p}")
    return p


def kendall(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b and its p-value (NaN when fewer than 2 finite pairs or a constant column)."""
    from scipy.stats import kendalltau

    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return float("nan"), float("nan")
    r = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    return float(r.statistic), float(r.pvalue)


def _default_loader(path: Path, device) -> tuple[Any, dict, Any]:
    from .io import load_checkpoint  # the one place that turns a sidecar into a model and data

    return load_checkpoint(path, device=device)


def correlate(
    run_dirs: Sequence[str | Path],
    *,
    measures: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    gap: str = "error",
    bn: str = "running",
    params: str = "all",
    n_train: int | None = None,
    batch_size: int | None = None,
    device=None,
    seed: int = 0,
    loader: Callable[[Path, Any], tuple[Any, dict, Any]] | None = None,
    progress: bool | None = None,
) -> Correlation:
    """Measures, gap and Kendall's tau over runs. ``loader(path, device) -> (model, meta, split)`` reads a
    run (default: `modescape.io.load_checkpoint`, the sidecar loader)."""
    if gap not in ("loss", "error"):
        raise UserError(f"unknown gap '{gap}': use loss or error")
    if len(run_dirs) < 2:
        raise UserError("correlate needs at least two runs (a rank correlation over one run is undefined)")
    load = loader or _default_loader
    names = list(measures) if measures is not None else list(sh.MEASURES)
    rows = []
    with bar("correlate runs", len(run_dirs), enabled=progress) as adv:
        for run in run_dirs:
            ckpt = checkpoint_of(run)
            model, meta, split = load(ckpt, device)
            # the gap on all the data; the measures (many passes each) on the first n_train samples if asked
            ev = Evaluator(
                model,
                {"train": split.train, "test": split.test},
                metrics=("loss", "accuracy", "error"),
                bn=bn,
                device=device,
                batch_size=batch_size,
                progress=False,
            )
            point = ev.point0
            base = ev([point]).to_dict()
            g = base[f"test_{gap}"] - base[f"train_{gap}"]
            if n_train is not None:
                sub = (split.train[0][:n_train], split.train[1][:n_train])
                ev = Evaluator(
                    model,
                    {"train": sub},
                    metrics=("loss", "accuracy", "error"),
                    bn=bn,
                    device=device,
                    batch_size=batch_size,
                    progress=False,
                )
            t = sh.target(ev, None, point, params=params, source="train")
            values = sh.measure_all(t, measures=names, options=options, seed=seed, progress=False)
            rows.append(
                {
                    "run": str(run),
                    "gap": g,
                    **base,
                    **{k: v for k, v in values.items() if k != "loss"},
                    "config": meta.get("config", {}),
                    "model": meta.get("model", {}),
                }
            )
            adv(1, info=Path(run).name)
    taus = {m: kendall([r[m] for r in rows], [r["gap"] for r in rows]) for m in names}
    return Correlation(rows, taus, names, gap)


__all__ = ["correlate", "Correlation", "kendall", "checkpoint_of"]

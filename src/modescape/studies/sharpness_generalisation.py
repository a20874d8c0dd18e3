"""sharpness-generalisation: do sharpness measures predict the generalisation gap? (Jiang, Neyshabur, Mobahi,
Krishnan and Bengio 2020, *Fantastic generalization measures and where to find them*; Keskar et al. 2017.)

Claim: over a grid of trained networks that differ in one hyperparameter at a time, flatness measures of
the sharpness family, the magnitude-aware PAC-Bayes one first, rank the generalisation gap better than
most other measures; a plain Kendall tau over all runs can mislead, so they also report the *granulated*
Kendall coefficient: for each hyperparameter, the tau within groups of runs that differ only in it,
averaged over the groups (psi_i), and its mean over the hyperparameters (Psi). Measured: every measure of
`modescape.sharpness.measure_all` at each run's final point, Kendall's tau with the gap test error - train
error (`modescape.correlate.kendall`) and the granulated coefficient, as a ranked table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .common import bars_spec, data_text, num, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "depth": 2,
    "grid": {"batch_size": [32, 256], "lr": [0.02, 0.1], "wd": [0.0, 5e-4], "width": [32, 128], "seed": [0]},
    "epochs": 20,
    "n_train": 500,
    "measures": None,
}


def granulated_kendall(
    rows: Sequence[Mapping[str, Any]], measure: str, axes: Sequence[str], gap: str = "gap"
) -> dict[str, float]:
    """Jiang et al. (2020)'s granulated Kendall coefficient of ``measure`` with ``gap``: for each
    hyperparameter ``h`` of ``axes``, the mean over groups of runs equal in every other hyperparameter of
    Kendall's tau within the group (``psi_h``; groups with an undefined tau are skipped), and ``Psi``, the
    mean of the psi_h. Rows hold the hyperparameters by name, the measure and the gap."""
    from ..correlate import kendall

    out: dict[str, float] = {}
    for h in axes:
        others = [a for a in axes if a != h]
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault(tuple(r[a] for a in others), []).append(r)
        taus = [kendall([g[measure] for g in grp], [g[gap] for g in grp])[0] for grp in groups.values() if len(grp) > 1]
        taus = [t for t in taus if math.isfinite(t)]
        out[h] = sum(taus) / len(taus) if taus else float("nan")
    vals = [v for v in out.values() if math.isfinite(v)]
    out["Psi"] = sum(vals) / len(vals) if vals else float("nan")
    return out


def run(ctx) -> Outcome:
    from .. import sharpness as sh
    from ..correlate import Correlation, kendall
    from ..plots import plot_correlation

    s = ctx.settings
    split = ctx.split()
    axes = [a for a, v in s["grid"].items() if len(v) > 1]
    combos = [dict(zip(s["grid"], vals, strict=True)) for vals in itertools.product(*s["grid"].values())]
    runs = []
    for c in combos:
        tag = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in c.items())
        net, m = ctx.train(
            tag,
            split,
            s["model"],
            {"depth": s["depth"], "width": c["width"]},
            seed=c["seed"],
            epochs=s["epochs"],
            batch_size=c["batch_size"],
            lr=c["lr"],
            wd=c["wd"],
        )
        runs.append((tag, c, net))
    ctx.stop_point("train")
    names = list(s["measures"] or sh.MEASURES)

    def measures():
        rows = []
        for tag, c, net in runs:
            ev = ctx.evaluator(net, {"train": split.train, "test": split.test}, metrics=("loss", "accuracy", "error"))
            base = ev([ev.point0]).to_dict()
            sub = (split.train[0][: s["n_train"]], split.train[1][: s["n_train"]])
            mev = ctx.evaluator(net, {"train": sub}, metrics=("loss", "accuracy", "error"))
            t = sh.target(mev, None, mev.point0, source="train")
            values = sh.measure_all(t, measures=names, seed=0, progress=False)
            rows.append(
                {
                    "run": tag,
                    **c,
                    "gap": base["test_error"] - base["train_error"],
                    **base,
                    **{k: v for k, v in values.items() if k != "loss"},
                }
            )
        return rows

    rows = ctx.stage("measures", measures)
    taus = {m: kendall([r[m] for r in rows], [r["gap"] for r in rows]) for m in names}
    gran = {m: granulated_kendall(rows, m, axes) for m in names}
    ranked = sorted(names, key=lambda m: -(gran[m]["Psi"] if math.isfinite(gran[m]["Psi"]) else -9))
    corr = Correlation(rows, taus, ranked, "error")
    fig = ctx.figure("correlation.png")
    plot_correlation(
        corr, fig, title=f"{len(rows)} {s['model']}s on {split.meta['name']}: measures vs the generalisation gap"
    )
    setting = (
        f"{len(rows)} {s['model']}s (depth {s['depth']}) on {data_text(split.meta)}, grid "
        + ", ".join(f"{k} {v}" for k, v in s["grid"].items())
        + f"; measures on {s['n_train']} training samples"
    )
    pub = "Jiang et al. 2020 (NiN and VGG-like nets on CIFAR-10 and SVHN, thousands of models)"
    table = []
    for m in ranked:
        g = gran[m]
        table.append(
            Row(
                m,
                f"Psi {num(g['Psi'])}; tau {num(taus[m][0])}; " + ", ".join(f"psi_{a} {num(g[a])}" for a in axes),
                setting,
                "among the best (positive)" if m == "pacbayes_mag" else "-",
                pub if m == "pacbayes_mag" else "-",
            )
        )
    best = ranked[0]
    pac = gran.get("pacbayes_mag", {}).get("Psi", float("nan"))
    sharp_family = [m for m in names if m != "lambda_max" and m != "trace"]
    top3 = ranked[:3]
    checks = [math.isfinite(pac) and pac > 0, any(m in sharp_family for m in top3)]
    why = (
        f"the best measure by granulated Kendall is {best} (Psi {num(gran[best]['Psi'])}); the magnitude-aware "
        f"PAC-Bayes flatness has Psi {num(pac)}; with {len(rows)} runs of one small task the coefficients move "
        "with a single pair of runs"
    )
    numbers = {
        "rows": rows,
        "kendall_tau": {m: {"tau": t, "p_value": p} for m, (t, p) in taus.items()},
        "granulated": gran,
        "ranked": ranked,
        "axes": axes,
    }
    return Outcome(
        numbers,
        table,
        verdict_of(checks),
        why,
        [
            Figure(
                ctx.rel(fig),
                "Kendall's tau of each measure with the generalisation gap (left) and each "
                "measure's ranks against the gap's (right).",
            )
        ],
        [bars_spec("granulated Kendall coefficient Psi per measure", ranked, [gran[m]["Psi"] for m in ranked], "Psi")],
    )


STUDY = register(
    Study(
        name="sharpness-generalisation",
        title="Sharpness measures and the generalisation gap",
        paper="Jiang, Neyshabur, Mobahi, Krishnan and Bengio 2020, Fantastic generalization measures and where to find "
        "them",
        claim="Over networks that differ one hyperparameter at a time, sharpness-based measures (magnitude-aware "
        "PAC-Bayes flatness first) rank the generalisation gap better than most others; the granulated Kendall "
        "coefficient tells this apart from confounded correlations.",
        summary="which sharpness measure ranks the generalisation gap (granulated Kendall)",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {**BASE, "data": "mnist", "data_args": {"n_train": 10000}, "epochs": 5, "n_train": 1000},
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "depth": 11,
                "grid": {
                    "batch_size": [64, 256],
                    "lr": [0.01, 0.05],
                    "wd": [0.0, 5e-4],
                    "width": [4, 8],
                    "seed": [0, 1],
                },
                "epochs": 60,
                "n_train": 5000,
            },
        },
        smoke={
            "grid": {"batch_size": [64, 512], "lr": [0.05], "wd": [0.0], "width": [8, 16], "seed": [0]},
            "epochs": 2,
            "n_train": 100,
            "measures": ["lambda_max", "keskar", "adaptive_worst_l2", "pacbayes_mag", "filter_1d"],
        },
        stages=("train", "measures"),
        docs=("curvature.md",),
    )
)

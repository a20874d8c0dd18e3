"""swa-flatness: stochastic weight averaging finds wider optima that generalise better (Izmailov, Podoprikhin,
Garipov, Vetrov and Wilson 2018).

Claim: averaging the SGD iterates of a high constant learning rate phase lands in the centre of a wide
low-loss region, where the SGD iterates sit at its boundary: the average generalises better than SGD at
the same training budget, and is flatter (train loss rises more slowly along random directions). Measured
at equal epochs: SGD on a cosine schedule against the same run with SWA over its last epochs
(`modescape.train` with ``swa_start``; BatchNorm statistics recomputed for the average): test error and
NLL, the largest Hessian eigenvalue (`modescape.curvature`) and the filter-normalised 1-D sharpness
(`modescape.sharpness`), and the train loss along filter-normalised directions and along the line
through both solutions.
"""

from __future__ import annotations

from .common import data_text, flatness, lines_spec, model_text, num, pct, plot_series, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "epochs": 40,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "swa_start": 30,
    "swa_lr": 0.02,
    "eval_train": None,
    "radius": 1.0,
    "points": 41,
}


def compare(ctx, split, solutions, base: str, other: str, setting: str, published: str, pub_setting: str):
    """The shared half of the swa and sam studies: ``solutions`` {name: (model, point, buffers)}; returns the
    stage's numbers, figures and table rows comparing ``other`` against ``base``."""
    import torch

    from .. import space as sp
    from ..directions import random_direction
    from ..families import Line
    from ..paths import evaluate_path

    s = ctx.settings

    def measure():
        out = {
            k: flatness(ctx, m, p, b, split, s["eval_train"], s["radius"], seed=s["seed"])
            for k, (m, p, b) in solutions.items()
        }
        model = next(iter(solutions.values()))[0]
        ev = ctx.evaluator(model, {"train": split.train, "test": split.test}, metrics=("loss", "error"))
        alphas = torch.linspace(-s["radius"], s["radius"], s["points"], dtype=torch.float64)
        curves = {}
        for k, (m, p, b) in solutions.items():
            d = random_direction(p, normalization="filter", ignore="biasbn", seed=s["seed"], space=sp.WeightSpace(m))
            res = evaluate_path(Line.from_direction(p, d, b or None), ev, t=alphas)
            curves[k] = {
                "alpha": alphas.tolist(),
                "train_loss": res.metrics["train_loss"].tolist(),
                "test_error": res.metrics["test_error"].tolist(),
            }
        (_, pb, bb), (_, po, bo) = solutions[base], solutions[other]
        ts = torch.linspace(-0.5, 1.5, s["points"], dtype=torch.float64)
        line = evaluate_path(({**pb, **(bb or {})}, {**po, **(bo or {})}), ev, t=ts)
        return {
            "measures": out,
            "curves": curves,
            "line": {
                "t": ts.tolist(),
                "train_loss": line.metrics["train_loss"].tolist(),
                "test_error": line.metrics["test_error"].tolist(),
            },
        }

    r = ctx.stage("flatness", measure)
    fig = ctx.figure("flatness.png")
    plot_series(
        fig,
        [
            {
                "title": "filter-normalised direction around each solution",
                "xlabel": "alpha",
                "ylabel": "train loss",
                "logy": True,
                "series": [{"label": k, "x": c["alpha"], "y": c["train_loss"]} for k, c in r["curves"].items()],
            },
            {
                "title": f"the line from {base} (t = 0) to {other} (t = 1)",
                "xlabel": "t",
                "ylabel": "loss / error",
                "logy": True,
                "series": [
                    {"label": "train loss", "x": r["line"]["t"], "y": r["line"]["train_loss"]},
                    {"label": "test error", "x": r["line"]["t"], "y": r["line"]["test_error"], "style": "--"},
                ],
            },
        ],
        title=f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: {base} vs {other}",
    )
    m = r["measures"]
    b, o = m[base], m[other]
    rows = [
        Row(
            f"test error: {base} vs {other}",
            f"{pct(b['test_error'])} vs {pct(o['test_error'])} (NLL {num(b['nll'], 4)} vs {num(o['nll'], 4)})",
            setting,
            published,
            pub_setting,
        ),
        Row(
            f"largest Hessian eigenvalue: {base} vs {other}",
            f"{num(b['lambda_max'])} vs {num(o['lambda_max'])}",
            setting,
            "lower for the flatter solution",
            pub_setting,
        ),
        Row(
            f"filter-normalised 1-D sharpness (rise within |alpha| <= {s['radius']}): {base} vs {other}",
            f"{num(b['filter_1d'])} vs {num(o['filter_1d'])}",
            setting,
            "lower for the flatter solution",
            pub_setting,
        ),
    ]
    checks = [o["test_error"] <= b["test_error"], o["lambda_max"] < b["lambda_max"], o["filter_1d"] < b["filter_1d"]]
    inter = [
        lines_spec(
            "train loss along a filter-normalised direction",
            [{"label": k, "x": c["alpha"], "y": c["train_loss"]} for k, c in r["curves"].items()],
            "alpha",
            "train loss",
            logy=True,
        )
    ]
    return (
        r,
        [
            Figure(
                ctx.rel(fig),
                f"Train loss along a filter-normalised direction around each solution (left) and "
                f"along the line from {base} to {other} (right).",
            )
        ],
        rows,
        checks,
        inter,
    )


def outcome(r, figs, rows, checks, inter, other: str, budget: str, train_metrics: dict) -> Outcome:
    """The verdict of a flatness comparison of `compare` (SGD against ``other``): the checks are
    (generalises, lower top eigenvalue, flatter along filter-normalised directions)."""
    m = r["measures"]
    why = (
        f"{other} {'matches or beats' if checks[0] else 'does not match'} SGD's test error {budget} "
        f"({pct(m[other]['test_error'])} vs {pct(m['SGD']['test_error'])}; NLL {num(m[other]['nll'], 4)} vs "
        f"{num(m['SGD']['nll'], 4)}), with a {'lower' if checks[1] else 'higher'} top Hessian eigenvalue and a "
        f"{'lower' if checks[2] else 'higher'} filter-normalised sharpness"
    )
    numbers = {
        "measures": m,
        "train_metrics": train_metrics,
        "checks": {"generalises": checks[0], "lower_lambda_max": checks[1], "flatter_1d": checks[2]},
    }
    return Outcome(numbers, rows, verdict_of(checks), why, figs, inter)


def run(ctx) -> Outcome:
    from .. import io
    from .. import space as sp

    s = ctx.settings
    split = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"]}
    sgd, msgd = ctx.train("sgd", split, s["model"], s["model_args"], seed=s["seed"], **cfg)
    swa_run, mswa = ctx.train(
        "swa", split, s["model"], s["model_args"], seed=s["seed"], swa_start=s["swa_start"], swa_lr=s["swa_lr"], **cfg
    )
    ctx.stop_point("train")
    swa_model, _ = io.load_model(
        ctx.run_dir("swa") / "swa.safetensors", model=ctx.build(split, s["model"], s["model_args"], s["seed"])
    )
    space = sp.WeightSpace(sgd)
    solutions = {
        "SGD": (sgd, space.point(sgd), space.buffers(sgd)),
        "SWA": (swa_model, space.point(swa_model), space.buffers(swa_model)),
    }
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, {s['epochs']} epochs each "
        f"(SWA from epoch {s['swa_start']} at lr {s['swa_lr']})"
    )
    r, figs, rows, checks, inter = compare(
        ctx, split, solutions, "SGD", "SWA", setting, "lower with SWA (CIFAR-10/100, ImageNet)", "Izmailov et al. 2018"
    )
    return outcome(r, figs, rows, checks, inter, "SWA", "at the same budget", {"sgd": msgd, "swa_run": mswa})


STUDY = register(
    Study(
        name="swa-flatness",
        title="Stochastic weight averaging and flat minima",
        paper="Izmailov, Podoprikhin, Garipov, Vetrov and Wilson 2018, Averaging weights leads to wider optima "
        "and better "
        "generalization",
        claim="Averaging SGD iterates finds a wider optimum than SGD, which generalises better at the same training "
        "budget.",
        summary="SWA is flatter and generalises better than SGD at equal budget",
        run=run,
        needs=("modescape.swa",),
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 128},
                "epochs": 10,
                "batch_size": 128,
                "swa_start": 7,
                "eval_train": 10000,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 16, "width": 8, "bn": True},
                "epochs": 300,
                "batch_size": 128,
                "swa_start": 160,
                "swa_lr": 0.01,
                "eval_train": 10000,
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 3, "swa_start": 1, "points": 7},
        stages=("train", "flatness"),
        docs=("ensembles.md", "curvature.md"),
    )
)

"""depth-vs-width: deep-and-narrow against shallow-and-wide at a matched parameter count (the seed's open
"bonus" question).

The seed asks, and leaves unanswered, how depth and width shape the landscape. The published results that
bear on it vary one of them at a time: wider networks have smaller barriers after alignment (Entezari et
al. 2022; Ainsworth et al. 2022), and deeper plain networks have rougher landscapes (Li et al. 2018). Read
at a fixed parameter count they predict that trading width for depth raises the barrier after alignment
and roughens the surface. Measured, per (depth, parameter budget): test error, the Hessian's largest
eigenvalue and trace (`modescape.curvature`), adaptive worst-case sharpness (`modescape.sharpness`), the
smoothness of a filter-normalised plane (`modescape.topology`), the barrier to a second seed before and
after weight matching (`modescape.symmetry`), and the barrier left on a trained Bezier curve
(`modescape.connect`); a conclusion is written from Kendall's tau between depth and each number.
"""

from __future__ import annotations

import math

from .common import data_text, kendall_tau, num, pct, plot_series, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "depths": [1, 2, 3, 4, 8],
    "budgets": [5000, 20000],
    "seeds": [0, 1],
    "epochs": 30,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "grid": 21,
    "radius": 1.0,
    "points": 25,
    "curve_epochs": 10,
    "eval_train": None,
    "trace_samples": 50,
}

COLUMNS = (
    "test_error",
    "lambda_max",
    "trace",
    "adaptive_worst_l2",
    "smoothness",
    "barrier_naive",
    "barrier_aligned",
    "barrier_curve",
)
LOWER_IS_FLATTER = {"lambda_max", "trace", "adaptive_worst_l2"}


def mlp_params(inputs: int, classes: int, depth: int, width: int) -> int:
    """Parameters of the zoo MLP (biases included, no norm layers)."""
    if depth == 0:
        return inputs * classes + classes
    return inputs * width + width + (depth - 1) * (width * width + width) + width * classes + classes


def width_for(inputs: int, classes: int, depth: int, budget: int) -> int:
    """The width whose MLP of ``depth`` hidden layers has the parameter count closest to ``budget``."""
    return min(range(1, 4097), key=lambda w: abs(mlp_params(inputs, classes, depth, w) - budget))


def run(ctx) -> Outcome:
    import numpy as np

    from .. import curvature as cv
    from .. import sharpness as sh
    from .. import space as sp
    from .. import symmetry as sy
    from .. import topology
    from ..connect import train_curve
    from ..directions import random_directions
    from ..families import Plane
    from ..landscape import sweep
    from ..paths import evaluate_path

    s = ctx.settings
    split = ctx.split()
    inputs = int(np.prod(split.input_shape))
    configs = [(d, b, width_for(inputs, split.num_classes, d, b)) for b in s["budgets"] for d in s["depths"]]
    nets = {}
    for d, b, w in configs:
        for seed in s["seeds"]:
            nets[(d, b, seed)] = ctx.train(
                f"d{d}-w{w}-s{seed}",
                split,
                "mlp",
                {"depth": d, "width": w},
                seed=seed,
                epochs=s["epochs"],
                batch_size=s["batch_size"],
                lr=s["lr"],
                wd=s["wd"],
            )
    ctx.stop_point("train")
    train = (
        split.train
        if s["eval_train"] is None
        else (split.train[0][: s["eval_train"]], split.train[1][: s["eval_train"]])
    )
    sa, sb = s["seeds"][:2]

    def measure():
        rows = []
        for d, b, w in configs:
            (a, ma), (bn, _) = nets[(d, b, sa)], nets[(d, b, sb)]
            hev = ctx.evaluator(a, {"train": train}, metrics=("loss",))
            lam = float(cv.eigenvalues(hev, k=1, which="largest", tol=1e-3, seed=0).values[0])
            tr = cv.trace(hev, method="hutch++", rtol=0.05, max_samples=s["trace_samples"], seed=0).estimate
            t = sh.target(ctx.evaluator(a, {"train": train}, metrics=("loss", "accuracy")), None, None, source="train")
            adaptive = sh.measure_all(t, measures=["adaptive_worst_l2"], seed=0, progress=False)["adaptive_worst_l2"]
            dx, dy = random_directions(a, 2, normalization="filter", ignore="biasbn", seed=0)
            r = s["radius"]
            grid = {"x": np.linspace(-r, r, s["grid"]), "y": np.linspace(-r, r, s["grid"])}
            ds = sweep(Plane(sp.WeightSpace(a).point(a), dx, dy), hev, grid, progress=False)
            smooth = topology.persistence(ds, "train_loss").smoothness
            data = {"test": split.test}
            ev = ctx.evaluator(a, data, metrics=("loss", "error"))
            A, B = sy.state_of(a), sy.state_of(bn)
            naive = evaluate_path((A, B), ev, n_points=s["points"]).barriers()["test_loss"]["barrier_linear"]
            spec = sy.infer_spec(a)
            aligned = sy.apply(spec, B, sy.match(a, A, B, "weights", spec=spec))
            al = evaluate_path((A, aligned), ev, n_points=s["points"]).barriers()["test_loss"]["barrier_linear"]
            curve = train_curve(
                a,
                A,
                B,
                split,
                kind="bezier",
                bends=3,
                epochs=s["curve_epochs"],
                lr=s["lr"],
                wd=s["wd"],
                batch_size=s["batch_size"],
                seed=0,
                checkpoint=ctx.out / "curves" / f"d{d}-w{w}.safetensors",
                device=ctx.device,
                progress=ctx.progress,
            )
            cb = evaluate_path(curve.family, ev, n_points=s["points"]).barriers()["test_loss"]["barrier_linear"]
            rows.append(
                {
                    "depth": d,
                    "budget": b,
                    "width": w,
                    "params": mlp_params(inputs, split.num_classes, d, w),
                    "test_error": 1 - ma["test_accuracy"],
                    "lambda_max": lam,
                    "trace": tr,
                    "adaptive_worst_l2": adaptive,
                    "smoothness": smooth,
                    "barrier_naive": naive,
                    "barrier_aligned": al,
                    "barrier_curve": cb,
                }
            )
            ctx.log(f"depth {d} width {w}: " + ", ".join(f"{k} {num(rows[-1][k])}" for k in COLUMNS))
        return rows

    rows = ctx.stage("measure", measure)
    # a network that did not train (chance-level error) has no minimum to describe: it stays in the table and
    # out of the trends
    trained = [r for r in rows if r["test_error"] < 0.5 * (1 - 1 / split.num_classes)]
    failed = [r for r in rows if r not in trained]
    taus = {
        b: {
            c: kendall_tau(
                [r["depth"] for r in trained if r["budget"] == b], [r[c] for r in trained if r["budget"] == b]
            )
            for c in COLUMNS
        }
        for b in s["budgets"]
    }
    fig = ctx.figure("depth_vs_width.png")
    panels = []
    for c, label in (
        ("test_error", "test error"),
        ("lambda_max", "largest Hessian eigenvalue"),
        ("smoothness", "surface smoothness S"),
        ("barrier_aligned", "test-loss barrier after alignment"),
    ):
        panels.append(
            {
                "xlabel": "depth (width matched to the budget)",
                "ylabel": label,
                "logx": True,
                "logx_base": 2,
                "series": [
                    {
                        "label": f"{b} parameters",
                        "x": [r["depth"] for r in rows if r["budget"] == b],
                        "y": [r[c] for r in rows if r["budget"] == b],
                    }
                    for b in s["budgets"]
                ],
            }
        )
    plot_series(fig, panels, width=3.6, height=3.3, title=f"MLPs on {split.meta['name']} at matched parameter counts")

    def trend(c: str) -> str:
        ts = [taus[b][c] for b in s["budgets"]]
        if all(math.isfinite(t) and t > 0.3 for t in ts):
            return "rises with depth"
        if all(math.isfinite(t) and t < -0.3 for t in ts):
            return "falls with depth"
        return "shows no consistent trend with depth"

    names = {
        "test_error": "test error",
        "lambda_max": "the largest Hessian eigenvalue",
        "trace": "the Hessian trace",
        "adaptive_worst_l2": "adaptive worst-case sharpness",
        "smoothness": "surface smoothness",
        "barrier_naive": "the barrier before alignment",
        "barrier_aligned": "the barrier after alignment",
        "barrier_curve": "the barrier left on a trained curve",
    }
    conclusion = (
        f"At matched parameter counts ({', '.join(map(str, s['budgets']))}) on {split.meta['name']}, trading "
        "width for depth: "
        + "; ".join(
            f"{names[c]} {trend(c)} (tau " + "/".join(num(taus[b][c], 2) for b in s["budgets"]) + ")" for c in COLUMNS
        )
        + "."
    )
    if failed:
        conclusion += (
            " Not trained at all with these settings (left out of the trends): "
            + ", ".join(f"depth {r['depth']} width {r['width']} ({pct(r['test_error'])} test error)" for r in failed)
            + ": the deepest, narrowest networks are also the hardest to train."
        )
    after_up = all(math.isfinite(taus[b]["barrier_aligned"]) and taus[b]["barrier_aligned"] > 0 for b in s["budgets"])
    rougher = all(math.isfinite(taus[b]["smoothness"]) and taus[b]["smoothness"] < 0 for b in s["budgets"])
    setting = (
        f"MLPs depth {s['depths']} at {s['budgets']} parameters, {data_text(split.meta)}, {s['epochs']} epochs, "
        f"seeds {sa} and {sb}"
    )
    table = []
    for r in rows:
        table.append(
            Row(
                f"depth {r['depth']}, width {r['width']} ({r['params']} parameters)",
                ("did not train: " if r in failed else "")
                + f"error {pct(r['test_error'])}, lambda_max {num(r['lambda_max'])}, trace {num(r['trace'])}, "
                f"adaptive {num(r['adaptive_worst_l2'])}, S {num(r['smoothness'])}, "
                f"barrier {num(r['barrier_naive'])}"
                f" -> {num(r['barrier_aligned'])} aligned, {num(r['barrier_curve'])} on a curve",
                setting,
            )
        )
    table.append(
        Row(
            "barrier after alignment as width is traded for depth",
            trend("barrier_aligned"),
            setting,
            "rises (wider is better connected)",
            "Entezari et al. 2022; Ainsworth et al. 2022 (width alone)",
        )
    )
    table.append(
        Row(
            "surface smoothness as width is traded for depth",
            trend("smoothness"),
            setting,
            "falls (deeper plain nets are rougher)",
            "Li et al. 2018 (depth alone, ResNets without skips)",
        )
    )
    why = (
        f"the barrier after alignment {trend('barrier_aligned')} and the surface smoothness {trend('smoothness')} at "
        "both budgets; this is a prediction read off published one-factor results, not a published number"
    )
    numbers = {
        "rows": rows,
        "kendall_tau_with_depth": {str(b): t for b, t in taus.items()},
        "not_trained": [{"depth": r["depth"], "width": r["width"]} for r in failed],
        "checks": {"barrier_after_alignment_rises_with_depth": after_up, "smoothness_falls_with_depth": rougher},
    }
    return Outcome(
        numbers,
        table,
        verdict_of([after_up, rougher]),
        why,
        [
            Figure(
                ctx.rel(fig),
                "Test error, sharpness, surface smoothness and the barrier after alignment "
                "against depth at two matched parameter budgets.",
            )
        ],
        [
            {
                "kind": "lines",
                "title": f"{names[c]} against depth",
                "xlabel": "depth",
                "ylabel": c,
                "logx": True,
                "logy": False,
                "series": [
                    {
                        "label": f"{b} parameters",
                        "x": [r["depth"] for r in rows if r["budget"] == b],
                        "y": [r[c] for r in rows if r["budget"] == b],
                        "dash": False,
                    }
                    for b in s["budgets"]
                ],
            }
            for c in ("barrier_aligned", "smoothness")
        ],
        conclusion,
    )


STUDY = register(
    Study(
        name="depth-vs-width",
        title="Depth versus width at a matched parameter count",
        paper="The seed's open question, read against Li et al. 2018, Entezari et al. 2022 and Ainsworth et al. 2022",
        claim="Trading width for depth at a fixed parameter count raises the barrier between aligned minima and "
        "roughens "
        "the landscape (what the one-factor results predict).",
        summary="deep-narrow vs shallow-wide at equal parameters: sharpness, smoothness, barriers",
        run=run,
        needs=("modescape.topology",),
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "data_args": {"n_train": 10000},
                "budgets": [50000, 200000],
                "epochs": 10,
                "batch_size": 128,
                "eval_train": 2000,
            },
            "gpu": {
                **BASE,
                "data": "mnist",
                "depths": [1, 2, 4, 8, 16],
                "budgets": [100000, 400000, 1600000],
                "epochs": 20,
                "batch_size": 128,
                "eval_train": 10000,
                "curve_epochs": 20,
                "grid": 41,
            },
        },
        smoke={
            "depths": [1, 2],
            "budgets": [1000],
            "epochs": 2,
            "grid": 5,
            "points": 5,
            "curve_epochs": 1,
            "trace_samples": 12,
        },
        stages=("train", "measure"),
        docs=("landscapes.md", "symmetry.md", "curvature.md"),
    )
)

"""grokking: generalisation long after memorisation on modular arithmetic (Power, Burda, Edwards, Babuschkin
and Misra 2022), seen through the loss landscape.

Claim: a small transformer trained on a fraction of the equations a + b mod p (AdamW, weight decay) first
memorises them (train accuracy 1, test accuracy low) and generalises only much later; weight decay is what
makes it happen. Measured: the zoo transformer on ``modular-add``, full batch (an epoch is a step), from two
seeds, keeping every ``save_every``-th checkpoint; at each checkpoint of the first seed the weight norm, the
top eigenvalue of the Hessian and of the GGN of the training loss (`modescape.curvature`), the
filter-normalised curvature ``d^T H d`` (`modescape.sharpness`), and train / test loss along a
filter-normalised random direction (a 1-D slice); between the two seeds, the test-loss barrier along the
straight line before and after weight matching and activation matching (`modescape.symmetry.align`), once
where both have memorised but not generalised and once at the last checkpoint where both have generalised
(AdamW's late loss spikes avoided); and the trajectory's PCA plane with the test loss
(`modescape.landscape.trajectory_plane`). The numbers and figures of docs/transformers.md ("Grokking along a
run") are this study's ``cpu`` preset on one thread (``OMP_NUM_THREADS=1``: AdamW's loss spikes amplify the
last-bit differences of another thread count).
"""

from __future__ import annotations

import json
from typing import Any

from .common import lines_spec, model_text, num, verdict_of
from .registry import Figure, Outcome, Row, Study, register

CPU = {
    "data": "modular-add",
    "data_args": {"p": 23, "train_fraction": 0.6},
    "model": "transformer",
    "model_args": {"width": 64, "heads": 4, "layers": 1},
    "epochs": 2000,
    "save_every": 50,
    "lr": 1e-3,
    "wd": 1.0,
    "seed": 0,
    "seeds": [0, 1],
    "slice_points": 21,
    "plane_points": 15,
    "barrier_points": 13,
    "delay": 5.0,
}

MEMORISED, GENERALISED = 0.99, 0.95  # train / test accuracy that mark the two events of a run


def first_epoch(history, key: str, level: float) -> int | None:
    """The first epoch whose ``key`` reaches ``level`` (None when none does)."""
    return next((h["epoch"] for h in history if h[key] >= level), None)


def saved_epochs(s) -> list[int]:
    """The epochs `modescape.train` kept a checkpoint of (0: the initialisation)."""
    return sorted({0, *range(s["save_every"], s["epochs"] + 1, s["save_every"]), s["epochs"]})


def measure_checkpoint(ctx, model, state, split, slice_points: int, seed: int) -> dict[str, Any]:
    """Weight norm, sharpness (Hessian and GGN top eigenvalue, filter-normalised curvature) and a
    filter-normalised 1-D slice of train and test loss at one checkpoint."""
    import numpy as np

    from .. import curvature as cv
    from .. import io
    from .. import sharpness as sh
    from .. import space as sp
    from ..directions import random_direction

    io.load_state_into(model, state)
    ev = ctx.evaluator(model, {"train": split.train, "test": split.test})
    point = ev.point0
    out: dict[str, Any] = {"weight_norm": float(sp.norm(point))}
    lam = cv.eigenvalues(ev, None, point, k=1, tol=1e-3, source="train", seed=seed, progress=False)
    out["lambda_max"] = float(lam.values[0])
    ggn = cv.eigenvalues(ev, None, point, k=1, tol=1e-3, source="train", seed=seed, curvature="ggn", progress=False)
    out["ggn_lambda_max"] = float(ggn.values[0])
    t = sh.target(ev, None, point, source="train")
    out["filter_curvature"] = sh.filter_sharpness(t, radius=1.0, n_points=5, n_directions=2, seed=seed)["curvature"]
    d = random_direction(point, "filter", "biasbn", seed=seed, space=ev.space)
    alphas = np.linspace(-1.0, 1.0, slice_points)
    m = ev([{k: point[k] + float(a) * d[k] for k in point} for a in alphas])
    out["slice"] = {
        "alpha": alphas.tolist(),
        "train_loss": m["train_loss"].tolist(),
        "test_loss": m["test_loss"].tolist(),
    }
    return out


def barrier_between(model, sa, sb, split, n_points: int) -> dict[str, Any]:
    """Barriers (linear convention) along A -> B before alignment and after weight / activation matching."""
    from .. import symmetry as sy

    out = {}
    for method in ("weights", "activations"):
        res = sy.align(
            model, sa, sb, {"train": split.train, "test": split.test}, method=method, n_points=n_points, progress=False
        )
        bars = res.summary()["barriers"]
        for when, key in (("before", "before"), ("after", f"after_{method}")):
            out[key] = {m: bars[when][m]["barrier_linear"] for m in ("train_loss", "test_loss", "test_error")}
    return out


def run(ctx) -> Outcome:
    from .. import io
    from ..train import checkpoint_path

    s = ctx.settings
    split = ctx.split()
    seeds = [int(x) for x in s["seeds"]]
    cfg = {
        "epochs": s["epochs"],
        "batch_size": len(split.train[1]),
        "lr": s["lr"],
        "wd": s["wd"],
        "optimizer": "adamw",
        "schedule": "constant",
        "save_every": s["save_every"],
    }

    def train_all():
        hist = {}
        for seed in seeds:
            ctx.train(f"seed{seed}", split, s["model"], s["model_args"], seed=seed, **cfg)
            hist[str(seed)] = json.loads((ctx.run_dir(f"seed{seed}") / "trainer.json").read_text())["history"]
        return hist

    histories = ctx.stage("train", train_all)
    s0 = seeds[0]
    hist = histories[str(s0)]
    events = {
        "memorised": first_epoch(hist, "train_accuracy", MEMORISED),
        "generalised": first_epoch(hist, "test_accuracy", GENERALISED),
    }
    ctx.log(f"memorised at epoch {events['memorised']}, generalised at epoch {events['generalised']}")
    epochs = saved_epochs(s)
    model = ctx.build(split, s["model"], s["model_args"], s0)

    def state_at(seed: int, epoch: int):
        return io.load_tensors(checkpoint_path(ctx.run_dir(f"seed{seed}"), epoch))

    def checkpoints():
        out = []
        for e in epochs:
            c = measure_checkpoint(ctx, model, state_at(s0, e), split, s["slice_points"], s0)
            c.update({"epoch": e, **{k: v for k, v in hist[e - 1].items() if k != "epoch"}} if e > 0 else {"epoch": 0})
            out.append(c)
        return out

    ck = ctx.stage("checkpoints", checkpoints)

    def acc(seed: int, e: int, key: str) -> float:
        return histories[str(seed)][e - 1][key]

    def barriers():
        both = [e for e in epochs if e > 0 and all(acc(x, e, "train_accuracy") >= MEMORISED for x in seeds)]
        memorised = next((e for e in both if all(acc(x, e, "test_accuracy") < 0.9 for x in seeds)), None)
        generalised = [e for e in both if all(acc(x, e, "test_accuracy") >= 0.99 for x in seeds)]
        out = {}
        for label, e in (("memorised", memorised), ("generalised", generalised[-1] if generalised else None)):
            if e is None:
                continue
            sa, sb = (state_at(x, e) for x in seeds)
            out[label] = {
                "epoch": e,
                **barrier_between(model, sa, sb, split, s["barrier_points"]),
                "test_accuracy": [acc(x, e, "test_accuracy") for x in seeds],
            }
        return out

    bars = ctx.stage("barriers", barriers)

    def plane():
        import numpy as np

        from .. import space as sp
        from ..landscape import sweep, trajectory_plane

        points = [sp.WeightSpace(model).point(io.load_state_into(model, state_at(s0, e))) for e in epochs]
        pl, pca = trajectory_plane(points)
        path = pca.path.numpy()
        span = [(float(path[:, i].min()), float(path[:, i].max())) for i in range(2)]
        grid = {
            d: np.linspace(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo), s["plane_points"])
            for d, (lo, hi) in zip(("x", "y"), span, strict=True)
        }
        ds = sweep(pl, ctx.evaluator(model, {"train": split.train, "test": split.test}), grid, progress=False)
        return {
            "x": grid["x"].tolist(),
            "y": grid["y"].tolist(),
            "test_loss": ds["test_loss"].values.tolist(),
            "train_loss": ds["train_loss"].values.tolist(),
            "path": path.tolist(),
            "explained": pca.explained.tolist(),
        }

    pl = ctx.stage("plane", plane)
    return outcome(ctx, split, hist, events, ck, bars, pl)


def outcome(ctx, split, hist, events, ck, bars, pl) -> Outcome:
    """Figures, table and verdict from the stages' numbers."""
    from ..plots.grokking import plot_grokking_plane, plot_grokking_run, plot_grokking_slices

    s = ctx.settings
    p, frac = s["data_args"]["p"], s["data_args"]["train_fraction"]
    n_train, n_test = len(split.train[1]), len(split.test[1])
    setting = (
        f"{model_text(s['model'], s['model_args'])} on a + b mod {p} ({n_train} train / {n_test} test equations), "
        f"AdamW lr {s['lr']} wd {s['wd']}, full batch, {s['epochs']} steps, seeds {s['seeds'][0]} and {s['seeds'][1]}"
    )
    paper = "Power et al. 2022 (a + b mod 97 and other operations, 2-layer transformer, AdamW)"
    figs = [
        Figure(
            ctx.rel(
                plot_grokking_run(
                    hist,
                    ck,
                    events,
                    ctx.figure("grokking_run.png"),
                    f"a + b mod {p}, {frac:.0%} of pairs",
                    linthresh=s["save_every"],
                )
            ),
            "Accuracies per step, the weight norm and the sharpness of the training loss per checkpoint "
            "(dotted: train accuracy 0.99; dashed: test accuracy 0.95).",
            "grokking_run.png",
        ),
        Figure(
            ctx.rel(plot_grokking_slices(ck, ctx.figure("grokking_slices.png"))),
            "Train and test loss along a filter-normalised random direction through each checkpoint.",
            "grokking_slices.png",
        ),
        Figure(
            ctx.rel(plot_grokking_plane(pl, ctx.figure("grokking_plane.png"))),
            "The trajectory on its PCA plane, over the test loss.",
            "grokking_plane.png",
        ),
    ]
    mem, gen = events["memorised"], events["generalised"]
    delay = gen / mem if mem and gen else None
    after = [c for c in ck if mem is not None and c["epoch"] >= mem]
    peak = max(after, key=lambda c: c["weight_norm"]) if after else None
    at_gen = min((c for c in ck if gen is not None and c["epoch"] >= gen), key=lambda c: c["epoch"], default=None)
    last = ck[-1]
    shrinks = peak is not None and at_gen is not None and at_gen["weight_norm"] < peak["weight_norm"]
    rows = [
        Row(
            "step where train accuracy reaches 0.99 (memorised) / test accuracy 0.95 (generalised)",
            f"{num(mem)} / {num(gen)}" + (f" ({delay:.1f} x later)" if delay else ""),
            setting,
            "memorisation within ~10^3 steps, generalisation up to ~10^5 steps, orders of magnitude later",
            paper,
        ),
        Row(
            "final train / test accuracy",
            f"{num(last.get('train_accuracy'))} / {num(last.get('test_accuracy'))}",
            setting,
            "1 / 1 (after grokking)",
            paper,
        ),
        Row(
            "weight norm: peak after memorisation -> at generalisation -> end",
            " -> ".join(num(c["weight_norm"] if c else None) for c in (peak, at_gen, last))
            + (f" (epochs {peak['epoch']}, {at_gen['epoch']}, {last['epoch']})" if peak and at_gen else ""),
            setting,
            "weight decay is the intervention that most improves data efficiency (no single number)",
            paper,
        ),
        Row(
            "top Hessian / GGN eigenvalue of the train loss: at the weight-norm peak -> end",
            f"{num(peak['lambda_max'] if peak else None)} / "
            f"{num(peak['ggn_lambda_max'] if peak else None)} -> {num(last['lambda_max'])} / "
            f"{num(last['ggn_lambda_max'])}",
            setting,
            "-",
            "-",
        ),
    ]
    for label, b in bars.items():
        rows.append(
            Row(
                f"test-loss barrier between seeds {s['seeds'][0]} and {s['seeds'][1]} at epoch {b['epoch']} "
                f"({label}): before / after weight matching / after activation matching",
                f"{num(b['before']['test_loss'])} / {num(b['after_weights']['test_loss'])} / "
                f"{num(b['after_activations']['test_loss'])}",
                setting,
                "-",
                "-",
            )
        )
    checks = [mem is not None, gen is not None and delay is not None and delay >= s["delay"], shrinks]
    why = (
        f"the run {'memorises' if mem else 'does not memorise'} (train accuracy 0.99 at step {num(mem)}) and "
        + (
            f"generalises at step {gen}, {delay:.1f} times later (the study asks for at least {s['delay']:g})"
            if gen and delay
            else "does not generalise within the budget (test accuracy < 0.95): raise epochs, lr or train_fraction"
        )
        + (
            f"; weight decay shrinks the weights from {num(peak['weight_norm'])} to {num(at_gen['weight_norm'])} "
            "before generalisation"
            if shrinks and peak and at_gen
            else "; the weight norm does not fall between memorisation and generalisation"
        )
        + ". Weight decay's necessity is the paper's ablation, not rerun here (no wd = 0 control)"
    )
    ce = [c["epoch"] for c in ck]
    inter = [
        lines_spec(
            "accuracy along the run",
            [
                {"label": "train accuracy", "x": [h["epoch"] for h in hist], "y": [h["train_accuracy"] for h in hist]},
                {"label": "test accuracy", "x": [h["epoch"] for h in hist], "y": [h["test_accuracy"] for h in hist]},
            ],
            "epoch (= step)",
            "accuracy",
        ),
        lines_spec(
            "sharpness and weight norm along the run",
            [
                {"label": "Hessian lambda_max", "x": ce, "y": [c["lambda_max"] for c in ck]},
                {"label": "GGN lambda_max", "x": ce, "y": [c["ggn_lambda_max"] for c in ck]},
                {"label": "weight norm", "x": ce, "y": [c["weight_norm"] for c in ck], "style": "--"},
            ],
            "epoch (= step)",
            "value",
            logy=True,
        ),
    ]
    numbers = {
        "n_train": n_train,
        "n_test": n_test,
        "events": events,
        "delay": delay,
        "checkpoints": [{k: v for k, v in c.items() if k != "slice"} for c in ck],
        "barriers": bars,
        "plane_explained": pl["explained"],
        "checks": {"memorises": checks[0], "generalises_late": checks[1], "weights_shrink": checks[2]},
    }
    return Outcome(numbers, rows, verdict_of(checks), why, figs, inter)


STUDY = register(
    Study(
        name="grokking",
        title="Grokking: generalisation long after memorisation",
        paper="Power, Burda, Edwards, Babuschkin and Misra 2022, Grokking: generalization beyond overfitting on "
        "small algorithmic datasets",
        claim="A small transformer trained on part of a modular-arithmetic table memorises it early and "
        "generalises only long after; weight decay drives it.",
        summary="memorise, then generalise much later: sharpness, weight norm and barriers along the run",
        run=run,
        needs=("modescape.symmetry", "modescape.landscape"),
        presets={
            "cpu": CPU,
            "gpu": {
                **CPU,
                "data_args": {"p": 97, "train_fraction": 0.4},
                "model_args": {"width": 128, "heads": 4, "layers": 2},
                "epochs": 10000,
                "save_every": 250,
            },
        },
        smoke={
            "data_args": {"p": 7, "train_fraction": 0.6},
            "model_args": {"width": 32, "heads": 2, "layers": 1},
            "epochs": 40,
            "save_every": 20,
            "seeds": [0, 0],
            "lr": 0.01,
            "wd": 0.1,
            "slice_points": 5,
            "plane_points": 4,
            "barrier_points": 5,
        },
        stages=("train", "checkpoints", "barriers", "plane"),
        docs=("transformers.md",),
    )
)

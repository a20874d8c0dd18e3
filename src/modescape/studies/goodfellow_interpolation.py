"""goodfellow-interpolation: the straight line from the initialisation to the trained network, and between
two minima (Goodfellow, Vinyals and Saxe 2015).

Claim: along the line (1 - t) theta_init + t theta_trained the training loss falls monotonically (no
obstacle on the way, although SGD took a curved route); the line between two minima trained from
different seeds rises to a barrier. Measured: both lines with `modescape.paths.evaluate_path` (each point
carries its endpoints' BatchNorm statistics, or recomputes them, by the model's default policy), the largest
rise of the train loss between consecutive points on [0, 1], and both barrier conventions between minima.
"""

from __future__ import annotations

from .common import data_text, lines_spec, max_rise, model_text, num, path_numbers, plot_series, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seeds": [0, 1],
    "range": [-0.25, 1.25],
    "points": 61,
    "pair_points": 41,
}


def run(ctx) -> Outcome:
    import torch

    from .. import space as sp
    from ..families import Line
    from ..paths import evaluate_path

    s = ctx.settings
    split = ctx.split()
    cfg = {k: s[k] for k in ("epochs", "batch_size", "lr", "wd")}
    (sa, sb) = s["seeds"]
    a, ma = ctx.train(f"seed{sa}", split, s["model"], s["model_args"], seed=sa, **cfg)
    b, mb = ctx.train(f"seed{sb}", split, s["model"], s["model_args"], seed=sb, **cfg)
    ctx.stop_point("train")
    init = ctx.build(split, s["model"], s["model_args"], seed=sa)  # the same initialisation as run A
    space = sp.WeightSpace(a)
    data = {"train": split.train, "test": split.test}

    def lines():
        ev = ctx.evaluator(a, data, metrics=("loss", "error"))
        t = torch.linspace(s["range"][0], s["range"][1], s["points"], dtype=torch.float64)
        t = torch.unique(torch.cat([t, torch.tensor([0.0, 1.0], dtype=torch.float64)]))
        line = Line(
            space.point(init),
            space.point(a),
            buffers=[space.buffers(init), space.buffers(a)] if space.buffers(a) else None,
        )
        up = evaluate_path(line, ev, t=t, name="init -> trained")
        pair = evaluate_path((a, b), ev, n_points=s["pair_points"], name=f"seed {sa} -> seed {sb}")
        inside = (up.t >= 0) & (up.t <= 1)
        rise = max_rise(up.metrics["train_loss"][inside].tolist())
        return {
            "init_to_trained": {**path_numbers(up), "max_rise_train_loss": rise},
            "between_minima": path_numbers(pair),
            "bn": ev.bn,
            "endpoints": {f"seed{sa}": ma, f"seed{sb}": mb},
        }

    r = ctx.stage("lines", lines)
    up, pair = r["init_to_trained"], r["between_minima"]
    loss0, loss1 = up["summary"]["train_loss"]["start"], up["summary"]["train_loss"]["end"]
    rise = r["init_to_trained"]["max_rise_train_loss"]
    monotone = rise <= 1e-4 * max(loss0 - loss1, 1e-12)
    bl = pair["summary"]["train_loss"]["barrier_linear"]
    be = pair["summary"]["test_error"]["barrier_linear"]
    barrier = bl > 0.05 and be > 0.01

    fig = ctx.figure("interpolation.png")

    def panel(p, title):
        return {
            "title": title,
            "xlabel": "t",
            "ylabel": "loss",
            "logy": True,
            "vline": None,
            "series": [
                {"label": "train loss", "x": p["t"], "y": p["values"]["train_loss"]},
                {"label": "test loss", "x": p["t"], "y": p["values"]["test_loss"], "style": "--"},
            ],
        }

    plot_series(
        fig,
        [
            panel(up, "initialisation (t = 0) -> trained (t = 1)"),
            panel(pair, f"seed {sa} (t = 0) -> seed {sb} (t = 1)"),
        ],
        title=f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: straight lines",
    )
    setting = f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, {s['epochs']} epochs"
    published = "Goodfellow et al. 2015: MNIST and CIFAR-10 networks (figures; no single number)"
    table = [
        Row(
            "train loss along init -> trained, t in [0, 1]",
            f"{'monotone' if monotone else 'not monotone'} (largest rise {num(rise)}; {num(loss0)} -> {num(loss1)})",
            setting,
            "falls monotonically",
            published,
        ),
        Row(
            "barrier between two minima (different seeds)",
            f"train loss {num(bl)}, test error {points(be)} above the chord",
            setting + f", seeds {sa} and {sb}",
            "a barrier (qualitative)",
            published,
        ),
    ]
    why = (
        f"the train loss falls monotonically from the initialisation to the trained network "
        f"({'largest rise ' + num(rise) if rise > 0 else 'no rise at all'}) and the line between the two seeds "
        f"rises {num(bl)} in train loss ({points(be)} of test error) above the chord"
        if monotone and barrier
        else f"monotone: {monotone} (largest rise {num(rise)}); barrier between minima: {barrier} (train loss "
        f"{num(bl)}, test error {points(be)})"
    )
    interactive = [
        lines_spec(
            "train and test loss from initialisation to trained",
            [
                {"label": "train loss", "x": up["t"], "y": up["values"]["train_loss"]},
                {"label": "test loss", "x": up["t"], "y": up["values"]["test_loss"], "style": "--"},
            ],
            "t",
            "loss",
            logy=True,
        )
    ]
    return Outcome(
        numbers={
            "init_to_trained": {"max_rise_train_loss": rise, "monotone": monotone, "summary": up["summary"]},
            "between_minima": {"summary": pair["summary"], "barrier": barrier},
            "endpoints": r["endpoints"],
            "bn": r["bn"],
        },
        table=table,
        verdict=verdict_of([monotone, barrier]),
        why=why,
        figures=[
            Figure(
                ctx.rel(fig),
                "Loss along the line from the initialisation to the trained network "
                "(left; t beyond [0, 1] extrapolates) and between two minima (right).",
            )
        ],
        interactive=interactive,
    )


STUDY = register(
    Study(
        name="goodfellow-interpolation",
        title="Straight lines through weight space",
        paper="Goodfellow, Vinyals and Saxe 2015, Qualitatively characterizing neural network optimization problems",
        claim="The training loss falls monotonically along the straight line from the initialisation to the trained "
        "network; the line between two minima trained from different seeds crosses a barrier.",
        summary="init -> trained is monotone; two seeds' minima are separated by a barrier",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 128},
                "epochs": 5,
                "batch_size": 128,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "resnet",
                "model_args": {"depth": 20, "width": 1},
                "epochs": 100,
                "batch_size": 128,
                "lr": 0.1,
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 2, "points": 9, "pair_points": 5},
        tour={},
        stages=("train", "lines"),
        docs=("landscapes.md",),
    )
)

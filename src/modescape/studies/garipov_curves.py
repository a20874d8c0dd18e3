"""garipov-curves: minima joined by curves of low loss (Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018).

Claim: two networks trained from different seeds are separated by a high barrier on the straight segment,
yet a simple curve (a quadratic Bezier curve or a polygonal chain with one bend) trained with t ~ U[0, 1]
joins them at almost constant low loss: VGG16 on CIFAR-10, endpoints at 6.79-6.94% test error, the Bezier
curve's highest test error 7.75%, the PolyChain's 8.08%. Measured with `modescape.connect.train_curve`
(resumable checkpoints) and `modescape.paths.evaluate_path` (BatchNorm statistics recomputed at every
point), and the plane through the Bezier curve's bends (`connect.evaluate_plane`, Garipov et al. Fig. 1).
This is part 1 of the former ``studies/connect_mnist.py``; with ``--data-root`` MNIST it runs that script's
settings (the numbers of docs/mode-connectivity.md).
"""

from __future__ import annotations

from .common import contour_spec, data_text, lines_spec, model_text, path_numbers, pct, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 128},
    "epochs": 40,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seeds": [0, 1],
    "bends": 3,
    "curve_epochs": 40,
    "curve_lr": 0.05,
    "points": 61,
    "plane_points": 21,
}


def endpoints(ctx, split):
    """The two minima (seeds), trained with the cosine schedule; shared with the fge study's settings."""
    s = ctx.settings
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"], "schedule": "cosine"}
    out = []
    for seed in s["seeds"]:
        out.append(ctx.train(f"run-{seed}-{s['epochs']}", split, s["model"], s["model_args"], seed=seed, **cfg))
    return out


def run(ctx) -> Outcome:
    import torch

    from .. import space as sp
    from ..connect import evaluate_plane, train_curve
    from ..paths import PathResult, evaluate_path
    from ..plots import plot_paths, plot_plane

    s = ctx.settings
    split = ctx.split()
    (a, ma), (b, mb) = endpoints(ctx, split)
    ctx.stop_point("train")
    space = sp.WeightSpace(a)
    pa, pb = space.point(a), space.point(b)
    data = {"train": split.train, "test": split.test}
    curves = {}
    for kind in ("bezier", "polychain"):
        ckpt = ctx.out / f"{kind}.safetensors"
        curves[kind] = train_curve(
            a,
            pa,
            pb,
            split,
            kind=kind,
            bends=s["bends"],
            epochs=s["curve_epochs"],
            lr=s["curve_lr"],
            wd=s["wd"],
            batch_size=s["batch_size"],
            seed=0,
            checkpoint=ckpt,
            device=ctx.device,
            progress=ctx.progress,
        )
        ctx.stop_point(f"curve_{kind}")

    def paths():
        ev = ctx.evaluator(a, data, metrics=("loss", "error"), bn="recompute")
        out = {"segment": path_numbers(evaluate_path((pa, pb), ev, n_points=s["points"], name="segment"))}
        for kind, run in curves.items():
            out[kind] = path_numbers(evaluate_path(run.family, ev, n_points=s["points"], name=kind))
            out[kind]["history"] = run.history
        return out

    p = ctx.stage("paths", paths)

    def plane():
        ev = ctx.evaluator(a, {"test": split.test}, metrics=("error",), bn="recompute", bn_data=split.train)
        res = evaluate_plane(curves["bezier"].family, ev, n_points=s["plane_points"], progress=False)
        return res.to_dict()

    pl = ctx.stage("plane", plane)

    # -- figures (drawn from the stored numbers, so a resumed run draws the same) -------------------------
    from ..connect import PlaneResult
    from ..evaluate import Metrics

    def as_path(d):
        names = tuple(d["values"])
        vals = torch.tensor([d["values"][n] for n in names], dtype=torch.float64).T
        return PathResult(
            torch.tensor(d["t"], dtype=torch.float64),
            Metrics(vals, names, d["bn"]),
            torch.zeros(len(d["t"]), dtype=torch.float64),
            d["name"],
        )

    fig_path = ctx.figure("path.png")
    title = (
        f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: curves vs segment "
        f"({s['points']} points, BN recompute)"
    )
    plot_paths(
        [as_path(p["bezier"]), as_path(p["polychain"]), as_path(p["segment"])],
        fig_path,
        metrics=("train_loss", "test_loss", "test_error"),
        title=title,
    )
    plane_res = PlaneResult(
        torch.tensor(pl["x"]),
        torch.tensor(pl["y"]),
        {k: torch.tensor(v) for k, v in pl["values"].items()},
        torch.tensor(pl["bends"]),
        torch.tensor(pl["curve"]),
        pl["bn"],
    )
    fig_plane = ctx.figure("plane.png")
    plot_plane(plane_res, fig_plane, title=f"{split.meta['name']}: test error, plane of the Bezier bends")
    mnist = split.meta["name"] == "mnist"
    figures = [
        Figure(
            ctx.rel(fig_path),
            "Train loss, test loss and test error along the trained Bezier curve, the "
            "PolyChain and the straight segment.",
            "connect_mnist_path.png" if mnist else "",
        ),
        Figure(
            ctx.rel(fig_plane),
            "Test error on the plane through the Bezier curve's three bends, with the curve and the segment.",
            "connect_mnist_plane.png" if mnist else "",
        ),
    ]

    seg = p["segment"]["summary"]["test_error"]
    worse = max(seg["start"], seg["end"])
    best_end = min(seg["start"], seg["end"])
    bez, poly = p["bezier"]["summary"]["test_error"]["max"], p["polychain"]["summary"]["test_error"]["max"]
    within = {k: p[k]["summary"]["test_error"]["max"] - worse <= 0.01 for k in curves}
    barrier = seg["barrier_mean"] > 0.01
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, endpoints {s['epochs']} epochs, "
        f"curves {s['curve_epochs']} epochs, {s['bends']} bends"
    )
    pub = "VGG16 on CIFAR-10 (Garipov et al. 2018)"
    table = [
        Row("endpoints' test error", f"{pct(best_end)}-{pct(worse)}", setting, "6.79-6.94%", pub),
        Row("highest test error on the Bezier curve", pct(bez), setting, "7.75%", pub),
        Row("highest test error on the PolyChain", pct(poly), setting, "8.08%", pub),
        Row(
            "highest test error on the segment",
            f"{pct(seg['max'])} (barrier {points(seg['barrier_mean'])} above the ends' mean)",
            setting,
            "a high barrier (their Fig. 1)",
            pub,
        ),
    ]
    checks = [barrier, within["bezier"], within["polychain"]]
    why = (
        f"the segment rises to {pct(seg['max'])} test error while the Bezier curve stays within "
        f"{points(bez - worse)} and the PolyChain within {points(poly - worse)} of the worse endpoint "
        f"(the 1-point target; published: {points(0.0775 - 0.0694)} and {points(0.0808 - 0.0694)})"
    )
    numbers = {
        "endpoints": {"a": ma, "b": mb},
        "summary": {k: p[k]["summary"] for k in ("segment", "bezier", "polychain")},
        "worse_endpoint_test_error": worse,
        "within_1_point": within,
        "segment_barrier": barrier,
        "length": {k: p[k]["length"] for k in ("segment", "bezier", "polychain")},
    }
    inter = [
        lines_spec(
            "test error along the paths",
            [
                {"label": k, "x": p[k]["t"], "y": p[k]["values"]["test_error"]}
                for k in ("bezier", "polychain", "segment")
            ],
            "t",
            "test error",
        ),
        contour_spec(
            "test error on the plane of the Bezier bends",
            pl["x"],
            pl["y"],
            pl["values"]["test_error"],
            "x",
            "y",
            "test error",
            path=pl["curve"],
            markers=[
                {"label": lab, "x": c[0], "y": c[1]} for lab, c in zip(("A", "bend", "B"), pl["bends"], strict=True)
            ],
        ),
    ]
    return Outcome(numbers, table, verdict_of(checks), why, figures, inter)


STUDY = register(
    Study(
        name="garipov-curves",
        title="Mode connectivity: curves of low loss between minima",
        paper="Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, Loss surfaces, mode connectivity, and fast "
        "ensembling of DNNs",
        claim="Minima from different seeds are separated by a barrier on the segment but joined by simple "
        "trained curves "
        "of almost constant loss (VGG16 on CIFAR-10: endpoints 6.79-6.94% test error, Bezier at most 7.75%, "
        "PolyChain at most 8.08%).",
        summary="Bezier and PolyChain curves join two minima the segment separates",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {**BASE, "data": "mnist", "epochs": 10, "batch_size": 128, "curve_epochs": 20},
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 16, "width": 8, "bn": True},
                "epochs": 200,
                "batch_size": 128,
                "lr": 0.05,
                "curve_epochs": 600,
                "curve_lr": 0.015,
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 3, "curve_epochs": 2, "points": 7, "plane_points": 5},
        tour={"epochs": 30, "curve_epochs": 20, "points": 41, "plane_points": 17},
        stages=("train", "curve_bezier", "curve_polychain", "paths", "plane"),
        docs=("mode-connectivity.md",),
    )
)

"""fort-subspaces: random subspaces, the intrinsic dimension, the radial experiment and wedges (Li, Farkhoor,
Liu and Yosinski 2018; Fort and Jastrzebski 2019).

Claims: (1) training only d coordinates of a random subspace theta_0 + P z reaches 90% of full training's
accuracy at a d far below the parameter count D: the intrinsic dimension (about 750 for a 784-200-200-10 MLP
on MNIST, Li et al. 2018); (2) how low a loss such training reaches depends on where it starts: moved a
distance r from the initialisation, the reachable loss changes with r (Fort and Jastrzebski's radial
experiment); (3) independently trained optima are joined by a star of low-loss segments through one shared
connector point (their "wedges"), where the straight segments between optima cross barriers. Measured with
`modescape.subspace` (`intrinsic_dimension`, `radial`, `wedge`). The subspaces start from the
initialisation of the first optimum, or from a fresh model of ``sub_model_args`` (seed ``seed``) when given;
``full_lr`` trains the full baseline (P = I) with its own learning rate. The ``cpu`` preset with
``--data-root`` (MNIST) is the setting of docs/volumes.md ("Subspaces and wedges": the 784-200-200-10
intrinsic dimension and radial experiment with Adam, the wedge on three 784-128-128-10 optima), and
``--figures docs/figures`` rewrites its figures ``volumes_{intrinsic_dimension,radial,wedge}.png``.
"""

from __future__ import annotations

from .common import data_text, model_text, num, pct, plot_series, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "seed": 0,
    "dims": [10, 25, 50, 100, 200, 400],
    "sub_epochs": 20,
    "sub_lr": 0.05,
    "sub_batch": 64,
    "radii": [0.0, 10.0, 20.0, 40.0],
    "radial_dim": 200,
    "optima": 3,
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "wedge_epochs": 10,
    "wedge_points": 21,
    "plane_points": 0,
    "sub_model_args": None,  # None: the subspaces start from the first optimum's initialisation
    "sub_optimizer": "sgd",
    "projection": "auto",
    "full_lr": None,  # None: full training with the subspaces' settings
    "radial_epochs": None,  # None: sub_epochs
    "wedge_lr": None,  # None: lr
    "wedge_margin": 0.2,
}

# docs/volumes.md, "Subspaces and wedges" (once studies/volumes_simplex_mnist.py): all of MNIST
MNIST = {
    **BASE,
    "data": "mnist",
    "model_args": {"depth": 2, "width": 128},
    "epochs": 3,
    "batch_size": 128,
    "sub_model_args": {"depth": 2, "width": 200},
    "dims": [100, 300, 500, 750, 1000, 1500],
    "sub_epochs": 2,
    "sub_lr": 0.03,
    "sub_batch": 128,
    "sub_optimizer": "adam",
    "projection": "fastfood",
    "full_lr": 1e-3,
    "radii": [0.0, 10.0, 25.0, 50.0],
    "radial_dim": 300,
    "radial_epochs": 1,
    "wedge_epochs": 2,
    "wedge_lr": 0.02,
    "wedge_points": 25,
    "plane_points": 21,
    "wedge_margin": 0.25,
}


def run(ctx) -> Outcome:
    from .. import io
    from .. import space as sp
    from ..plots.volumes import plane_numbers, plot_intrinsic_dimension, plot_radial, plot_wedge
    from ..subspace import intrinsic_dimension, radial, train_subspace, wedge

    s = ctx.settings
    split = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"]}
    optima = [
        ctx.train(f"optimum-{i}", split, s["model"], s["model_args"], seed=s["seed"] + i, **cfg)
        for i in range(s["optima"])
    ]
    ctx.stop_point("train")
    model = optima[0][0]
    if s["sub_model_args"] is None:
        net, init = model, io.load_tensors(ctx.run_dir("optimum-0") / "checkpoints" / "epoch-000.safetensors")
        sub_args = s["model_args"]
    else:  # a fresh model of its own size; its initialisation is theta_0
        net = init = ctx.build(split, s["model"], s["sub_model_args"], seed=s["seed"])
        sub_args = s["sub_model_args"]
    mnist = split.meta["name"] == "mnist"
    sub = {
        "epochs": s["sub_epochs"],
        "lr": s["sub_lr"],
        "batch_size": s["sub_batch"],
        "seed": s["seed"],
        "optimizer": s["sub_optimizer"],
        "device": ctx.device,
        "progress": ctx.progress,
    }
    D = sp.WeightSpace(net).numel

    def intrinsic():
        full = None
        if s["full_lr"] is not None:
            run = train_subspace(
                net,
                init,
                split,
                D,
                "identity",
                checkpoint=ctx.out / "subspaces" / "full.safetensors",
                **{**sub, "lr": s["full_lr"]},
            )
            full = {**run.metrics, "dim": D, "projection": "identity", "lr": s["full_lr"]}
        res = intrinsic_dimension(
            net, init, split, s["dims"], projection=s["projection"], full=full, out=ctx.out / "subspaces", **sub
        )
        return res.to_dict()

    ids = ctx.stage("intrinsic", intrinsic)

    def radial_stage():
        epochs = s["radial_epochs"] or s["sub_epochs"]
        return radial(
            net,
            init,
            split,
            s["radii"],
            s["radial_dim"],
            direction_seed=s["seed"],
            out=ctx.out / "radial",
            projection=s["projection"],
            **{**sub, "epochs": epochs},
        ).to_dict() | {"epochs": epochs}

    rad = ctx.stage("radial", radial_stage)

    def wedges():
        w = wedge(
            model,
            [m for m, _ in optima],
            split,
            epochs=s["wedge_epochs"],
            lr=s["wedge_lr"] or s["lr"],
            margin=s["wedge_margin"],
            wd=s["wd"],
            batch_size=s["batch_size"],
            seed=s["seed"],
            n_points=s["wedge_points"],
            plane_points=s["plane_points"],
            checkpoint=ctx.out / "wedge.safetensors",
            device=ctx.device,
            progress=ctx.progress,
        )
        ends = {k: [v.summary()[w.metric]["start"], v.summary()[w.metric]["end"]] for k, v in w.before.items()}
        loss_max = {
            k: {
                "before": w.before[k].summary()["train_loss"]["max"],
                "after": w.after[k].summary()["train_loss"]["max"],
            }
            for k in w.before
        }
        planes = {k: plane_numbers(v, w.metric) for k, v in w.planes.items()}
        return {**w.summary(), "ends": ends, "train_loss_max": loss_max, "history": w.run.history, "planes": planes}

    wd = ctx.stage("wedge", wedges)

    fig = ctx.figure("subspaces.png")
    rows = ids["rows"]
    plot_series(
        fig,
        [
            {
                "title": "intrinsic dimension",
                "xlabel": "subspace dimension d",
                "ylabel": "test accuracy",
                "logx": True,
                "refs": [{"y": ids["target"], "label": "90% of full training"}],
                "series": [
                    {"label": "random subspace", "x": [r["dim"] for r in rows], "y": [r["test_accuracy"] for r in rows]}
                ],
            },
            {
                "title": f"radial experiment (d = {rad['dim']})",
                "xlabel": "distance r from the initialisation",
                "ylabel": "train loss",
                "logy": True,
                "series": [
                    {
                        "label": "reached",
                        "x": [r["r"] for r in rad["rows"]],
                        "y": [r["train_loss"] for r in rad["rows"]],
                    },
                    {
                        "label": "at the start",
                        "x": [r["r"] for r in rad["rows"]],
                        "y": [r["start_loss"] for r in rad["rows"]],
                        "style": "--",
                    },
                ],
            },
        ],
    )
    d90 = ids["d_int90"]
    low = d90 is not None and d90 < D / 10
    before = [v["barrier_mean"] for v in wd["before"].values()]
    after = [v["barrier_mean"] for v in wd["after"].values()]
    star = max(after) < 0.5 * max(before) if before and max(before) > 0 else False
    reach = [r["train_loss"] for r in rad["rows"]]
    radial_effect = abs(reach[-1] - reach[0]) > 0.1 * max(abs(reach[0]), 1e-6)
    setting = f"{model_text(s['model'], sub_args)} (D = {D}), {data_text(split.meta)}"
    sub_text = f"{s['sub_optimizer']} lr {s['sub_lr']}, projection {s['projection']}"
    wedge_setting = f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}"
    table = [
        Row(
            "intrinsic dimension d_int90",
            f"{d90 if d90 is not None else 'not reached'} (D = {D}; full "
            f"training {pct(ids['full']['test_accuracy'])}; d tried {s['dims']})",
            setting + f", {s['sub_epochs']} epochs per d, {sub_text}",
            "about 750 (D = 199,210)",
            "784-200-200-10 MLP on MNIST (Li et al. 2018, as cited in issue 11)",
        ),
        Row(
            f"train loss reached in a {rad['dim']}-d subspace vs distance r of the start",
            ", ".join(f"r={r['r']:g}: {num(r['train_loss'])}" for r in rad["rows"]),
            setting + f", {rad['epochs']} epochs per r, {sub_text}",
            "depends on r",
            "Fort and Jastrzebski 2019 (radial experiment)",
        ),
        Row(
            "test-error barrier between optima: segment vs via the connector",
            f"{points(max(before))} vs {points(max(after))} (worst pair, peak above the ends' mean)",
            wedge_setting + f", {s['optima']} optima, connector {s['wedge_epochs']} epochs",
            "low-loss star through one connector",
            "Fort and Jastrzebski 2019 (wedges)",
        ),
    ]
    checks = [low, radial_effect, star]
    why = (
        f"d_int90 = {d90} of D = {D}; the reachable loss {'changes' if radial_effect else 'hardly changes'} with "
        f"the distance of the start; the connector {'removes most of' if star else 'does not remove'} the barrier "
        f"between optima ({points(max(before))} -> {points(max(after))})"
    )
    name = f"{split.meta['name'].upper() if mnist else split.meta['name']} {s['model'].upper()}"
    figures = [
        Figure(
            ctx.rel(fig),
            "Test accuracy against the subspace dimension (left) and the train loss "
            "reached from starts at distance r (right).",
        ),
        Figure(
            ctx.rel(
                plot_intrinsic_dimension(
                    ids,
                    ctx.figure("intrinsic_dimension.png"),
                    title=f"{name} ({model_text(s['model'], sub_args)}, D = {D}), {s['sub_epochs']} epochs per d",
                )
            ),
            "Train and test accuracy against the subspace dimension d, full training and its 90% line.",
            "volumes_intrinsic_dimension.png" if mnist else "",
        ),
        Figure(
            ctx.rel(
                plot_radial(
                    rad,
                    ctx.figure("radial.png"),
                    title=f"{name}, d = {rad['dim']}, {rad['epochs']} epoch{'s' * (rad['epochs'] != 1)} per r",
                )
            ),
            "The train loss at the start and reached in the subspace against the distance r of the start.",
            "volumes_radial.png" if mnist else "",
        ),
    ]
    if wd["planes"]:
        figures.append(
            Figure(
                ctx.rel(
                    plot_wedge(
                        wd["planes"],
                        ctx.figure("wedge.png"),
                        metric=wd["metric"],
                        title=f"{name}: optima before and after training one connector",
                    )
                ),
                "Test error on the plane through three optima (before) and through two optima and the connector "
                "(after).",
                "volumes_wedge.png" if mnist else "",
            )
        )
    return Outcome(
        {
            "intrinsic_dimension": {k: ids[k] for k in ("rows", "full", "target", "d_int90")},
            "parameters": D,
            "radial": rad,
            "wedge": {k: v for k, v in wd.items() if k != "planes"},
            "checks": {"d_int90_far_below_D": low, "radial_effect": radial_effect, "wedge_star": star},
        },
        table,
        verdict_of(checks),
        why,
        figures,
        [
            {
                "kind": "lines",
                "title": "test accuracy against subspace dimension",
                "xlabel": "d",
                "ylabel": "test accuracy",
                "logx": True,
                "logy": False,
                "series": [
                    {
                        "label": "random subspace",
                        "x": [r["dim"] for r in rows],
                        "y": [r["test_accuracy"] for r in rows],
                        "dash": False,
                    }
                ],
            }
        ],
    )


STUDY = register(
    Study(
        name="fort-subspaces",
        title="Random subspaces, intrinsic dimension and wedges",
        paper="Li, Farkhoor, Liu and Yosinski 2018, Measuring the intrinsic dimension of objective landscapes; "
        "Fort and "
        "Jastrzebski 2019, Large scale structure of neural network loss landscapes",
        claim="Training in a random subspace of a few hundred dimensions reaches 90% of full accuracy (about 750 for a "
        "784-200-200-10 MLP on MNIST); the reachable loss depends on the start's distance; optima are joined by a "
        "star of low-loss segments through a shared connector.",
        summary="intrinsic dimension, radial experiment and wedges",
        run=run,
        needs=("modescape.subspace",),
        presets={
            "cpu": BASE,
            "cpu-mnist": MNIST,
            "gpu": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 200},
                "dims": [100, 250, 500, 750, 1000, 1500, 2000],
                "sub_epochs": 20,
                "sub_batch": 128,
                "radial_dim": 750,
                "epochs": 20,
                "batch_size": 128,
                "wedge_epochs": 20,
                "plane_points": 31,
            },
        },
        smoke={
            "model_args": {"depth": 1, "width": 16},
            "dims": [5, 20],
            "sub_epochs": 1,
            "radii": [0.0, 10.0],
            "radial_dim": 10,
            "optima": 2,
            "epochs": 2,
            "wedge_epochs": 1,
            "wedge_points": 5,
            "plane_points": 5,
            "sub_model_args": {"depth": 1, "width": 8},
            "sub_optimizer": "adam",
            "sub_lr": 0.01,
            "full_lr": 0.003,
        },
        stages=("train", "intrinsic", "radial", "wedge"),
        docs=("volumes.md", "mode-connectivity.md"),
    )
)

"""benton-simplex: low-loss simplices around minima, and their ensembles (Benton, Maddox, Lotfi and Wilson 2021).

Claims: a trained mode is a vertex of whole simplices of low loss: SPRO adds vertices one at a time,
maximising the simplex's volume while keeping the loss at points drawn uniformly on it low, so every point
of the simplex is about as good as the mode; ensembling points drawn from simplices around a few
independently trained modes (ESPRO) beats the deep ensemble of those modes. Measured with
`modescape.simplex`: `train_simplex` around one mode, `evaluate_simplex` at its vertices and at uniform
samples (BatchNorm statistics recomputed per point for BatchNorm models), and `espro` against the deep
ensemble of the same modes (`modescape.ensembles.ensemble_metrics`), with the training budget of each;
``baselines`` adds, at ESPRO's budget in epochs, a deep ensemble of as many models trained budget / modes
epochs each and one model trained the whole budget; ``plane_points`` draws the test error on the plane of
the first simplex (two added vertices). The ``cpu`` preset with ``--data-root`` (MNIST) is the setting of
docs/volumes.md ("Simplices": three 784-128-128-10 modes of 3 epochs, 15-epoch budget), and ``--figures
docs/figures`` rewrites its figure ``volumes_simplex_plane.png``.
"""

from __future__ import annotations

from .common import data_text, model_text, num, pct, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "modes": 3,
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "vertices": 2,
    "simplex_epochs": 5,
    "simplex_lr": 0.05,
    "lam": 0.1,
    "samples": 5,
    "eval_samples": 32,
    "members": 4,
    "eval_seed": 0,
    "baselines": True,
    "one_seed": 100,
    "plane_points": 15,
}

# docs/volumes.md, "Simplices" (once studies/volumes_simplex_mnist.py): all of MNIST, 784-128-128-10
MNIST = {
    **BASE,
    "data": "mnist",
    "model_args": {"depth": 2, "width": 128},
    "epochs": 3,
    "batch_size": 128,
    "simplex_epochs": 1,
    "simplex_lr": 0.02,
    "lam": 1e-3,
    "samples": 3,
    "eval_samples": 16,
    "eval_seed": 1,
    "members": 8,
    "plane_points": 21,
}


def run(ctx) -> Outcome:
    from .. import space as sp
    from ..ensembles import ensemble_metrics, predict_proba
    from ..families import PlaneThrough
    from ..landscape import auto_range, sweep
    from ..plots.volumes import plane_numbers, plot_simplex_plane
    from ..simplex import espro, evaluate_simplex, train_simplex

    s = ctx.settings
    split = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"]}
    modes = [
        ctx.train(f"mode-{i}", split, s["model"], s["model_args"], seed=s["seed"] + i, **cfg) for i in range(s["modes"])
    ]
    ctx.stop_point("train")
    model = modes[0][0]
    spro = {
        "lr": s["simplex_lr"],
        "lam": s["lam"],
        "samples": s["samples"],
        "wd": s["wd"],
        "batch_size": s["batch_size"],
    }

    mnist = split.meta["name"] == "mnist"
    eval_seed = s.get("eval_seed", s["seed"])

    def simplex():  # ESPRO's first simplex (the same checkpoint: espro resumes it instead of training it again)
        run = train_simplex(
            model,
            [model],
            split,
            vertices=s["vertices"],
            epochs=s["simplex_epochs"],
            seed=s["seed"],
            checkpoint=ctx.out / "espro" / "simplex-00.safetensors",
            device=ctx.device,
            progress=ctx.progress,
            **spro,
        )
        ev = ctx.evaluator(model, {"train": split.train, "test": split.test}, metrics=("loss", "error"))
        verts = run.family.vertices()
        dist = [float(sum((v[k] - verts[0][k]).double().pow(2).sum() for k in v) ** 0.5) for v in verts[1:]]
        plane = None
        if len(verts) == 3 and s["plane_points"] > 1:  # the whole triangle lies in the plane of its vertices
            fam = PlaneThrough(verts[0], verts[1], verts[2])
            mc = fam.model_coords.numpy()
            grid = {k: auto_range(mc[:, i], s["plane_points"], 0.35) for i, k in enumerate(("x", "y"))}
            evp = ctx.evaluator(model, {"test": split.test}, metrics=("error",))
            ds = sweep(fam, evp, grid, attrs={"models": {"labels": ["mode", "w1", "w2"], "coords": mc.tolist()}})
            plane = plane_numbers(ds, "test_error")
        return {
            "eval": evaluate_simplex(run.family, ev, n_samples=s["eval_samples"], seed=eval_seed).summary(),
            "plane": plane,
            "history": run.history,
            "epochs": run.epochs,
            "distances": dist,
            "mode_norm": float(sum(v.double().pow(2).sum() for v in verts[0].values()) ** 0.5),
        }

    sx = ctx.stage("simplex", simplex)

    def ensembles():
        res = espro(
            model,
            [m for m, _ in modes],
            split,
            vertices=s["vertices"],
            members=s["members"],
            epochs=s["simplex_epochs"],
            mode_epochs=s["epochs"],
            checkpoint_dir=ctx.out / "espro",
            seed=s["seed"],
            device=ctx.device,
            progress=ctx.progress,
            **spro,
        )
        ev = ctx.evaluator(model, {"test": split.test}, metrics=("loss",))
        space = sp.WeightSpace(model)
        probs = [predict_proba(ev, space.point(m), "test", space.buffers(m) or None) for m, _ in modes]
        deep = ensemble_metrics(probs, split.test[1])
        evs = ctx.evaluator(model, {"train": split.train, "test": split.test}, metrics=("loss", "error"))
        simplices = [sx["eval"]] + [
            evaluate_simplex(r.family, evs, n_samples=s["eval_samples"], seed=eval_seed).summary() for r in res.runs[1:]
        ]
        return {
            "simplices": simplices,
            "espro": res.ensemble,
            "espro_curve": res.curve,
            "espro_budget": res.budget,
            "deep": deep,
            "deep_budget": {"epochs": s["epochs"] * s["modes"], "modes": s["modes"]},
        }

    en = ctx.stage("ensembles", ensembles)

    def baselines():  # at ESPRO's budget in epochs: a deep ensemble of budget / modes epochs each, one model
        budget = int(en["espro_budget"]["epochs"])
        per = budget // s["modes"]
        ev = ctx.evaluator(model, {"test": split.test}, metrics=("loss",))
        space = sp.WeightSpace(model)

        def proba(m):
            return predict_proba(ev, space.point(m), "test", space.buffers(m) or None)

        def fit(tag, seed, epochs):
            return ctx.train(tag, split, s["model"], s["model_args"], seed=seed, **{**cfg, "epochs": epochs})[0]

        deep = [
            fit(f"mode-{i}" if per == s["epochs"] else f"deep-{i}-{per}", s["seed"] + i, per) for i in range(s["modes"])
        ]
        one = fit(f"one-{budget}", s["one_seed"], budget)
        return {
            "deep": {**ensemble_metrics([proba(m) for m in deep], split.test[1]), "epochs": per * s["modes"]},
            "deep_per_model": per,
            "one": {**ensemble_metrics([proba(one)], split.test[1]), "epochs": budget, "seed": s["one_seed"]},
        }

    base = ctx.stage("baselines", baselines) if s["baselines"] else None
    ev_ = sx["eval"]
    te = ev_["test_error"]
    mode_err = te["vertices"][0]
    low = te["mean"] - mode_err <= 0.01 and min(sx["distances"]) > 0.05 * sx["mode_norm"]
    beats = en["espro"]["nll"] < en["deep"]["nll"] and en["espro"]["accuracy"] >= en["deep"]["accuracy"]
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, modes {s['epochs']} epochs, "
        f"{s['vertices']} added vertices x {s['simplex_epochs']} epochs, lambda {s['lam']}"
    )
    pub = "Benton et al. 2021 (VGG16 and ResNets on CIFAR-10/100; figures)"
    table = [
        Row(
            "test error at the simplex's vertices and at uniform samples",
            f"vertices {', '.join(pct(v) for v in te['vertices'])}; samples mean {pct(te['mean'])}, max "
            f"{pct(te['max'])} ({s['eval_samples']} samples); added vertices "
            f"{', '.join(num(d) for d in sx['distances'])} from the mode (|mode| {num(sx['mode_norm'])})",
            setting,
            "about the mode's error everywhere on the simplex",
            pub,
        ),
        Row(
            f"ESPRO ({s['modes']} simplices x {s['members']} points) vs deep ensemble of the {s['modes']} modes",
            f"{pct(en['espro']['accuracy'])} (NLL {num(en['espro']['nll'], 4)}, {num(en['espro_budget']['epochs'])} "
            f"epochs) vs {pct(en['deep']['accuracy'])} (NLL {num(en['deep']['nll'], 4)}, "
            f"{en['deep_budget']['epochs']} epochs)",
            setting,
            "ESPRO better than the deep ensemble",
            pub,
        ),
    ]
    if base is not None:
        table.append(
            Row(
                f"at ESPRO's budget: deep ensemble of {s['modes']} x {base['deep_per_model']} epochs; one model",
                f"{pct(base['deep']['accuracy'])} (NLL {num(base['deep']['nll'], 4)}, {base['deep']['epochs']} "
                f"epochs); {pct(base['one']['accuracy'])} (NLL {num(base['one']['nll'], 4)}, {base['one']['epochs']}"
                f" epochs)",
                setting,
                "-",
                "equal-budget comparison (not a claim of the paper)",
            )
        )
    why = (
        f"points drawn uniformly on a simplex whose added vertices lie {num(min(sx['distances']))}-"
        f"{num(max(sx['distances']))} from the mode have {pct(te['mean'])} test error on average (mode "
        f"{pct(mode_err)}, {points(abs(te['mean'] - mode_err))} {'more' if te['mean'] >= mode_err else 'less'}); "
        f"ESPRO {'beats' if beats else 'does not beat'} the deep ensemble of the same modes (at "
        f"{num(en['espro_budget']['epochs'])} against {en['deep_budget']['epochs']} epochs of training)"
    )
    fig = ctx.figure("espro.png")
    from .common import plot_series

    plot_series(
        fig,
        [
            {
                "xlabel": "simplices in the ensemble",
                "ylabel": "test error",
                "refs": [{"y": 1 - en["deep"]["accuracy"], "label": f"deep ensemble of {s['modes']} modes"}],
                "series": [
                    {
                        "label": "ESPRO",
                        "x": [c["simplices"] for c in en["espro_curve"]],
                        "y": [1 - c["accuracy"] for c in en["espro_curve"]],
                    }
                ],
            },
            {
                "xlabel": "simplices in the ensemble",
                "ylabel": "test NLL",
                "refs": [{"y": en["deep"]["nll"], "label": "deep ensemble"}],
                "series": [
                    {
                        "label": "ESPRO",
                        "x": [c["simplices"] for c in en["espro_curve"]],
                        "y": [c["nll"] for c in en["espro_curve"]],
                    }
                ],
            },
        ],
        title=f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: ESPRO vs deep ensemble",
    )
    figures = [
        Figure(
            ctx.rel(fig),
            "ESPRO's test error and NLL as simplices are added, against the deep ensemble of the same modes.",
        )
    ]
    if sx.get("plane") is not None:
        pfig = plot_simplex_plane(
            sx["plane"],
            ctx.figure("plane.png"),
            title=f"{split.meta['name'].upper() if mnist else split.meta['name']} {s['model'].upper()}: test error on "
            "the plane of an SPRO simplex",
        )
        figures.append(
            Figure(
                ctx.rel(pfig),
                "Test error on the plane of the first simplex's three vertices (the mode and two added ones).",
                "volumes_simplex_plane.png" if mnist else "",
            )
        )
    return Outcome(
        {
            "simplex": ev_,
            "simplices": en["simplices"],
            "budget_baselines": base,
            "distances": sx["distances"],
            "mode_norm": sx["mode_norm"],
            "espro": en["espro"],
            "espro_budget": en["espro_budget"],
            "deep": en["deep"],
            "deep_budget": en["deep_budget"],
            "checks": {"low_loss_simplex": low, "espro_beats_deep": beats},
        },
        table,
        verdict_of([low, beats]),
        why,
        figures,
    )


STUDY = register(
    Study(
        name="benton-simplex",
        title="Low-loss simplices and their ensembles",
        paper="Benton, Maddox, Lotfi and Wilson 2021, Loss surface simplexes for mode connecting volumes and fast "
        "ensembling",
        claim="Whole simplices of low loss surround trained modes (SPRO), and ensembles of points drawn from simplices "
        "around a few modes (ESPRO) beat the deep ensemble of those modes.",
        summary="low-loss simplices; ESPRO vs a deep ensemble",
        run=run,
        needs=("modescape.simplex",),
        presets={
            "cpu": BASE,
            "cpu-mnist": MNIST,
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 16, "width": 8, "bn": True},
                "epochs": 200,
                "batch_size": 128,
                "simplex_epochs": 10,
                "vertices": 3,
                "members": 8,
                "modes": 3,
                "baselines": False,  # 1380 more VGG epochs: run it with a cpu-sized budget instead
            },
        },
        smoke={
            "model_args": {"depth": 1, "width": 16},
            "modes": 2,
            "epochs": 2,
            "vertices": 2,
            "simplex_epochs": 1,
            "samples": 2,
            "eval_samples": 4,
            "members": 2,
            "plane_points": 5,
        },
        stages=("train", "simplex", "ensembles", "baselines"),
        docs=("volumes.md", "mode-connectivity.md"),
    )
)

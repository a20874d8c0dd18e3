"""fge: fast geometric ensembling against one model and a deep ensemble at equal budget (Garipov et al. 2018).

Claim: from one trained network, SGD with a cyclical learning rate visits many nearby low-loss points along
the curves between modes; ensembling the snapshots taken at the cycle's minima beats one model trained for
the same total number of epochs and rivals an ensemble of independently trained networks (VGG16 on
CIFAR-100: 72.5% test accuracy for one model, 74.6% for FGE at the same budget). Measured with
`modescape.ensembles.fge` from endpoint A (snapshots with their own BatchNorm statistics), one model trained
for the whole budget, and A and B ensembled (`ensembles.ensemble_curve`). This is part 2 of the former
``studies/connect_mnist.py``; with ``--data-root`` MNIST it runs that script's settings.
"""

from __future__ import annotations

from .common import data_text, lines_spec, model_text, num, pct, verdict_of
from .garipov_curves import BASE as CURVES
from .garipov_curves import endpoints
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    **{k: CURVES[k] for k in ("data", "model", "model_args", "epochs", "batch_size", "lr", "wd", "seeds")},
    "fge_epochs": 40,
    "cycle": 4,
    "fge_lr": [0.05, 0.0005],
}


def run(ctx) -> Outcome:
    from .. import space as sp
    from ..ensembles import ensemble_curve, fge, predict_proba
    from ..plots.paths import plot_fge

    s = ctx.settings
    split = ctx.split()
    (a, ma), (b, mb) = endpoints(ctx, split)
    budget = s["epochs"] + s["fge_epochs"]
    long, ml = ctx.train(
        f"run-{s['seeds'][0]}-{budget}",
        split,
        s["model"],
        s["model_args"],
        seed=s["seeds"][0],
        epochs=budget,
        batch_size=s["batch_size"],
        lr=s["lr"],
        wd=s["wd"],
        schedule="cosine",
    )
    ctx.stop_point("train")
    space = sp.WeightSpace(a)
    pa, pb = space.point(a), space.point(b)

    def run_fge():
        res = fge(
            a,
            pa,
            split,
            cycle=s["cycle"],
            lr=tuple(s["fge_lr"]),
            epochs=s["fge_epochs"],
            wd=s["wd"],
            batch_size=s["batch_size"],
            seed=0,
            device=ctx.device,
            progress=ctx.progress,
        )
        ev = ctx.evaluator(a, {"test": split.test}, metrics=("loss",), bn="recompute", bn_data=split.train)
        y = split.test[1]
        single_long = ensemble_curve([predict_proba(ev, space.point(long))], y)[0]
        indep = ensemble_curve([predict_proba(ev, pa), predict_proba(ev, pb)], y)
        n_indep = min(len(indep), max(1, budget // s["epochs"]))
        return {
            "budget_epochs": budget,
            "start_A": res.start,
            "members": res.members,
            "single_model_equal_budget": single_long,
            "independent_ensemble_equal_budget": indep[n_indep - 1],
            "independent_ensemble_members": n_indep,
            "lrs_first_cycle": res.lrs[: (len(res.lrs) // s["fge_epochs"]) * s["cycle"]],
        }

    r = ctx.stage("fge", run_fge)
    ens, one, ind = r["members"][-1], r["single_model_equal_budget"], r["independent_ensemble_equal_budget"]
    fig = ctx.figure("fge.png")
    plot_fge(
        {"members": r["members"], "start": r["start_A"]},
        fig,
        title=f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: FGE from A, {budget}-epoch budget",
        baselines={
            "one model, equal budget": one,
            f"{r['independent_ensemble_members']} independent, equal budget": ind,
        },
    )
    beats_one = ens["accuracy"] > one["accuracy"] and ens["nll"] < one["nll"]
    rivals = ens["nll"] <= ind["nll"] * 1.05 and ens["accuracy"] >= ind["accuracy"] - 0.005
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, A {s['epochs']} epochs + FGE "
        f"{s['fge_epochs']} epochs (cycle {s['cycle']}, lr {s['fge_lr'][0]} -> {s['fge_lr'][1]})"
    )
    pub = "VGG16 on CIFAR-100, equal budget (Garipov et al. 2018)"
    table = [
        Row(
            "test accuracy: one model vs FGE, equal budget",
            f"{pct(one['accuracy'])} vs {pct(ens['accuracy'])} ({len(r['members'])} snapshots)",
            setting,
            "72.5% vs 74.6%",
            pub,
        ),
        Row("test NLL: one model vs FGE", f"{num(one['nll'], 4)} vs {num(ens['nll'], 4)}", setting, "-", "-"),
        Row(
            f"{r['independent_ensemble_members']} independent models (A, B) ensembled",
            f"{pct(ind['accuracy'])}, NLL {num(ind['nll'], 4)}",
            setting,
            "-",
            "-",
        ),
    ]
    why = (
        f"FGE ({pct(ens['accuracy'])}, NLL {num(ens['nll'], 4)}) "
        f"{'beats' if beats_one else 'does not beat'} one model trained for the same {budget} epochs "
        f"({pct(one['accuracy'])}, NLL {num(one['nll'], 4)}) and {'rivals' if rivals else 'falls short of'} the "
        f"independent ensemble ({pct(ind['accuracy'])}, NLL {num(ind['nll'], 4)}); one test image is "
        f"{100 / len(split.test[1]):.2g} points of accuracy here, and each setting ran once"
    )
    mnist = split.meta["name"] == "mnist"
    figures = [
        Figure(
            ctx.rel(fig),
            "FGE ensemble as snapshots are added, each snapshot alone, the start model, one "
            "model trained for the whole budget and the independent ensemble.",
            "connect_mnist_fge.png" if mnist else "",
        )
    ]
    inter = [
        lines_spec(
            "test error of the FGE ensemble as snapshots are added",
            [
                {
                    "label": "FGE ensemble",
                    "x": [m["members"] for m in r["members"]],
                    "y": [1 - m["accuracy"] for m in r["members"]],
                },
                {
                    "label": "snapshot alone",
                    "x": [m["members"] for m in r["members"]],
                    "y": [1 - m["single_accuracy"] for m in r["members"]],
                    "style": "--",
                },
            ],
            "FGE members",
            "test error",
        )
    ]
    numbers = {
        k: r[k]
        for k in (
            "budget_epochs",
            "start_A",
            "members",
            "single_model_equal_budget",
            "independent_ensemble_equal_budget",
            "independent_ensemble_members",
        )
    }
    numbers.update(
        {
            "fge_beats_single_equal_budget": beats_one,
            "fge_rivals_independent": rivals,
            "endpoints": {"a": ma, "b": mb, "long": ml},
        }
    )
    return Outcome(numbers, table, verdict_of([beats_one, rivals]), why, figures, inter)


STUDY = register(
    Study(
        name="fge",
        title="Fast geometric ensembling at equal budget",
        paper="Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, Loss surfaces, mode connectivity, and fast "
        "ensembling of DNNs",
        claim="Snapshots of a cyclical learning rate around one minimum make an ensemble that beats one model trained "
        "for the same budget and rivals independently trained ensembles (VGG16 on CIFAR-100: 72.5% vs 74.6%).",
        summary="FGE beats one model at equal budget",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {**BASE, "data": "mnist", "epochs": 10, "batch_size": 128, "fge_epochs": 10, "cycle": 2},
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 16, "width": 8, "bn": True},
                "epochs": 200,
                "batch_size": 128,
                "lr": 0.05,
                "fge_epochs": 22,
                "cycle": 2,
                "fge_lr": [0.01, 0.0005],
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 2, "fge_epochs": 2, "cycle": 2},
        tour={"epochs": 20, "fge_epochs": 20},
        stages=("train", "fge"),
        docs=("mode-connectivity.md",),
    )
)

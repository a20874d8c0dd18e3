"""swa-sam-ensembles: SWA, SWAG, SAM and ASAM against SGD and a deep ensemble at an equal training budget
(Izmailov et al. 2018; Maddox et al. 2019; Foret et al. 2021; Kwon et al. 2021; Lakshminarayanan et al. 2017).

Claims: (1) SWA from a model trained for half the budget, averaging one iterate per epoch over the other
half (`modescape.swa.swa`, one run per constant learning rate), is flatter than SGD trained for the whole
budget (a smaller top Hessian eigenvalue, a wider filter-normalised 1-D valley) and at least as good in test
NLL; (2) SAM and ASAM (`modescape.train` with ``optimizer="sam"``) at the same number of epochs end in
flatter minima than SGD; (3) SWAG's Bayesian model average (`modescape.swa.swag_ensemble`) and a deep
ensemble of two half-budget models (`modescape.ensembles.deep_ensemble`) improve NLL over one model.
Unlike swa-flatness and sam-flatness (one method against SGD, SWA inside one training run), this study puts
every cheap alternative to a deep ensemble side by side at the same budget, with calibration. The numbers
of docs/ensembles.md ("Results on MNIST") are its ``cpu`` preset with ``--data-root`` (MNIST).

The width: along a filter-normalised Gaussian direction d (`modescape.directions.random_direction`, biases
and norms zeroed), the train loss L(w + a d) on the curvature subset at ``width_points`` values of a in
[-r, r]; the width is the length of the interval of a around 0 where L stays within ``width_level`` of
L(w) (crossings interpolated linearly), averaged over ``width_directions`` directions (seeds 0, 1, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import data_text, lines_spec, model_text, num, pct, plot_series, verdict_of
from .registry import Figure, Outcome, Row, Study, register

METRICS = ("accuracy", "nll", "brier", "ece")

BASE = {
    "data": "digits",
    "model_args": {"depth": 2, "width": 128},
    "budget": 10,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "swa_lrs": [0.05, 0.02, 0.01],
    "rho": 0.05,
    "asam_rho": 0.5,
    "eta": 0.01,
    "swag_samples": 30,
    "curvature_n": None,
    "eig_tol": 1e-3,
    "width_radius": 1.0,
    "width_points": 41,
    "width_directions": 2,
    "width_level": 0.1,
}


def width_1d(curve: Sequence[float], alphas: Sequence[float], level: float) -> float:
    """Length of the interval of alpha around 0 where curve <= curve(0) + level (linear crossings; the end of
    the range where the curve stays below)."""
    i0 = min(range(len(alphas)), key=lambda i: abs(alphas[i]))
    top = curve[i0] + level

    def reach(step: int) -> float:
        i = i0
        while 0 <= i + step < len(alphas) and curve[i + step] <= top:
            i += step
        if not 0 <= i + step < len(alphas):
            return float(alphas[i])
        a, b = curve[i], curve[i + step]
        return float(alphas[i] + (alphas[i + step] - alphas[i]) * (top - a) / (b - a))

    return reach(1) - reach(-1)


def geometry(ctx, model, point, sub) -> dict[str, Any]:
    """Top Hessian eigenvalue and the filter-normalised 1-D width (with its curves) of ``point``."""
    import numpy as np

    from ..curvature import eigenvalues
    from ..directions import random_direction

    s = ctx.settings
    ev = ctx.evaluator(model, {"train": sub}, metrics=("loss",), bn="running")
    eig = eigenvalues(ev, None, point, k=1, tol=s["eig_tol"], progress=False)
    alphas = np.linspace(-s["width_radius"], s["width_radius"], s["width_points"])
    curves, widths = [], []
    for j in range(s["width_directions"]):
        d = random_direction(point, normalization="filter", ignore="biasbn", seed=j, space=ev.space)
        curve = ev([{k: point[k] + float(a) * d[k] for k in point} for a in alphas], progress=False)["train_loss"]
        curves.append(curve.tolist())
        widths.append(width_1d(curves[-1], alphas.tolist(), s["width_level"]))
    return {
        "lambda_max": float(eig.values[0]),
        "lambda_converged": bool(eig.converged[0]),
        "n_hvp": eig.n_hvp,
        "width": float(np.mean(widths)),
        "widths": widths,
        "alphas": alphas.tolist(),
        "curves": curves,
    }


def models(ctx, split):
    """Every model of the budget (trained or read back by `Context.train`; SWA runs resumable in
    ``runs/swa-lrLR``): ``(names, {name: (model, point)}, SWA results by lr, half-budget checkpoints)``."""
    from .. import io
    from .. import space as sp
    from ..swa import swa

    s = ctx.settings
    budget, half = s["budget"], s["budget"] // 2
    cfg = {"batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"], "schedule": "cosine"}
    arch = ("mlp", s["model_args"])
    sgd, _ = ctx.train(f"sgd-{budget}", split, *arch, seed=s["seed"], epochs=budget, **cfg)
    a, _ = ctx.train(f"sgd-{half}-seed{s['seed']}", split, *arch, seed=s["seed"], epochs=half, **cfg)
    ctx.train(f"sgd-{half}-seed{s['seed'] + 1}", split, *arch, seed=s["seed"] + 1, epochs=half, **cfg)
    sam, _ = ctx.train(
        f"sam-{budget}", split, *arch, seed=s["seed"], epochs=budget, optimizer="sam", rho=s["rho"], **cfg
    )
    asam, _ = ctx.train(
        f"asam-{budget}",
        split,
        *arch,
        seed=s["seed"],
        epochs=budget,
        optimizer="sam",
        rho=s["asam_rho"],
        adaptive=True,
        eta=s["eta"],
        **cfg,
    )
    a_ckpt = ctx.run_dir(f"sgd-{half}-seed{s['seed']}") / "final.safetensors"
    b_ckpt = ctx.run_dir(f"sgd-{half}-seed{s['seed'] + 1}") / "final.safetensors"
    swas = {}
    for lr in s["swa_lrs"]:
        swas[lr] = swa(
            a,
            a_ckpt,
            split,
            epochs=budget - half,
            lr=lr,
            start=0,
            wd=s["wd"],
            batch_size=s["batch_size"],
            seed=s["seed"],
            rank=20,
            out=ctx.run_dir(f"swa-lr{lr}"),
            device=ctx.device,
            progress=False,
        )
    space = sp.WeightSpace(a)
    lr0 = s["swa_lrs"][0]
    names = {"sgd": f"SGD, {budget} epochs", "swa": f"SWA lr {lr0}, {half} + {budget - half} epochs"}
    singles = {
        names["sgd"]: space.point(sgd),
        **{f"SWA lr {lr}, {half} + {budget - half} epochs": r.point for lr, r in swas.items()},
        f"SAM rho {s['rho']}, {budget} epochs": space.point(sam),
        f"ASAM rho {s['asam_rho']}, {budget} epochs": space.point(asam),
        f"SGD, {half} epochs (SWA's start)": space.point(a),
        f"last iterate of SWA lr {lr0}": io.load_tensors(ctx.run_dir(f"swa-lr{lr0}") / "final.safetensors"),
    }
    return names, a, singles, swas, (a_ckpt, b_ckpt)


def run(ctx) -> Outcome:
    import torch

    from ..ensembles import deep_ensemble, ensemble_metrics, predict_proba
    from ..plots import plot_ensemble, plot_reliability, plot_swa
    from ..swa import swag_ensemble

    s = ctx.settings
    split = ctx.split()
    budget, half = s["budget"], s["budget"] // 2
    names, a, singles, swas, members = models(ctx, split)
    ctx.stop_point("train")
    n = s["curvature_n"]
    sub = split.train if n is None else (split.train[0][:n], split.train[1][:n])
    y = split.test[1]
    ev = ctx.evaluator(a, {"train": split.train, "test": split.test}, metrics=("loss",), bn="running")
    probs = {k: predict_proba(ev, pt, "test") for k, pt in singles.items()}

    def measure():
        rows = {}
        for name, pt in singles.items():
            m = ensemble_metrics([probs[name]], y)
            geo = geometry(ctx, a, pt, sub)
            rows[name] = {**{k: m[k] for k in METRICS}, **geo, "budget_epochs": half if "start" in name else budget}
            ctx.log(f"{name}: error {pct(1 - m['accuracy'])}, NLL {m['nll']:.4f}, lambda_max {geo['lambda_max']:.3g}")
        return rows

    rows = ctx.stage("geometry", measure)
    swa0 = swas[s["swa_lrs"][0]]
    bma = swag_ensemble(
        a,
        swa0.swag,
        split,
        n_samples=s["swag_samples"],
        seed=s["seed"],
        cache=ctx.out / "swag-samples",
        budget_info=swa0.budget,
        device=ctx.device,
        progress=False,
    )
    deep = deep_ensemble(a, list(members), split, cache=ctx.out / "deep-members", device=ctx.device, progress=False)
    ens = ctx.stage(
        "ensembles",
        lambda: {
            f"SWAG BMA, {s['swag_samples']} samples": {**{k: bma.metrics[k] for k in METRICS}, "curve": bma.curve},
            f"deep ensemble, 2 x {half} epochs": {**{k: deep.metrics[k] for k in METRICS}, "curve": deep.curve},
        },
    )
    sam_name, asam_name = f"SAM rho {s['rho']}, {budget} epochs", f"ASAM rho {s['asam_rho']}, {budget} epochs"
    sgd, swa_name = names["sgd"], names["swa"]
    figs = figures(ctx, rows, names, (sam_name, asam_name))
    lr0 = s["swa_lrs"][0]
    figs.append(
        Figure(
            ctx.rel(plot_swa(swa0.history, ctx.figure("swa.png"), title=f"SWA (lr {lr0}) from the {half}-epoch model")),
            "SWA: the SGD iterates and their running average.",
            "volumes_mnist_swa.png",
        )
    )
    curves = {k: v["curve"] for k, v in ens.items()}
    figs.append(
        Figure(
            ctx.rel(
                plot_ensemble(
                    curves,
                    ctx.figure("ensembles.png"),
                    metrics=("accuracy", "nll", "ece"),
                    references={sgd: rows[sgd], swa_name: rows[swa_name]},
                    title=f"{split.meta['name']} MLP, {budget}-epoch budget",
                )
            ),
            "SWAG and the deep ensemble as members are added, against one SGD model and the SWA model.",
            "volumes_mnist_ensembles.png",
        )
    )
    rel = {sgd: (probs[sgd], y), swa_name: (probs[swa_name], y)}
    rel["SWAG BMA"] = (torch.stack(bma.probs).mean(0), y)
    rel["deep ensemble"] = (torch.stack(deep.probs).mean(0), y)
    figs.append(
        Figure(
            ctx.rel(plot_reliability(rel, ctx.figure("reliability.png"))),
            "Reliability diagrams (ECE in the legend).",
            "volumes_mnist_reliability.png",
        )
    )
    setting = (
        f"{model_text('mlp', s['model_args'])}, {data_text(split.meta)}, {budget}-epoch budget, SGD momentum 0.9, "
        f"lr {s['lr']} cosine, batch {s['batch_size']}, seed {s['seed']}"
    )
    return verdict(rows, ens, names, (sam_name, asam_name), setting, figs)


def figures(ctx, rows, names, sams) -> list[Figure]:
    """The width figure: train loss along the first filter-normalised direction around each solution."""
    sgd, swa_name = names["sgd"], names["swa"]
    series = [
        {
            "label": f"{k.split(',')[0]} (width {rows[k]['width']:.2f})",
            "x": rows[k]["alphas"],
            "y": rows[k]["curves"][0],
        }
        for k in (sgd, swa_name, *sams)
    ]
    path = plot_series(
        ctx.figure("width.png"),
        [{"series": series, "xlabel": "a  (w + a d, d filter-normalised)", "ylabel": "train loss", "logy": True}],
        width=7.5,
        height=4.2,
    )
    return [Figure(ctx.rel(path), "Train loss along a filter-normalised direction.", "volumes_mnist_width.png")]


def verdict(rows, ens, names, sams, setting, figs) -> Outcome:
    """The table, the checks and the verdict from the stages' numbers."""
    sgd, swa_r = rows[names["sgd"]], rows[names["swa"]]
    sam, asam = rows[sams[0]], rows[sams[1]]
    (swag_name, swag), (deep_name, deep) = list(ens.items())

    def err(r):
        return pct(1 - r["accuracy"])

    table = [
        Row(
            f"{name}: test error, NLL, ECE, top Hessian eigenvalue, 1-D width",
            f"{err(r)}, {num(r['nll'], 3)}, {pct(r['ece'])}"
            + (f", {num(r['lambda_max'])}, {num(r['width'])}" if "width" in r else ""),
            setting,
            pub,
            paper,
        )
        for name, r, pub, paper in (
            (names["sgd"], sgd, "-", "-"),
            (names["swa"], swa_r, "flatter and better than SGD at equal budget", "Izmailov et al. 2018"),
            (sams[0], sam, "flatter (lower lambda_max), lower error than SGD", "Foret et al. 2021"),
            (sams[1], asam, "at least as good as SAM", "Kwon et al. 2021"),
            (swag_name, swag, "better NLL and calibration than SGD and SWA", "Maddox et al. 2019"),
            (deep_name, deep, "better NLL than one model", "Lakshminarayanan et al. 2017"),
        )
    ]
    checks = {
        "swa_flatter": swa_r["lambda_max"] < sgd["lambda_max"] and swa_r["width"] > sgd["width"],
        "swa_nll": swa_r["nll"] <= sgd["nll"],
        "sam_flatter": sam["lambda_max"] < sgd["lambda_max"] and asam["lambda_max"] < sgd["lambda_max"],
        "ensembles_nll": swag["nll"] < sgd["nll"] and deep["nll"] < sgd["nll"],
    }
    why = (
        f"SWA is {'flatter' if checks['swa_flatter'] else 'not flatter'} than SGD (lambda_max "
        f"{num(swa_r['lambda_max'])} vs {num(sgd['lambda_max'])}, width {num(swa_r['width'])} vs "
        f"{num(sgd['width'])}) with NLL {num(swa_r['nll'], 3)} vs {num(sgd['nll'], 3)}; SAM and ASAM "
        f"{'are' if checks['sam_flatter'] else 'are not both'} flatter (lambda_max {num(sam['lambda_max'])}, "
        f"{num(asam['lambda_max'])}); SWAG's BMA and the deep ensemble "
        f"{'both beat' if checks['ensembles_nll'] else 'do not both beat'} one SGD model in NLL at this budget "
        f"({num(swag['nll'], 3)}, {num(deep['nll'], 3)} vs {num(sgd['nll'], 3)})"
    )
    inter = [
        lines_spec(
            "train loss along a filter-normalised direction",
            [
                {"label": k, "x": rows[k]["alphas"], "y": rows[k]["curves"][0]}
                for k in (names["sgd"], names["swa"], *sams)
            ],
            "a",
            "train loss",
            logy=True,
        )
    ]
    numbers = {
        "rows": {k: {m: v for m, v in r.items() if m not in ("curves", "alphas")} for k, r in rows.items()},
        "ensembles": {k: {m: v for m, v in r.items() if m != "curve"} for k, r in ens.items()},
        "checks": checks,
    }
    return Outcome(numbers, table, verdict_of(list(checks.values())), why, figs, inter)


STUDY = register(
    Study(
        name="swa-sam-ensembles",
        title="SWA, SWAG, SAM, ASAM and a deep ensemble at one budget",
        paper="Izmailov et al. 2018 (SWA); Maddox et al. 2019 (SWAG); Foret et al. 2021 (SAM); Kwon et al. 2021 "
        "(ASAM); Lakshminarayanan et al. 2017 (deep ensembles)",
        claim="At an equal training budget, SWA and SAM find flatter minima than SGD, and SWAG's model average "
        "and a deep ensemble improve NLL over one model.",
        summary="cheap alternatives to a deep ensemble, side by side at one budget",
        run=run,
        needs=("modescape.swa", "modescape.sam", "modescape.ensembles"),
        presets={
            "cpu": BASE,
            "cpu-mnist": {**BASE, "data": "mnist", "batch_size": 128, "curvature_n": 10000},
            "gpu": {**BASE, "data": "mnist", "model_args": {"depth": 2, "width": 512}, "budget": 40, "batch_size": 128},
        },
        smoke={
            "model_args": {"depth": 1, "width": 16},
            "budget": 4,
            "swa_lrs": [0.05],
            "swag_samples": 3,
            "width_points": 9,
            "width_directions": 1,
            "eig_tol": 1e-2,
        },
        stages=("train", "geometry", "ensembles"),
        docs=("ensembles.md",),
    )
)

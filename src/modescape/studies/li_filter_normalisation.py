"""li-filter-normalisation: small-batch versus large-batch minima, raw and filter-normalised (Li et al. 2018).

Claim (Li, Xu, Taylor, Studer and Goldstein 2018, *Visualizing the loss landscape of neural nets*, Sec. 4-5):
large-batch training reaches minima that generalise worse (VGG-9 on CIFAR-10: 7.37% test error at batch 128,
11.07% at 8192); plots along raw directions mislead, because the apparent sharpness follows the scale of the
weights (weight decay shrinks the small-batch minimum's weights, which then *looks* sharper); along
filter-normalised directions the sharpness ranks the minima as their test errors do, with weight decay on
and off.

Measured: four models (small and large batch, weight decay off and on); for each, the train loss along the
same raw Gaussian direction (one length for all) and along a filter-normalised direction
(`modescape.directions`, `modescape.families.Line`), the rise within |alpha| <= r of each as its sharpness,
the largest Hessian eigenvalue (`modescape.curvature`), the Keskar-style line between the small- and the
large-batch minimum, filter-normalised planes around the two minima with weight decay (`landscape.sweep`), and
the Hessian spectral densities of those two (`curvature.density`).
"""

from __future__ import annotations

from typing import Any

from .common import (
    contour_spec,
    data_text,
    kendall_tau,
    lines_spec,
    model_text,
    num,
    path_numbers,
    pct,
    plot_series,
    verdict_of,
)
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "epochs": 40,
    "lr": 0.05,
    "batches": [16, 1024],
    "wds": [0.0, 5e-4],
    "seed": 0,
    "radius": 1.0,
    "points_1d": 41,
    "line_points": 41,
    "grid": 25,
    "surface_radius": 1.0,
    "density_probes": 3,
    "density_steps": 40,
    "eval_train": None,
}


def _tag(bs: int, wd: float) -> str:
    return f"bs{bs}-wd{wd:g}"


def run(ctx) -> Outcome:
    import torch

    from .. import curvature as cv
    from .. import space as sp
    from ..directions import random_direction, random_directions
    from ..families import Line, Plane
    from ..landscape import sweep
    from ..paths import evaluate_path
    from ..plots import plot_surface

    s = ctx.settings
    split = ctx.split()
    small, large = s["batches"]
    nets, metrics = {}, {}
    for wd in s["wds"]:
        for bs in s["batches"]:
            tag = _tag(bs, wd)
            nets[tag], metrics[tag] = ctx.train(
                tag,
                split,
                s["model"],
                s["model_args"],
                seed=s["seed"],
                epochs=s["epochs"],
                batch_size=bs,
                lr=s["lr"],
                wd=wd,
            )
    ctx.stop_point("train")
    any_net = next(iter(nets.values()))
    space = sp.WeightSpace(any_net)
    train = (
        split.train
        if s["eval_train"] is None
        else (split.train[0][: s["eval_train"]], split.train[1][: s["eval_train"]])
    )
    data = {"train": train, "test": split.test}
    tags = list(nets)

    def one_d():
        ev = ctx.evaluator(any_net, data, metrics=("loss", "error"))
        points = {t: space.point(nets[t]) for t in tags}
        # the raw direction: one Gaussian for every model, scaled to their mean weight norm (biases excluded)
        raw = random_direction(any_net, normalization="none", ignore="biasbn", seed=s["seed"] + 100)
        norms = {
            t: float(sum(v.double().pow(2).sum() for k, v in points[t].items() if v.dim() > 1) ** 0.5) for t in tags
        }
        raw = sp.scale(raw, (sum(norms.values()) / len(norms)) / float(sp.norm(raw)))
        alphas = torch.linspace(-s["radius"], s["radius"], s["points_1d"], dtype=torch.float64)
        out: dict[str, dict[str, Any]] = {"weight_norm": norms, "raw": {}, "filter": {}, "lambda_max": {}}
        for t in tags:
            bufs = space.buffers(nets[t])
            fd = random_direction(nets[t], normalization="filter", ignore="biasbn", seed=s["seed"])
            for kind, d in (("raw", raw), ("filter", fd)):
                res = evaluate_path(Line.from_direction(points[t], d, bufs or None), ev, t=alphas, name=f"{t} {kind}")
                loss = res.metrics["train_loss"]
                base = float(loss[alphas.abs().argmin()])
                out[kind][t] = {
                    "alpha": alphas.tolist(),
                    "train_loss": loss.tolist(),
                    "sharpness": float(loss.max()) - base,
                    "base": base,
                }
            hev = ctx.evaluator(nets[t], {"train": train}, metrics=("loss",))
            out["lambda_max"][t] = float(cv.eigenvalues(hev, k=1, which="largest", tol=1e-3, seed=s["seed"]).values[0])
        return out

    d1 = ctx.stage("one_d", one_d)

    def lines():
        ev = ctx.evaluator(any_net, data, metrics=("loss", "error"))
        t = torch.linspace(-0.5, 1.5, s["line_points"], dtype=torch.float64)
        out = {}
        for wd in s["wds"]:
            a, b = nets[_tag(small, wd)], nets[_tag(large, wd)]
            res = evaluate_path((a, b), ev, t=t, name=f"wd {wd:g}")
            out[f"{wd:g}"] = path_numbers(res)
        return out

    ln = ctx.stage("lines", lines)
    wd_on = max(s["wds"])

    def planes():
        out = {}
        for bs in s["batches"]:
            net = nets[_tag(bs, wd_on)]
            ev = ctx.evaluator(net, {"train": train}, metrics=("loss",))
            dx, dy = random_directions(net, 2, normalization="filter", ignore="biasbn", seed=s["seed"])
            r = s["surface_radius"]
            axis = torch.linspace(-r, r, s["grid"]).double().numpy()
            grid = {"x": axis, "y": axis}
            ds = sweep(Plane(space.point(net), dx, dy), ev, grid, progress=False)
            out[str(bs)] = {
                "x": ds.x.values.tolist(),
                "y": ds.y.values.tolist(),
                "train_loss": ds["train_loss"].values.tolist(),
            }
        return out

    pl = ctx.stage("planes", planes)

    def spectra():
        out = {}
        for bs in s["batches"]:
            net = nets[_tag(bs, wd_on)]
            ev = ctx.evaluator(net, {"train": train}, metrics=("loss",))
            d = cv.density(ev, n_probes=s["density_probes"], steps=s["density_steps"], seed=s["seed"])
            out[str(bs)] = {
                "grid": d.grid.tolist(),
                "values": d.values.tolist(),
                "nodes": d.nodes.tolist(),
                "weights": d.weights.tolist(),
                "sigma": d.sigma,
                "size": d.size,
            }
        return out

    sd = ctx.stage("spectra", spectra)

    # -- figures ---------------------------------------------------------------------------------------
    figures = []
    fig = ctx.figure("raw_vs_filter.png")
    panels = []
    for kind, label in (("raw", "raw direction (one length for all)"), ("filter", "filter-normalised direction")):
        panels.append(
            {
                "title": label,
                "xlabel": "alpha",
                "ylabel": "train loss",
                "logy": True,
                "series": [
                    {
                        "label": f"batch {t.split('-')[0][2:]}, wd {t.split('-wd')[1]}",
                        "x": d1[kind][t]["alpha"],
                        "y": d1[kind][t]["train_loss"],
                        "style": "-" if t.startswith(f"bs{small}") else "--",
                    }
                    for t in tags
                ],
            }
        )
    plot_series(
        fig,
        panels,
        title=f"{model_text(s['model'], s['model_args'])} on {split.meta['name']}: 1-D slices "
        f"around small-batch (solid) and large-batch (dashed) minima",
    )
    figures.append(
        Figure(
            ctx.rel(fig),
            "Train loss along one raw Gaussian direction (left) and along a "
            "filter-normalised direction (right) around each of the four minima.",
        )
    )
    fig = ctx.figure("interpolation.png")
    plot_series(
        fig,
        [
            {
                "title": f"weight decay {wd}",
                "xlabel": f"alpha (0: batch {small}, 1: batch {large})",
                "ylabel": "loss / error",
                "logy": True,
                "series": [
                    {"label": "train loss", "x": p["t"], "y": p["values"]["train_loss"]},
                    {"label": "test error", "x": p["t"], "y": p["values"]["test_error"], "style": "--"},
                ],
            }
            for wd, p in ln.items()
        ],
        title="the raw 1-D line from the small-batch to the large-batch minimum",
    )
    figures.append(
        Figure(
            ctx.rel(fig),
            "Keskar et al.'s raw line from the small-batch (0) to the large-batch (1) "
            "minimum, weight decay off and on.",
        )
    )
    import xarray as xr

    for bs in s["batches"]:
        p = pl[str(bs)]
        ds = xr.Dataset(
            {"train_loss": (("x", "y"), torch.tensor(p["train_loss"]).numpy())},
            coords={"x": p["x"], "y": p["y"]},
            attrs={"models": {"labels": [f"batch {bs}"], "coords": [[0.0, 0.0]]}},
        )
        files = plot_surface(
            ds,
            ctx.out / "figures",
            var="train_loss",
            prefix=f"surface_bs{bs}",
            kinds=("contour",),
            labels=[f"batch {bs}, wd {wd_on:g}"],
        )
        figures.append(
            Figure(
                ctx.rel(files[0]),
                f"Train loss on a filter-normalised plane around the batch-{bs} "
                f"minimum (weight decay {wd_on:g}); the same scale of axes for both.",
            )
        )
    from ..curvature import Density
    from ..plots.studies import plot_density_overlay

    dens = {}
    for bs in s["batches"]:
        q = sd[str(bs)]
        dens[f"batch {bs}"] = Density(
            torch.tensor(q["nodes"]),
            torch.tensor(q["weights"]),
            torch.tensor(q["grid"]),
            torch.tensor(q["values"]),
            q["sigma"],
            q["size"],
        )
    path = plot_density_overlay(
        dens, ctx.figure("hessian_density.png"), f"Hessian spectral density (SLQ), weight decay {wd_on:g}"
    )
    figures.append(
        Figure(
            ctx.rel(path),
            "Hessian spectral densities of the small- and the large-batch minimum (stochastic Lanczos quadrature).",
        )
    )

    # -- numbers and verdict -------------------------------------------------------------------------------
    err = {t: metrics[t].get("test_error", 1 - metrics[t]["test_accuracy"]) for t in tags}
    rows_wd = {}
    for wd in s["wds"]:
        a, b = _tag(small, wd), _tag(large, wd)
        rows_wd[f"{wd:g}"] = {
            "small_batch_error": err[a],
            "large_batch_error": err[b],
            "filter_sharper_large": d1["filter"][b]["sharpness"] > d1["filter"][a]["sharpness"],
            "raw_sharper_large": d1["raw"][b]["sharpness"] > d1["raw"][a]["sharpness"],
            "lambda_max_larger_large": d1["lambda_max"][b] > d1["lambda_max"][a],
        }
    errs = [err[t] for t in tags]
    tau_filter = kendall_tau([d1["filter"][t]["sharpness"] for t in tags], errs)
    tau_raw = kendall_tau([d1["raw"][t]["sharpness"] for t in tags], errs)
    tau_lmax = kendall_tau([d1["lambda_max"][t] for t in tags], errs)
    large_worse = all(r["large_batch_error"] > r["small_batch_error"] for r in rows_wd.values())
    filter_ranks = all(
        r["filter_sharper_large"] == (r["large_batch_error"] > r["small_batch_error"]) for r in rows_wd.values()
    )
    raw_misleads = any(
        r["raw_sharper_large"] != (r["large_batch_error"] > r["small_batch_error"]) for r in rows_wd.values()
    ) or (tau_raw < tau_filter)
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, {s['epochs']} epochs, lr {s['lr']}, "
        f"batch {small} vs {large}"
    )
    pub = "VGG-9 on CIFAR-10, batch 128 vs 8192 (Li et al. 2018)"
    table = [
        Row(
            f"test error, batch {small} vs {large}",
            "; ".join(
                f"wd {wd}: {pct(r['small_batch_error'])} vs {pct(r['large_batch_error'])}" for wd, r in rows_wd.items()
            ),
            setting,
            "7.37% vs 11.07%",
            pub,
        ),
        Row(
            "filter-normalised sharpness ranks the minima like test error",
            f"{'yes' if filter_ranks else 'no'} (Kendall tau with test error over the 4 models {num(tau_filter)})",
            setting + f", |alpha| <= {s['radius']}",
            "yes: flatter where the error is lower",
            "Li et al. 2018, Figs. 3-5",
        ),
        Row(
            "raw-direction sharpness ranks them like test error",
            f"{'no' if raw_misleads else 'yes'} (tau {num(tau_raw)}; weight norms "
            + ", ".join(f"{t} {num(d1['weight_norm'][t])}" for t in tags)
            + ")",
            setting,
            "no: with weight decay the small-batch minimum looks sharper",
            "Li et al. 2018, Fig. 3",
        ),
        Row(
            "largest Hessian eigenvalue, batch small / large",
            "; ".join(
                f"wd {wd:g}: {num(d1['lambda_max'][_tag(small, wd)])} / {num(d1['lambda_max'][_tag(large, wd)])}"
                for wd in s["wds"]
            )
            + f" (tau with test error {num(tau_lmax)})",
            setting,
            "-",
            "-",
        ),
    ]
    checks = [large_worse, filter_ranks, raw_misleads]
    worse = (
        "generalise worse in both weight-decay settings"
        if large_worse
        else "do not generalise worse in every setting here"
    )
    misleads = "misranks them" if raw_misleads else "ranks them correctly too, so it does not mislead at this scale"
    why = (
        f"large batches {worse}; "
        f"filter-normalised sharpness {'ranks' if filter_ranks else 'does not rank'} the minima like their test "
        f"errors; "
        f"the raw direction {misleads}"
    )
    if not large_worse:
        why += " (the digits task is small: every model fits it, and the ranking that Li et al. explain is absent)"
    inter = [
        contour_spec(
            f"train loss around the batch-{bs} minimum (filter-normalised plane)",
            pl[str(bs)]["x"],
            pl[str(bs)]["y"],
            pl[str(bs)]["train_loss"],
            "x",
            "y",
            "train loss",
            log=True,
            markers=[{"label": f"batch {bs}", "x": 0.0, "y": 0.0}],
        )
        for bs in s["batches"]
    ]
    inter.append(
        lines_spec(
            "filter-normalised 1-D slices",
            [{"label": t, "x": d1["filter"][t]["alpha"], "y": d1["filter"][t]["train_loss"]} for t in tags],
            "alpha",
            "train loss",
            logy=True,
        )
    )
    numbers = {
        "test_error": err,
        "weight_norm": d1["weight_norm"],
        "sharpness_raw": {t: d1["raw"][t]["sharpness"] for t in tags},
        "sharpness_filter": {t: d1["filter"][t]["sharpness"] for t in tags},
        "lambda_max": d1["lambda_max"],
        "tau_filter": tau_filter,
        "tau_raw": tau_raw,
        "tau_lambda_max": tau_lmax,
        "by_weight_decay": rows_wd,
        "large_batch_worse": large_worse,
        "filter_ranks_like_error": filter_ranks,
        "raw_misleads": raw_misleads,
        "train_metrics": metrics,
    }
    return Outcome(numbers, table, verdict_of(checks), why, figures, inter)


STUDY = register(
    Study(
        name="li-filter-normalisation",
        title="Small-batch versus large-batch minima, raw and filter-normalised",
        paper="Li, Xu, Taylor, Studer and Goldstein 2018, Visualizing the loss landscape of neural nets",
        claim="Large-batch minima generalise worse (VGG-9 on CIFAR-10: 7.37% vs 11.07% test error at batch 128 vs "
        "8192); raw 1-D plots mislead because apparent sharpness follows the weights' scale, while "
        "filter-normalised plots rank sharpness like test error, with weight decay on and off.",
        summary="filter normalisation makes sharpness comparable: it ranks minima like test error",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 128},
                "epochs": 10,
                "batches": [128, 8192],
                "lr": 0.1,
                "eval_train": 10000,
                "grid": 25,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 11, "width": 8, "bn": True},
                "epochs": 300,
                "lr": 0.1,
                "batches": [128, 8192],
                "grid": 51,
                "eval_train": 10000,
                "density_probes": 5,
                "density_steps": 80,
            },
        },
        smoke={
            "model_args": {"depth": 1, "width": 16},
            "epochs": 2,
            "batches": [32, 512],
            "points_1d": 7,
            "line_points": 7,
            "grid": 5,
            "density_probes": 1,
            "density_steps": 8,
        },
        tour={"epochs": 20, "grid": 21, "points_1d": 31, "line_points": 31, "density_probes": 2, "density_steps": 30},
        stages=("train", "one_d", "lines", "planes", "spectra"),
        docs=("landscapes.md", "curvature.md"),
    )
)

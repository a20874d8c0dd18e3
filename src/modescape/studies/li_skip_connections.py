"""li-skip-connections: deep plain networks have chaotic landscapes, skip connections smooth them (Li et al. 2018).

Claim (Li, Xu, Taylor, Studer and Goldstein 2018, Sec. 5-6): as ResNets without skip connections get deeper
their filter-normalised surfaces turn from one convex-looking basin into a chaotic landscape of many local
minima with strong negative curvature (ResNet-20/56/110-noshort on CIFAR-10); with skip connections they
stay smooth at every depth, and the convexity map |lambda_min / lambda_max| stays small around the minimum.
Measured for each depth, with and without skips: a filter-normalised plane (`landscape.sweep`), its
0-dimensional sublevel-set persistence (`modescape.topology`: the number of minima, the basins above a
threshold, the depth of the deepest spurious basin and the smoothness S = 1 / (1 + total persistence /
range)), the convexity map (`landscape.convexity`), and the test error.
"""

from __future__ import annotations

from .common import data_text, num, pct, plot_series, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "depths": [8, 20],
    "width": 1,
    "norm": "bn",
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "grid": 21,
    "radius": 1.0,
    "eval_train": 512,
    "convexity_grid": 3,
    "convexity_train": 128,
    "convexity_depths": [20],
    "threshold": "1%",
}


def _key(depth: int, skip: bool) -> str:
    return f"resnet{depth}{'' if skip else '-noshort'}"


def run(ctx) -> Outcome:
    import numpy as np
    import xarray as xr

    from .. import space as sp
    from .. import topology
    from ..directions import random_directions
    from ..families import Plane
    from ..landscape import convexity, sweep

    s = ctx.settings
    split = ctx.split()
    nets = {}
    for depth in s["depths"]:
        for skip in (True, False):
            args = {"depth": depth, "width": s["width"], "skip": skip, "norm": s["norm"]}
            nets[_key(depth, skip)] = ctx.train(
                _key(depth, skip),
                split,
                "resnet",
                args,
                seed=s["seed"],
                epochs=s["epochs"],
                batch_size=s["batch_size"],
                lr=s["lr"],
                wd=s["wd"],
            )
    ctx.stop_point("train")
    train = (split.train[0][: s["eval_train"]], split.train[1][: s["eval_train"]])
    ctrain = (split.train[0][: s["convexity_train"]], split.train[1][: s["convexity_train"]])
    r = s["radius"]
    grid = {"x": np.linspace(-r, r, s["grid"]), "y": np.linspace(-r, r, s["grid"])}
    cgrid = {"x": np.linspace(-r, r, s["convexity_grid"]), "y": np.linspace(-r, r, s["convexity_grid"])}

    def surfaces():
        out = {}
        for key, (net, _) in nets.items():
            dx, dy = random_directions(net, 2, normalization="filter", ignore="biasbn", seed=s["seed"])
            fam = Plane(sp.WeightSpace(net).point(net), dx, dy, buffers=sp.WeightSpace(net).buffers(net) or None)
            ds = sweep(fam, ctx.evaluator(net, {"train": train}, metrics=("loss",), bn="running"), grid, progress=False)
            out[key] = {"train_loss": ds["train_loss"].values.tolist()}
            if s["convexity_grid"] > 1 and int(key[6:].split("-")[0]) in s["convexity_depths"]:
                cev = ctx.evaluator(net, {"train": ctrain}, metrics=("loss",), bn="running")
                cds = convexity(fam, cev, cgrid, progress=False)
                out[key]["convexity"] = cds["convexity_ratio"].values.tolist()
        return out

    surf = ctx.stage("surfaces", surfaces)
    topo, rows = {}, {}
    for key, (_, m) in nets.items():
        ds = xr.Dataset({"train_loss": (("x", "y"), np.asarray(surf[key]["train_loss"]))}, coords=grid)
        topo[key] = topology.persistence(ds, "train_loss", threshold=s["threshold"])
        t = topo[key]
        conv = np.asarray(surf[key].get("convexity", []), dtype=np.float64)
        has_map = bool(np.isfinite(conv).any())  # a convexity map only at `convexity_depths`
        rows[key] = {
            "test_error": 1 - m["test_accuracy"],
            "n_minima": t.n_minima,
            "basins": t.basins,
            "deepest_spurious": t.deepest_spurious_depth,
            "smoothness": t.smoothness,
            "roughness": t.roughness,
            "convexity_mean": float(np.nanmean(conv)) if has_map else float("nan"),
            "convexity_max": float(np.nanmax(conv)) if has_map else float("nan"),
            "loss_range": t.value_range,
        }
    _figures(ctx, s, grid, surf, topo)
    deepest = max(s["depths"])
    skip_deep, plain_deep = rows[_key(deepest, True)], rows[_key(deepest, False)]
    plain_shallow = rows[_key(min(s["depths"]), False)]
    rougher_plain = plain_deep["smoothness"] < skip_deep["smoothness"]
    plain_worse_with_depth = plain_deep["smoothness"] <= plain_shallow["smoothness"]
    cd = max(s["convexity_depths"]) if s["convexity_grid"] > 1 and s["convexity_depths"] else None
    conv_plain = cd is None or rows[_key(cd, False)]["convexity_mean"] > rows[_key(cd, True)]["convexity_mean"]
    setting = (
        f"CIFAR-style ResNets width {s['width']}, norm {s['norm']}, {data_text(split.meta)}, {s['epochs']} "
        f"epochs; {s['grid']}x{s['grid']} plane, |x|, |y| <= {r}, loss on {s['eval_train']} training samples"
    )
    pub = "ResNet-20/56/110 with and without skips on CIFAR-10 (Li et al. 2018, Figs. 5-7)"
    table = [
        Row(
            f"{k}: minima / basins above {s['threshold']} / deepest spurious basin / smoothness S",
            f"{v['n_minima']} / {v['basins']} / {num(v['deepest_spurious'])} / {num(v['smoothness'])}; test error "
            f"{pct(v['test_error'])}",
            setting,
            "chaotic without skips at depth 56-110, smooth with them",
            pub,
        )
        for k, v in rows.items()
    ]
    table.append(
        Row(
            "convexity map |lambda_min/lambda_max|, mean over the grid",
            "; ".join(
                f"{k} {num(v['convexity_mean'])}" for k, v in rows.items() if v["convexity_mean"] == v["convexity_mean"]
            )
            or "-",
            setting + f"; {s['convexity_grid']}x{s['convexity_grid']} map on {s['convexity_train']} samples",
            "small around minima of smooth landscapes, large for chaotic ones",
            pub,
        )
    )
    checks = [rougher_plain, plain_worse_with_depth, conv_plain]
    why = (
        f"at depth {deepest} the plain network's surface has smoothness {num(plain_deep['smoothness'])} "
        f"({plain_deep['n_minima']} minima) against {num(skip_deep['smoothness'])} ({skip_deep['n_minima']}) with "
        "skips"
        + (
            ""
            if cd is None
            else f"; at depth {cd} the mean convexity ratio is "
            f"{num(rows[_key(cd, False)]['convexity_mean'])} without skips, "
            f"{num(rows[_key(cd, True)]['convexity_mean'])} with"
        )
        + "; "
        "the published chaos appears at depths 56-110 on CIFAR-10, far deeper than these"
    )
    numbers = {
        "models": rows,
        "checks": {
            "plain_rougher_than_skip": rougher_plain,
            "plain_rougher_with_depth": plain_worse_with_depth,
            "plain_less_convex": conv_plain,
        },
    }
    figs = [
        Figure(
            "figures/surfaces.png",
            "Train loss on a filter-normalised plane around each network, minima "
            "marked (top: with skips; bottom: without).",
        ),
        Figure("figures/smoothness.png", "Smoothness S of each surface and its number of minima against depth."),
    ]
    if cd is not None:
        figs.append(Figure("figures/convexity.png", "Convexity maps |lambda_min / lambda_max| on the same planes."))
    return Outcome(
        numbers,
        table,
        verdict_of(checks),
        why,
        figs,
        [
            {
                "kind": "lines",
                "title": "smoothness of the surface against depth",
                "xlabel": "depth",
                "ylabel": "smoothness S",
                "logx": False,
                "logy": False,
                "series": [
                    {
                        "label": lab,
                        "x": s["depths"],
                        "y": [rows[_key(d, sk)]["smoothness"] for d in s["depths"]],
                        "dash": not sk,
                    }
                    for lab, sk in (("with skips", True), ("without skips", False))
                ],
            }
        ],
    )


def _figures(ctx, s, grid, surf, topo) -> None:
    import numpy as np

    from ..plots.studies import plot_map_grid, plot_minima_grid

    depths = s["depths"]
    plot_minima_grid(
        [
            [(f"{_key(d, skip)}: {topo[_key(d, skip)].n_minima} minima", topo[_key(d, skip)]) for d in depths]
            for skip in (True, False)
        ],
        ctx.figure("surfaces.png"),
    )
    plot_series(
        ctx.figure("smoothness.png"),
        [
            {
                "xlabel": "depth",
                "ylabel": "smoothness S",
                "series": [
                    {
                        "label": lab,
                        "x": depths,
                        "y": [topo[_key(d, sk)].smoothness for d in depths],
                        "style": "-" if sk else "--",
                    }
                    for lab, sk in (("with skips", True), ("without skips", False))
                ],
            },
            {
                "xlabel": "depth",
                "ylabel": "local minima on the plane",
                "series": [
                    {
                        "label": lab,
                        "x": depths,
                        "y": [topo[_key(d, sk)].n_minima for d in depths],
                        "style": "-" if sk else "--",
                    }
                    for lab, sk in (("with skips", True), ("without skips", False))
                ],
            },
        ],
    )
    cdepths = [d for d in depths if d in s["convexity_depths"]]
    if s["convexity_grid"] > 1 and cdepths:
        r = s["radius"]
        plot_map_grid(
            np.linspace(-r, r, s["convexity_grid"]).tolist(),
            [[(_key(d, skip), surf[_key(d, skip)]["convexity"]) for d in cdepths] for skip in (True, False)],
            ctx.figure("convexity.png"),
            "|lambda_min / lambda_max|",
        )


STUDY = register(
    Study(
        name="li-skip-connections",
        title="Skip connections and the chaos of deep landscapes",
        paper="Li, Xu, Taylor, Studer and Goldstein 2018, Visualizing the loss landscape of neural nets",
        claim="Without skip connections, deeper ResNets have chaotic filter-normalised landscapes (many local minima, "
        "strong negative curvature); with skip connections they stay smooth at every depth.",
        summary="skip connections keep deep landscapes smooth (persistence, convexity)",
        run=run,
        needs=("modescape.topology",),
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "data_args": {"n_train": 10000},
                "depths": [8, 20],
                "epochs": 5,
                "batch_size": 128,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "depths": [20, 56, 110],
                "epochs": 300,
                "batch_size": 128,
                "lr": 0.1,
                "grid": 51,
                "eval_train": 10000,
                "convexity_grid": 11,
                "convexity_train": 2048,
                "convexity_depths": [20, 56, 110],
            },
        },
        smoke={"depths": [8], "epochs": 1, "grid": 5, "eval_train": 128, "convexity_grid": 0},
        stages=("train", "surfaces"),
        docs=("landscapes.md",),
    )
)

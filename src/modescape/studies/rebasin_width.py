"""rebasin-width: the barrier between two networks after permutation alignment, against width (Ainsworth,
Hayase and Srinivasa 2022; Entezari, Sedghi, Saukh and Neyshabur 2022).

Claim: two networks trained from different seeds are separated by a barrier on the straight line, but most
of it is a permutation of the hidden units: aligning B to A (weight matching, activation matching, the
straight-through estimator) removes it, and the barrier after alignment shrinks towards zero as the networks
get wider, while the barrier before alignment does not. Measured with `modescape.symmetry` (`match`,
`apply`, `interpolation`; REPAIR after weight matching for comparison): two wide MLPs on all the training
data, then one pair per width. This is parts 1 and 2 of the former ``studies/symmetry_mnist.py``; with
``--data-root`` MNIST it runs that script's settings (the numbers of docs/symmetry.md).
"""

from __future__ import annotations

from .common import data_text, num, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "depth": 3,
    "epochs": 30,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "width": 512,
    "widths": [8, 16, 32, 64, 128, 256],
    "sweep_n_train": None,
    "eval_train": None,
    "points": 25,
    "match_samples": None,
    "ste_steps": 300,
}
METHODS = ("weights", "activations", "ste")


def _barrier(curve) -> float:
    return curve.barriers()["test_loss"]["barrier_linear"]


def run(ctx) -> Outcome:
    import time

    import torch

    from .. import symmetry as sy
    from ..plots import plot_alignment
    from ..symmetry.align import interpolation
    from .common import path_numbers

    s = ctx.settings
    full = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"], "schedule": "cosine"}

    def subset(pair, n):
        return pair if n is None else (pair[0][:n], pair[1][:n])

    a_net, a_m = ctx.train(
        f"full/w{s['width']}-s0", full, "mlp", {"depth": s["depth"], "width": s["width"]}, seed=0, **cfg
    )
    b_net, b_m = ctx.train(
        f"full/w{s['width']}-s1", full, "mlp", {"depth": s["depth"], "width": s["width"]}, seed=1, **cfg
    )
    ctx.stop_point("train")

    def interp():
        data = {"train": subset(full.train, s["eval_train"]), "test": full.test}
        match_data = subset(full.train, s["match_samples"])
        spec = sy.infer_spec(a_net)
        a, b = sy.state_of(a_net), sy.state_of(b_net)
        ev = ctx.evaluator(a_net, data, metrics=("loss", "accuracy"))
        curves, timings, perms = {}, {}, {}
        curves["naive"] = interpolation(a_net, a, b, data, s["points"], evaluator=ev, name="naive")
        params = [n for n, _ in a_net.named_parameters()]
        for method in METHODS:
            t0 = time.perf_counter()
            kwargs = {"steps": s["ste_steps"]} if method == "ste" else {}
            perms[method] = sy.match(
                a_net, a, b, method, data=full.train if method == "ste" else match_data, spec=spec, **kwargs
            )
            timings[method] = time.perf_counter() - t0
            aligned = sy.apply(spec, b, perms[method])
            curves[method] = interpolation(a_net, a, aligned, data, s["points"], evaluator=ev, name=method)
        aligned = sy.apply(spec, b, perms["weights"])
        curves["weights+REPAIR"] = interpolation(
            a_net, a, aligned, data, s["points"], evaluator=ev, repair_data=match_data, name="weights+REPAIR"
        )
        agree = {p: float((perms["weights"][p] == perms["activations"][p]).double().mean()) for p in spec.sizes}
        distance = {"naive": float(torch.stack([((a[n] - b[n]) ** 2).sum() for n in params]).sum().sqrt())}
        for k in perms:
            moved = sy.apply(spec, b, perms[k])
            distance[k] = float(torch.stack([((a[n] - moved[n]) ** 2).sum() for n in params]).sum().sqrt())
        return {
            "curves": {k: path_numbers(c) for k, c in curves.items()},
            "barrier": {k: _barrier(c) for k, c in curves.items()},
            "match_seconds": timings,
            "weights_vs_activations_agreement": agree,
            "distance_to_a": distance,
        }

    it = ctx.stage("interp", interp)

    def sweep():
        sub = full if s["sweep_n_train"] is None else ctx.split(n_train=s["sweep_n_train"])
        rows = []
        for width in s["widths"]:
            args = {"depth": s["depth"], "width": width}
            wa, ma = ctx.train(f"sweep/w{width}-s0", sub, "mlp", args, seed=0, **cfg)
            wb, mb = ctx.train(f"sweep/w{width}-s1", sub, "mlp", args, seed=1, **cfg)
            sa, sb = sy.state_of(wa), sy.state_of(wb)
            wspec = sy.infer_spec(wa)
            wdata = {"test": sub.test}
            wev = ctx.evaluator(wa, wdata, metrics=("loss", "accuracy"))
            mdata = subset(sub.train, s["match_samples"])
            row = {
                "width": width,
                "accuracy": [ma["test_accuracy"], mb["test_accuracy"]],
                "naive": _barrier(interpolation(wa, sa, sb, wdata, s["points"], evaluator=wev)),
            }
            for method in ("weights", "activations"):
                pm = sy.match(wa, sa, sb, method, data=mdata, spec=wspec)
                row[method] = _barrier(
                    interpolation(wa, sa, sy.apply(wspec, sb, pm), wdata, s["points"], evaluator=wev)
                )
            pm = sy.match(wa, sa, sb, "weights", spec=wspec)
            row["weights+REPAIR"] = _barrier(
                interpolation(wa, sa, sy.apply(wspec, sb, pm), wdata, s["points"], evaluator=wev, repair_data=mdata)
            )
            ctx.log(
                f"width {width}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("width", "accuracy"))
            )
            rows.append(row)
        return rows

    sw = ctx.stage("sweep", sweep)

    # -- figures ---------------------------------------------------------------------------------------

    from ..evaluate import Metrics
    from ..paths import PathResult

    def as_path(d):
        names = tuple(d["values"])
        vals = torch.tensor([d["values"][n] for n in names], dtype=torch.float64).T
        return PathResult(
            torch.tensor(d["t"], dtype=torch.float64),
            Metrics(vals, names, d["bn"]),
            torch.zeros(len(d["t"]), dtype=torch.float64),
            d["name"],
        )

    mnist = full.meta["name"] == "mnist"
    fig_i = ctx.figure("interp.png")
    plot_alignment(
        {k: as_path(it["curves"][k]) for k in ("naive", *METHODS, "weights+REPAIR")},
        str(fig_i),
        title=f"{full.meta['name']} MLP {s['depth']}x{s['width']}: A -> B before and after alignment",
        log_loss=True,
    )
    fig_w = ctx.figure("width.png")
    _plot_sweep(sw, fig_w, s["depth"])
    figures = [
        Figure(
            ctx.rel(fig_i),
            f"Loss and accuracy along the line from A to B ({s['depth']}x{s['width']} MLPs) "
            "before alignment and after each matching method.",
            "symmetry_mnist_interp.png" if mnist else "",
        ),
        Figure(
            ctx.rel(fig_w),
            "Test-loss barrier between two seeds' MLPs against width, before and after alignment.",
            "symmetry_mnist_width.png" if mnist else "",
        ),
    ]

    # -- verdict ---------------------------------------------------------------------------------------
    err_before = it["curves"]["naive"]["barriers"]["test_error"]["barrier_linear"]
    err_after = it["curves"]["weights"]["barriers"]["test_error"]["barrier_linear"]
    removed = 1 - it["barrier"]["weights"] / it["barrier"]["naive"] if it["barrier"]["naive"] > 0 else 0.0
    first, last = sw[0], sw[-1]
    after_key = "activations"
    shrinks_after = last[after_key] < 0.5 * first[after_key]
    # Entezari et al.: without alignment the barrier does not vanish with width; here it stays far above the
    # aligned one at the largest width
    naive_flat = last["naive"] > 10 * last[after_key]
    setting = (
        f"MLP {s['depth']}x{s['width']}, {data_text(full.meta)}, {s['epochs']} epochs, seeds 0 and 1, "
        f"{s['points']} points"
    )
    sweep_setting = (
        f"MLP depth {s['depth']}, widths {s['widths'][0]}-{s['widths'][-1]}, one pair per width, {s['epochs']} epochs"
    )
    table = [
        Row(
            "test-error barrier A -> B before / after weight matching",
            f"{points(err_before)} / {points(err_after)} (test-loss barrier {num(it['barrier']['naive'])} -> "
            f"{num(it['barrier']['weights'])}, {removed:.0%} removed)",
            setting,
            "7.4 / 0.25 points",
            "MNIST MLP 3x512, an earlier modescape measurement (issue 12)",
        ),
        Row(
            "test-loss barrier after alignment vs width",
            f"{num(first[after_key])} (width {first['width']}) -> {num(last[after_key])} (width {last['width']}) "
            f"with activation matching; weight matching {num(first['weights'])} -> {num(last['weights'])}",
            sweep_setting,
            "towards zero as width grows",
            "Ainsworth et al. 2022; Entezari et al. 2022",
        ),
        Row(
            "test-loss barrier before alignment vs width",
            f"{num(first['naive'])} -> {num(last['naive'])} ({last['naive'] / max(last[after_key], 1e-12):.0f}x "
            f"the aligned barrier at width {last['width']})",
            sweep_setting,
            "does not vanish with width",
            "Entezari et al. 2022",
        ),
        Row(
            "straight-through estimator; weights + REPAIR",
            f"{num(it['barrier']['ste'])}; {num(it['barrier']['weights+REPAIR'])} (test-loss barrier)",
            setting,
            "-",
            "-",
        ),
    ]
    checks = [removed > 0.8, shrinks_after, naive_flat]
    why = (
        f"alignment removes {removed:.0%} of the test-loss barrier of the {s['depth']}x{s['width']} pair; after "
        f"activation matching the barrier falls {first[after_key] / max(last[after_key], 1e-12):.1f}x from width "
        f"{first['width']} to {last['width']}, before alignment {first['naive'] / max(last['naive'], 1e-12):.1f}x "
        "(one pair per width: the curve is noisy)"
    )
    numbers = {
        "endpoints": {"a": a_m, "b": b_m},
        "barrier": it["barrier"],
        "test_error_barrier": {"naive": err_before, "weights": err_after},
        "removed_fraction": removed,
        "weights_vs_activations_agreement": it["weights_vs_activations_agreement"],
        "distance_to_a": it["distance_to_a"],
        "width_sweep": sw,
        "checks": {
            "alignment_removes_most": removed > 0.8,
            "shrinks_with_width_after": shrinks_after,
            "naive_stays": naive_flat,
        },
    }
    inter = [
        {
            "kind": "lines",
            "title": "test-loss barrier against width",
            "xlabel": "hidden width",
            "ylabel": "barrier",
            "logx": True,
            "logy": True,
            "series": [
                {"label": k, "x": [r["width"] for r in sw], "y": [r[k] for r in sw], "dash": k == "naive"}
                for k in ("naive", "weights", "activations", "weights+REPAIR")
            ],
        }
    ]
    return Outcome(numbers, table, verdict_of(checks), why, figures, inter)


def _plot_sweep(sweep, path, depth: int) -> None:
    from .common import plot_series

    plot_series(
        path,
        [
            {
                "xlabel": f"hidden width ({depth} hidden layers)",
                "ylabel": "test-loss barrier (A -> B)",
                "logx": True,
                "logx_base": 2,
                "logy": True,
                "series": [
                    {
                        "label": k,
                        "x": [r["width"] for r in sweep],
                        "y": [r[k] for r in sweep],
                        "style": "--" if k == "weights+REPAIR" else "-",
                    }
                    for k in ("naive", "weights", "activations", "weights+REPAIR")
                ],
            }
        ],
        width=5.2,
        height=4.0,
    )


STUDY = register(
    Study(
        name="rebasin-width",
        title="Permutation alignment and width",
        paper="Ainsworth, Hayase and Srinivasa 2022, Git re-basin; Entezari, Sedghi, Saukh and Neyshabur 2022, "
        "The role "
        "of permutation invariance in linear mode connectivity",
        claim="Aligning the hidden units of one network to another removes most of the barrier between them, and the "
        "barrier after alignment goes to zero as width grows (before alignment it does not).",
        summary="alignment removes the barrier, more so as width grows",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "epochs": 5,
                "batch_size": 128,
                "width": 512,
                "widths": [32, 64, 128, 256, 512, 1024],
                "sweep_n_train": 20000,
                "eval_train": 10000,
                "match_samples": 10000,
            },
            "gpu": {
                **BASE,
                "data": "mnist",
                "epochs": 20,
                "batch_size": 128,
                "width": 512,
                "widths": [32, 64, 128, 256, 512, 1024, 2048, 4096],
                "eval_train": 10000,
                "match_samples": 10000,
            },
        },
        smoke={"epochs": 2, "width": 32, "widths": [8, 32], "points": 5, "ste_steps": 5, "match_samples": 500},
        tour={"epochs": 20, "width": 128, "widths": [8, 32, 128], "ste_steps": 100},
        stages=("train", "interp", "sweep"),
        docs=("symmetry.md",),
    )
)

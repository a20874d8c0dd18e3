"""brea-permutation: the path that swaps two hidden units, its saddle, and the valley of tied units (Brea,
Simsek, Illing and Gerstner 2019).

Claim: swapping two units of a layer maps a minimum onto an equivalent one; the straight path between the
two rises to a barrier at the permutation point t = 1/2, where the two units are identical and the Hessian
has negative eigenvalues (a saddle); relaxing the loss with the two units tied finds a valley of points of
equal loss joining the permuted minima through such saddles. Measured with `modescape.symmetry`:
`best_pair` scores every pair of the middle hidden layer, `swap_analysis` gives the loss along three swap
paths (a random pair, the lowest- and the highest-barrier pair), the smallest Hessian eigenvalues
(Lanczos) at t = 1/2 and at the trained network, and the loss and eigenvalues after relaxing the
midpoint with the units tied. This is the swap part of the former ``studies/symmetry_mnist.py``; with
``--data-root`` MNIST it runs that script's settings.
"""

from __future__ import annotations

from typing import Any

from .common import data_text, model_text, num, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "depth": 3,
    "width": 16,
    "epochs": 40,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "layer": "fc1",
    "samples": None,
    "points": 25,
    "k": 3,
    "relax_steps": 200,
    "relax_lr": 0.05,
}


def run(ctx) -> Outcome:
    import torch

    from .. import symmetry as sy
    from ..plots.studies import plot_swap_losses

    s = ctx.settings
    split = ctx.split()
    args = {"depth": s["depth"], "width": s["width"]}
    net, metrics = ctx.train(
        f"w{s['width']}-s{s['seed']}",
        split,
        s["model"],
        args,
        seed=s["seed"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        wd=s["wd"],
    )
    ctx.stop_point("train")

    def swaps():
        state = sy.state_of(net)
        spec = sy.infer_spec(net)
        n_s = s["samples"]
        data = split.train if n_s is None else (split.train[0][:n_s], split.train[1][:n_s])
        ev = ctx.evaluator(net, data, metrics=("loss", "accuracy"))
        n = s["width"]
        best = sy.best_pair(net, state, s["layer"], evaluator=ev, candidates=n * (n - 1) // 2, n_points=s["points"])
        worst = max(best["scored"], key=lambda r: r["barrier"])
        gen = torch.Generator().manual_seed(0)
        i, j = sorted(torch.randperm(n, generator=gen)[:2].tolist())
        out: dict[str, Any] = {}
        for label, (u, v) in (
            ("random pair", (i, j)),
            ("lowest-barrier pair", (best["i"], best["j"])),
            ("highest-barrier pair", (worst["i"], worst["j"])),
        ):
            out[label] = sy.swap_analysis(
                net,
                state,
                s["layer"],
                u,
                v,
                evaluator=ev,
                n_points=s["points"],
                k=s["k"],
                eigen_at_start=not out,
                relax_steps=s["relax_steps"],
                relax_lr=s["relax_lr"],
                spec=spec,
            )
        return {"search": best, "swaps": out}

    r = ctx.stage("swaps", swaps)
    sw = r["swaps"]
    start = next(v["start_eigenvalues"] for v in sw.values() if "start_eigenvalues" in v)
    fig = ctx.figure("swap.png")
    plot_swap_losses(sw, start, fig, f"{model_text(s['model'], args)} on {split.meta['name']}, layer {s['layer']}")

    rnd, hi = sw["random pair"], sw["highest-barrier pair"]
    loss_a = rnd["loss"][0]
    peak_mid = all(abs(v["t"][max(range(len(v["loss"])), key=v["loss"].__getitem__)] - 0.5) < 1e-9 for v in (rnd, hi))
    saddle = min(rnd["eigenvalues"][0], hi["eigenvalues"][0]) < 2 * min(start[0], 0.0) - 1e-6
    index = {k: sum(1 for e in v["eigenvalues"] if e < 0) for k, v in sw.items()}
    relaxed = {k: v.get("relaxed", {}) for k, v in sw.items()}
    # Brea et al.'s valley: after relaxing with the units tied the point keeps its negative curvature (a saddle
    # between A and its swapped copy) while its loss comes down to A's
    valley = all(rv and rv["loss"] <= 1.1 * loss_a for rv in relaxed.values())
    relaxed_saddle = all(
        rv and rv.get("eigenvalues", [0])[0] < 2 * min(start[0], 0.0) - 1e-6 for rv in relaxed.values()
    )
    setting = f"{model_text(s['model'], args)}, {data_text(split.meta)}, {s['epochs']} epochs, layer {s['layer']}"
    pub = "Brea et al. 2019 (qualitative: teacher-student and MNIST networks)"
    table = [
        Row(
            "loss along the swap path peaks at the permutation point t = 1/2",
            f"{'yes' if peak_mid else 'no'}: barrier {num(rnd['barrier']['barrier_linear'])} (random pair "
            f"{rnd['i']}, {rnd['j']}), {num(hi['barrier']['barrier_linear'])} (highest), "
            f"{num(sw['lowest-barrier pair']['barrier']['barrier_linear'])} (lowest)",
            setting,
            "yes: a barrier between permuted minima",
            pub,
        ),
        Row(
            "smallest Hessian eigenvalues at t = 1/2 vs at the trained network",
            f"{num(rnd['eigenvalues'][0])} (random), {num(hi['eigenvalues'][0])} (highest) vs {num(start[0])}; "
            f"negative among the {s['k']} smallest: " + ", ".join(f"{k} {v}" for k, v in index.items()),
            setting,
            "negative: the permutation point is a saddle",
            pub,
        ),
        Row(
            "after relaxing with the units tied: loss (A's own) and smallest eigenvalue",
            "; ".join(
                f"{k} {num(v.get('loss'))} ({num(loss_a)}), {num(v.get('eigenvalues', [None])[0])}"
                for k, v in relaxed.items()
            ),
            setting + f", {s['relax_steps']} projected steps",
            "equal-loss valley through saddles",
            pub,
        ),
    ]
    checks = [peak_mid, saddle, valley and relaxed_saddle]
    why = (
        f"the swap paths peak at t = 1/2 ({'yes' if peak_mid else 'no'}) where the Hessian has eigenvalues down to "
        f"{num(min(rnd['eigenvalues'][0], hi['eigenvalues'][0]))}, against {num(start[0])} at the network itself; "
        + (
            "relaxing with the units tied reaches A's loss and keeps the negative curvature: the valley of Brea et al."
            if valley and relaxed_saddle
            else "relaxing with the units tied lowers the loss but the curvature returns to the scale of A's own "
            "(A is not an exact minimum after finite training with weight decay), so the permutation saddle of "
            "the valley is not isolated at this scale"
        )
    )
    figs = [
        Figure(
            ctx.rel(fig),
            "Train loss along the paths that swap two units of the middle hidden layer; the "
            "legend gives each pair's smallest Hessian eigenvalue at the permutation point.",
            docs="symmetry_mnist_swap.png" if split.meta["name"] == "mnist" else "",
        )
    ]
    return Outcome(
        {
            "search": {k: r["search"][k] for k in ("i", "j", "barrier", "exhaustive")},
            "barriers": {k: v["barrier"] for k, v in sw.items()},
            "eigenvalues_midpoint": {k: v["eigenvalues"] for k, v in sw.items()},
            "eigenvalues_at_a": start,
            "relaxed": relaxed,
            "index_lower_bound": index,
            "loss_at_a": loss_a,
            "model": metrics,
            "checks": {
                "peak_at_midpoint": peak_mid,
                "saddle": saddle,
                "valley": valley,
                "relaxed_saddle": relaxed_saddle,
            },
        },
        table,
        verdict_of(checks),
        why,
        figs,
        [
            {
                "kind": "lines",
                "title": "train loss along the swap paths",
                "xlabel": "t",
                "ylabel": "train loss",
                "logx": False,
                "logy": False,
                "series": [
                    {"label": f"{k} ({v['i']}, {v['j']})", "x": v["t"], "y": v["loss"], "dash": False}
                    for k, v in sw.items()
                ],
            }
        ],
    )


STUDY = register(
    Study(
        name="brea-permutation",
        title="Permutation saddles: the path that swaps two units",
        paper="Brea, Simsek, Illing and Gerstner 2019, Weight-space symmetry in deep networks gives rise to "
        "permutation "
        "saddles, connected by equal-loss valleys across the loss landscape",
        claim="The straight path that swaps two hidden units rises to a barrier at the permutation point, where the "
        "two units coincide and the Hessian has negative eigenvalues (a saddle); relaxing with the units tied "
        "finds equal-loss valleys through such saddles.",
        summary="a swap of two units crosses a saddle at the permutation point",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {**BASE, "data": "mnist", "epochs": 10, "batch_size": 128, "samples": 5000},
            "gpu": {**BASE, "data": "mnist", "epochs": 10, "batch_size": 128, "samples": 5000, "width": 32},
        },
        smoke={"width": 6, "epochs": 3, "points": 5, "k": 2, "relax_steps": 5, "samples": 400},
        stages=("train", "swaps"),
        docs=("symmetry.md",),
    )
)

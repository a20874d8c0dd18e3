"""repair: the barrier after alignment, with and without REPAIR (Jordan, Sedghi, Saukh, Entezari and
Neyshabur 2022).

Claim: even after permutation alignment, the midpoint of two networks without normalisation layers loses
accuracy because its hidden units' activations collapse in variance; resetting each unit's mean and
standard deviation to the interpolation of the endpoints' (REPAIR) removes most of the rest (VGG11 on
CIFAR-10: a merging penalty of about 20% without REPAIR, about 5% with). Measured with `modescape.symmetry`:
weight matching, then the line A -> aligned B plain and REPAIRed (`symmetry.interpolation(repair_data=...)`),
on a convolutional network without normalisation and on an MLP. The REPAIR column of the former
``studies/symmetry_mnist.py`` is in the rebasin-width study; this one compares architectures.
"""

from __future__ import annotations

from .common import data_text, model_text, points, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "data_args": {},
    "models": [
        {"model": "cnn", "args": {"width": 16, "norm": "none"}},
        {"model": "mlp", "args": {"depth": 3, "width": 128}},
    ],
    "epochs": 30,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "points": 25,
    "match_samples": None,
    "eval_train": None,
}


def run(ctx) -> Outcome:
    from .. import symmetry as sy
    from ..symmetry.align import interpolation
    from .common import path_numbers, plot_series

    s = ctx.settings
    split = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"]}
    nets = {}
    for m in s["models"]:
        key = model_text(m["model"], m["args"])
        tag = key.replace(" ", "_").replace("=", "")
        nets[key] = [ctx.train(f"{tag}-s{seed}", split, m["model"], m["args"], seed=seed, **cfg) for seed in (0, 1)]
    ctx.stop_point("train")

    def subset(pair, n):
        return pair if n is None else (pair[0][:n], pair[1][:n])

    def lines():
        out = {}
        data = {"train": subset(split.train, s["eval_train"]), "test": split.test}
        mdata = subset(split.train, s["match_samples"])
        for key, ((a_net, ma), (b_net, mb)) in nets.items():
            spec = sy.infer_spec(a_net, data=mdata)
            a, b = sy.state_of(a_net), sy.state_of(b_net)
            ev = ctx.evaluator(a_net, data, metrics=("loss", "error"))
            perms = sy.match(a_net, a, b, "weights", spec=spec)
            aligned = sy.apply(spec, b, perms)
            curves = {
                "naive": interpolation(a_net, a, b, data, s["points"], evaluator=ev, name="naive"),
                "aligned": interpolation(a_net, a, aligned, data, s["points"], evaluator=ev, name="aligned"),
                "aligned+REPAIR": interpolation(
                    a_net,
                    a,
                    aligned,
                    data,
                    s["points"],
                    evaluator=ev,
                    spec=spec,
                    repair_data=mdata,
                    name="aligned+REPAIR",
                ),
            }
            out[key] = {"curves": {k: path_numbers(c) for k, c in curves.items()}, "endpoints": [ma, mb]}
        return out

    r = ctx.stage("lines", lines)
    keys = list(r)
    panels = []
    for key in keys:
        c = r[key]["curves"]
        panels.append(
            {
                "title": key,
                "xlabel": "t (0: A, 1: aligned B)",
                "ylabel": "test error",
                "series": [
                    {
                        "label": name,
                        "x": c[name]["t"],
                        "y": c[name]["values"]["test_error"],
                        "style": "--" if name == "naive" else "-",
                    }
                    for name in c
                ],
            }
        )
    fig = ctx.figure("repair.png")
    plot_series(
        fig, panels, title=f"{split.meta['name']}: the line between two seeds, plain, aligned, aligned + REPAIR"
    )

    def penalty(key, name):
        return r[key]["curves"][name]["summary"]["test_error"]["barrier_mean"]

    rows, checks = [], []
    pub = "VGG11 on CIFAR-10, merging penalty after weight matching (Jordan et al. 2022)"
    numbers = {"penalty": {}, "endpoints": {k: r[k]["endpoints"] for k in keys}}
    for key in keys:
        naive, al, rep = penalty(key, "naive"), penalty(key, "aligned"), penalty(key, "aligned+REPAIR")
        numbers["penalty"][key] = {"naive": naive, "aligned": al, "aligned+REPAIR": rep}
        setting = f"{key}, {data_text(split.meta)}, {s['epochs']} epochs, seeds 0 and 1"
        rows.append(
            Row(
                f"{key}: test-error barrier after alignment, without / with REPAIR",
                f"{points(al)} / {points(rep)} (before alignment {points(naive)})",
                setting,
                "about 20% / about 5%",
                pub,
            )
        )
        checks.append(rep < al)
    conv = [k for k in keys if not k.startswith("mlp")]
    halves = all(numbers["penalty"][k]["aligned+REPAIR"] <= 0.5 * numbers["penalty"][k]["aligned"] for k in conv)
    checks.append(halves)
    why = (
        "REPAIR lowers the barrier left after alignment in every architecture, "
        if all(checks[:-1])
        else "REPAIR does not lower the barrier in every architecture, "
    )
    why += (
        f"by at least half for the network{'s' if len(conv) > 1 else ''} without normalisation ("
        if halves
        else "but by less than half for the network without normalisation ("
    )
    why += (
        "; ".join(
            f"{k}: {points(numbers['penalty'][k]['aligned'])} -> {points(numbers['penalty'][k]['aligned+REPAIR'])}"
            for k in conv
        )
        + ")"
    )
    why += "; the published penalties are for a deep VGG11 on CIFAR-10, where the variance collapse is stronger"
    inter = [
        {
            "kind": "lines",
            "title": f"{key}: test error along the line",
            "xlabel": "t",
            "ylabel": "test error",
            "logx": False,
            "logy": False,
            "series": [
                {"label": name, "x": c["t"], "y": c["values"]["test_error"], "dash": name == "naive"}
                for name, c in r[key]["curves"].items()
            ],
        }
        for key in keys
    ]
    return Outcome(
        numbers,
        rows,
        verdict_of(checks),
        why,
        [
            Figure(
                ctx.rel(fig),
                "Test error along the line between two seeds' networks: as trained, after "
                "weight matching, and after weight matching with REPAIR.",
            )
        ],
        inter,
    )


STUDY = register(
    Study(
        name="repair",
        title="REPAIR: renormalising the interpolated network",
        paper="Jordan, Sedghi, Saukh, Entezari and Neyshabur 2022, REPAIR: renormalizing permuted activations for "
        "interpolation repair",
        claim="After alignment, interpolated networks without normalisation lose accuracy through a collapse of their "
        "activations' variance; REPAIR removes most of the remaining barrier (VGG11 on CIFAR-10: about 20% -> "
        "about 5%).",
        summary="REPAIR removes most of the barrier left after alignment",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "data_args": {"n_train": 20000},
                "epochs": 5,
                "batch_size": 128,
                "models": [
                    {"model": "cnn", "args": {"width": 16, "norm": "none"}},
                    {"model": "mlp", "args": {"depth": 3, "width": 512}},
                ],
                "match_samples": 5000,
                "eval_train": 10000,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "epochs": 100,
                "batch_size": 128,
                "lr": 0.02,
                "models": [
                    {"model": "vgg", "args": {"depth": 11, "width": 8, "bn": False}},
                    {"model": "resnet", "args": {"depth": 20, "width": 4, "norm": "none"}},
                ],
                "match_samples": 10000,
                "eval_train": 10000,
            },
        },
        smoke={
            "models": [
                {"model": "cnn", "args": {"width": 4, "norm": "none"}},
                {"model": "mlp", "args": {"depth": 2, "width": 16}},
            ],
            "epochs": 2,
            "points": 5,
            "match_samples": 300,
        },
        stages=("train", "lines"),
        docs=("symmetry.md",),
    )
)

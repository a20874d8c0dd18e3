"""li-trajectory: the PCA plane of a training run, with the path on its contours (Li et al. 2018, Sec. 7).

Claim: random directions miss the optimisation path (in high dimensions two random vectors are nearly
orthogonal to it); the principal components of the checkpoints ``w_t - w_final`` capture it, and the
path lies in a very low-dimensional space: two components explain most of its variation, and on their
plane the path descends across the contours to the minimum. Measured with
`modescape.landscape.trajectory_plane` (the SVD of the centred differences), a sweep of the plane
(`landscape.sweep`) and the explained-variance ratios.
"""

from __future__ import annotations

from .common import contour_spec, data_text, model_text, num, pct, verdict_of
from .registry import Figure, Outcome, Row, Study, register

BASE = {
    "data": "digits",
    "model": "mlp",
    "model_args": {"depth": 2, "width": 64},
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "wd": 5e-4,
    "seed": 0,
    "grid": 31,
    "margin": 0.2,
    "ignore": "none",
    "eval_train": None,
}


def run(ctx) -> Outcome:
    import numpy as np
    import xarray as xr

    from .. import io
    from .. import space as sp
    from ..landscape import auto_range, sweep, trajectory_plane
    from ..plots import plot_surface

    s = ctx.settings
    split = ctx.split()
    net, last = ctx.train(
        "run",
        split,
        s["model"],
        s["model_args"],
        seed=s["seed"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        wd=s["wd"],
    )
    ctx.stop_point("train")
    space = sp.WeightSpace(net)
    train = (
        split.train
        if s["eval_train"] is None
        else (split.train[0][: s["eval_train"]], split.train[1][: s["eval_train"]])
    )

    def plane():
        files = sorted((ctx.run_dir("run") / "checkpoints").glob("epoch-*.safetensors"))
        points = [space.split_state(io.load_tensors(f), f.name)[0] for f in files]
        fam, pca = trajectory_plane(points, space.point(net), ignore=s["ignore"], space=space)
        path = pca.path.numpy()
        grid = {
            "x": auto_range(path[:, 0], s["grid"], s["margin"]),
            "y": auto_range(path[:, 1], s["grid"], s["margin"]),
        }
        ev = ctx.evaluator(net, {"train": train, "test": split.test}, metrics=("loss", "error"))
        ds = sweep(fam, ev, grid, progress=False)
        return {
            "explained": pca.explained.tolist(),
            "residual": pca.residual.tolist(),
            "path": path.tolist(),
            "x": ds.x.values.tolist(),
            "y": ds.y.values.tolist(),
            "train_loss": ds["train_loss"].values.tolist(),
            "test_error": ds["test_error"].values.tolist(),
            "checkpoints": len(files),
        }

    p = ctx.stage("plane", plane)
    explained = p["explained"]
    z = np.asarray(p["train_loss"])
    x, y = np.asarray(p["x"]), np.asarray(p["y"])
    i0, j0 = int(np.abs(x).argmin()), int(np.abs(y).argmin())
    at_final = float(z[i0, j0])
    lo, hi = float(z.min()), float(z.max())
    near_min = at_final - lo <= 0.05 * (hi - lo)
    two = explained[0] + explained[1]
    ds = xr.Dataset(
        {"train_loss": (("x", "y"), z)},
        coords={"x": x, "y": y},
        attrs={
            "path": p["path"],
            "explained_variance": explained,
            "models": {"labels": ["final"], "coords": [[0.0, 0.0]]},
        },
    )
    files = plot_surface(
        ds,
        ctx.out / "figures",
        var="train_loss",
        prefix="trajectory",
        kinds=("contour",),
        labels=[f"{model_text(s['model'], s['model_args'])}, {s['epochs']} epochs"],
    )
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, {s['epochs']} epochs, "
        f"{p['checkpoints']} checkpoints"
    )
    pub = "Li et al. 2018, Sec. 7 (VGG-9 and ResNets on CIFAR-10; ratios on their figures' axes)"
    table = [
        Row(
            "variance explained by PC1 + PC2",
            f"{pct(two, 1)} ({pct(explained[0], 1)} + {pct(explained[1], 1)})",
            setting,
            "most of the variation in two components",
            pub,
        ),
        Row(
            "path ends in the plane's minimum",
            f"{'yes' if near_min else 'no'} (loss at the final point {num(at_final)}, lowest on the plane {num(lo)})",
            setting + f", {s['grid']}x{s['grid']} grid",
            "the path descends to the minimum across the contours",
            pub,
        ),
        Row(
            "largest part of a step the plane misses",
            num(max(p["residual"][1:]) if len(p["residual"]) > 1 else 0.0),
            setting,
            "-",
            "-",
        ),
    ]
    checks = [two >= 0.5, near_min]
    why = (
        f"two components explain {pct(two, 1)} of the trajectory's variation and the path ends at the plane's minimum"
        if all(checks)
        else f"two components explain {pct(two, 1)}; the final point is {'' if near_min else 'not '}at the "
        f"plane's minimum"
    )
    return Outcome(
        {
            "explained_variance": explained,
            "explained_two": two,
            "loss_at_final": at_final,
            "lowest_on_plane": lo,
            "path": p["path"],
            "final_metrics": last,
        },
        table,
        verdict_of(checks),
        why,
        [
            Figure(
                ctx.rel(files[0]),
                f"Train loss on the PCA plane of the {p['checkpoints']} checkpoints, "
                f"with the optimisation path (PC1 {pct(explained[0], 1)}, PC2 "
                f"{pct(explained[1], 1)} of the variance).",
            )
        ],
        [
            contour_spec(
                "train loss on the trajectory's PCA plane",
                p["x"],
                p["y"],
                p["train_loss"],
                f"PC1 ({pct(explained[0], 1)})",
                f"PC2 ({pct(explained[1], 1)})",
                "train loss",
                log=True,
                path=p["path"],
            )
        ],
    )


STUDY = register(
    Study(
        name="li-trajectory",
        title="The PCA plane of an optimisation trajectory",
        paper="Li, Xu, Taylor, Studer and Goldstein 2018, Visualizing the loss landscape of neural nets",
        claim="The optimisation trajectory lies in a very low-dimensional space: the first two principal components "
        "of the checkpoints explain most of its variation, and on their plane the path descends across the "
        "contours to the minimum.",
        summary="two principal components capture the training trajectory",
        run=run,
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 128},
                "epochs": 10,
                "batch_size": 128,
                "eval_train": 10000,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "vgg",
                "model_args": {"depth": 11, "width": 8, "bn": True},
                "epochs": 100,
                "batch_size": 128,
                "lr": 0.1,
                "grid": 51,
                "eval_train": 10000,
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 3, "grid": 5},
        stages=("train", "plane"),
        docs=("landscapes.md",),
    )
)

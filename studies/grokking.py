"""Grokking (Power et al. 2022) seen through the loss landscape: the numbers and figures of docs/transformers.md.

A one-layer transformer of the zoo learns a + b mod p from a fraction of the p^2 equations, full batch,
AdamW with strong weight decay. It first memorises (train accuracy 1, test accuracy near chance), and
much later generalises. Along the run this script measures, at every saved checkpoint:

1. train and test loss and accuracy (every epoch: the trainer's history);
2. the weight norm ||w|| (weight decay pulls it down while the training loss stays near zero);
3. sharpness of the training loss: the top Hessian eigenvalue (Lanczos) and the filter-normalised 1-D
   curvature d^T H d (Li et al. 2018), and the top GGN eigenvalue;
4. the landscape: train and test loss along one filter-normalised random direction through the
   checkpoint (a 1-D slice, alpha in [-1, 1]), stacked over the run;

and, for two seeds trained alike, the alignment barrier (test loss along the straight line between the
two networks, before and after weight matching or activation matching B to A: `modescape.symmetry.align`)
at the first checkpoint where both have memorised but not yet generalised, and at the last where both have
generalised (AdamW's late loss spikes avoided). The PCA plane of the trajectory (`modescape.landscape.trajectory_plane`) is drawn with the test loss.

Everything is seeded; it runs in minutes on a CPU at the default p = 23 (run from the repository root):

    .venv/bin/python studies/grokking.py --out runs/grokking

It writes ``OUT/results.json`` and figures ``docs/figures/grokking_*.png`` (``--figures``). Training runs
are kept under OUT (resumable: a rerun only recomputes the measurements).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from modescape import curvature as cv
from modescape import io
from modescape import sharpness as sh
from modescape import space as sp
from modescape import symmetry as sy
from modescape.directions import random_direction
from modescape.evaluate import Evaluator
from modescape.landscape import sweep, trajectory_plane
from modescape.plots import pyplot, save_figure
from modescape.train import TrainConfig, checkpoint_path, train
from modescape.zoo import build_model, load_dataset


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(split, seed: int, args, out: Path):
    """Train one seed (resumable in out/seed{seed}); the model at the end and the per-epoch history."""
    torch.manual_seed(seed)
    model = build_model("transformer", split.input_shape, split.num_classes, width=args.width, heads=args.heads,
                        layers=args.layers)
    cfg = TrainConfig(epochs=args.epochs, batch_size=len(split.train[1]), lr=args.lr, wd=args.wd,
                      optimizer="adamw", schedule="constant", seed=seed, save_every=args.save_every)
    t0 = time.perf_counter()
    hist = train(model, split, cfg, out=out / f"seed{seed}", meta={"data": split.meta}, progress=False)
    log(f"seed {seed}: train acc {hist.last['train_accuracy']:.3f}, test acc {hist.last['test_accuracy']:.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    return model, hist.epochs


def first_epoch(history, key: str, level: float) -> int | None:
    return next((h["epoch"] for h in history if h[key] >= level), None)


def saved_epochs(args) -> list[int]:
    return sorted({0, *range(args.save_every, args.epochs + 1, args.save_every), args.epochs})


def measure_checkpoint(model, state, split, args, seed: int) -> dict:
    """Weight norm, sharpness and a filter-normalised 1-D slice at one checkpoint."""
    io.load_state_into(model, state)
    ev = Evaluator(model, {"train": split.train, "test": split.test}, progress=False)
    point = ev.point0
    out = {"weight_norm": float(sp.norm(point))}
    lam = cv.eigenvalues(ev, None, point, k=1, tol=1e-3, source="train", seed=seed, progress=False)
    out["lambda_max"] = float(lam.values[0])
    ggn = cv.eigenvalues(ev, None, point, k=1, tol=1e-3, source="train", seed=seed, curvature="ggn",
                         progress=False)
    out["ggn_lambda_max"] = float(ggn.values[0])
    t = sh.target(ev, None, point, source="train")
    f1 = sh.filter_sharpness(t, radius=1.0, n_points=5, n_directions=2, seed=seed)
    out["filter_curvature"] = f1["curvature"]
    d = random_direction(point, "filter", "biasbn", seed=seed, space=ev.space)
    alphas = np.linspace(-1.0, 1.0, args.slice_points)
    m = ev([{k: point[k] + float(a) * d[k] for k in point} for a in alphas])
    out["slice"] = {"alpha": alphas.tolist(), "train_loss": m["train_loss"].tolist(),
                    "test_loss": m["test_loss"].tolist()}
    return out


def barrier_between(model, sa, sb, split, n_points: int) -> dict:
    """Barriers (linear convention) along A -> B before alignment and after weight / activation matching."""
    out = {}
    for method in ("weights", "activations"):
        res = sy.align(model, sa, sb, {"train": split.train, "test": split.test}, method=method, n_points=n_points,
                       progress=False)
        bars = res.summary()["barriers"]
        for when, key in (("before", "before"), ("after", f"after_{method}")):
            out[key] = {m: bars[when][m]["barrier_linear"] for m in ("train_loss", "test_loss", "test_error")}
    return out


def state_at(out: Path, seed: int, epoch: int):
    return io.load_tensors(checkpoint_path(out / f"seed{seed}", epoch))


def figures(results: dict, args, fig_dir: Path) -> list[str]:
    plt = pyplot()
    hist = results["history"]
    ep = [h["epoch"] for h in hist]
    ck = results["checkpoints"]
    ce = [c["epoch"] for c in ck]
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(ep, [h["train_accuracy"] for h in hist], label="train accuracy")
    ax.plot(ep, [h["test_accuracy"] for h in hist], label="test accuracy")
    ax.set_xlabel("epoch (= step: full batch)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"a + b mod {args.p}, {args.train_fraction:.0%} of pairs")
    ax = axes[1]
    ax.plot(ce, [c["weight_norm"] for c in ck], "k.-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight norm ||w||")
    ax = axes[2]
    ax.plot(ce, [c["lambda_max"] for c in ck], ".-", label="Hessian lambda_max")
    ax.plot(ce, [c["ggn_lambda_max"] for c in ck], ".-", label="GGN lambda_max")
    ax.plot(ce, [c["filter_curvature"] for c in ck], ".-", label="filter-normalised d^T H d")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.set_title("sharpness of the training loss")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=max(1, args.save_every))
        ax.set_xlim(0, args.epochs * 1.05)
        for key, style in (("memorised", ":"), ("generalised", "--")):
            if results["events"].get(key):
                ax.axvline(results["events"][key], color="grey", ls=style, lw=1)
    fig.tight_layout()
    path = fig_dir / "grokking_run.png"
    save_figure(fig, path)
    written.append(str(path))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    alphas = ck[0]["slice"]["alpha"]
    for ax, key in zip(axes, ("train_loss", "test_loss")):
        z = np.log10(np.array([c["slice"][key] for c in ck]))
        im = ax.imshow(z, aspect="auto", origin="lower", cmap="viridis",
                       extent=[alphas[0], alphas[-1], -0.5, len(ck) - 0.5])
        ax.set_yticks(range(0, len(ck), max(1, len(ck) // 8)))
        ax.set_yticklabels([ce[i] for i in range(0, len(ck), max(1, len(ck) // 8))])
        ax.set_xlabel("alpha (filter-normalised direction)")
        ax.set_title(f"log10 {key.replace('_', ' ')} along a 1-D slice")
        fig.colorbar(im, ax=ax)
    axes[0].set_ylabel("checkpoint (epoch)")
    fig.tight_layout()
    path = fig_dir / "grokking_slices.png"
    save_figure(fig, path)
    written.append(str(path))

    plane = results["plane"]
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    x, y = np.array(plane["x"]), np.array(plane["y"])
    z = np.log10(np.array(plane["test_loss"]))
    cs = ax.contourf(x, y, z.T, levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 test loss")
    path_xy = np.array(plane["path"])
    ax.plot(path_xy[:, 0], path_xy[:, 1], "w.-", lw=1, ms=3)
    ax.plot(path_xy[0, 0], path_xy[0, 1], "ws", ms=5)
    ax.set_xlabel(f"PC1 ({plane['explained'][0]:.0%})")
    ax.set_ylabel(f"PC2 ({plane['explained'][1]:.0%})")
    ax.set_title("trajectory on the test-loss plane")
    fig.tight_layout()
    path = fig_dir / "grokking_plane.png"
    save_figure(fig, path)
    written.append(str(path))
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/grokking")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--p", type=int, default=23)
    p.add_argument("--train-fraction", type=float, default=0.6)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    p.add_argument("--slice-points", type=int, default=21)
    p.add_argument("--plane-points", type=int, default=15)
    p.add_argument("--barrier-points", type=int, default=13)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    fig_dir = Path(args.figures)
    t_start = time.perf_counter()
    split = load_dataset("modular-add", p=args.p, train_fraction=args.train_fraction)
    models, histories = {}, {}
    for seed in args.seeds:
        models[seed], histories[seed] = run(split, seed, args, out)
    s0 = args.seeds[0]
    hist = histories[s0]
    events = {"memorised": first_epoch(hist, "train_accuracy", 0.99),
              "generalised": first_epoch(hist, "test_accuracy", 0.95)}
    log(f"memorised at epoch {events['memorised']}, generalised at epoch {events['generalised']}")

    epochs = saved_epochs(args)
    model = build_model("transformer", split.input_shape, split.num_classes, width=args.width, heads=args.heads,
                        layers=args.layers)
    checkpoints = []
    for e in epochs:
        c = measure_checkpoint(model, state_at(out, s0, e), split, args, s0)
        c.update({"epoch": e, **{k: v for k, v in hist[e - 1].items() if k != "epoch"}} if e > 0 else {"epoch": 0})
        checkpoints.append(c)
        log(f"epoch {e}: |w| {c['weight_norm']:.2f}, lambda_max {c['lambda_max']:.4g}, "
            f"GGN {c['ggn_lambda_max']:.4g}, test acc {c.get('test_accuracy', float('nan')):.3f}")

    # alignment barriers between the two seeds: both memorised but not generalised (the first such saved
    # checkpoint), and both generalised (the last saved checkpoint where both are; AdamW's occasional loss
    # spikes late in the run are avoided so)
    def acc(s, e, key):
        return histories[s][e - 1][key]

    both = [e for e in epochs if e > 0 and all(acc(s, e, "train_accuracy") >= 0.99 for s in args.seeds)]
    memorised = next((e for e in both if all(acc(s, e, "test_accuracy") < 0.9 for s in args.seeds)), None)
    generalised = [e for e in both if all(acc(s, e, "test_accuracy") >= 0.99 for s in args.seeds)]
    barriers = {}
    for label, e in (("memorised", memorised), ("generalised", generalised[-1] if generalised else None)):
        if e is None:
            continue
        sa, sb = (state_at(out, s, e) for s in args.seeds)
        barriers[label] = {"epoch": e, **barrier_between(model, sa, sb, split, args.barrier_points),
                           "test_accuracy": [histories[s][e - 1]["test_accuracy"] for s in args.seeds]}
        log(f"barrier at epoch {e} ({label}): test loss before {barriers[label]['before']['test_loss']:.3f}, "
            f"after weight matching {barriers[label]['after_weights']['test_loss']:.3f}, after activation "
            f"matching {barriers[label]['after_activations']['test_loss']:.3f}")

    # the trajectory's PCA plane with the test loss
    points = [sp.WeightSpace(model).point(io.load_state_into(model, state_at(out, s0, e))) for e in epochs]
    plane, pca = trajectory_plane(points)
    path = pca.path.numpy()
    span = [(float(path[:, i].min()), float(path[:, i].max())) for i in range(2)]
    grid = {d: np.linspace(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo), args.plane_points)
            for d, (lo, hi) in zip(("x", "y"), span)}
    ev = Evaluator(model, {"train": split.train, "test": split.test}, progress=False)
    ds = sweep(plane, ev, grid, progress=False)
    results = {
        "settings": vars(args), "n_train": len(split.train[1]), "n_test": len(split.test[1]),
        "history": hist, "events": events, "checkpoints": checkpoints, "barriers": barriers,
        "plane": {"x": grid["x"].tolist(), "y": grid["y"].tolist(), "test_loss": ds["test_loss"].values.tolist(),
                  "train_loss": ds["train_loss"].values.tolist(), "path": path.tolist(),
                  "explained": pca.explained.tolist()},
        "seconds": time.perf_counter() - t_start,
    }
    results["figures"] = figures(results, args, fig_dir)
    io.write_json(out / "results.json", results)
    log(f"done in {results['seconds']:.0f} s: {out / 'results.json'}, {', '.join(results['figures'])}")
    if events["generalised"] is None:
        log("the run did not generalise (test accuracy < 0.95): raise --epochs, --lr or --train-fraction")


if __name__ == "__main__":
    main()

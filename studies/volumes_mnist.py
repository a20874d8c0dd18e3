"""SWA, SWAG, SAM and ASAM against SGD and a deep ensemble on MNIST, at an equal training budget: the
numbers and figures of docs/volumes.md.

Claims checked:
1. SWA (Izmailov et al. 2018) from a model trained for half the budget, averaging one iterate per epoch
   over the other half, is flatter (smaller top Hessian eigenvalue, wider filter-normalised 1-D valley)
   than SGD trained for the whole budget, and at least as accurate with a lower test NLL.
2. SAM / ASAM (Foret et al. 2021; Kwon et al. 2021) at the same number of epochs end in flatter minima
   than SGD (each SAM step costs two forward-backward passes: twice SGD's gradient evaluations).
3. SWAG's Bayesian model average (Maddox et al. 2019) and a deep ensemble of two half-budget models improve
   NLL and calibration (ECE) over one model.

Every model is a zoo MLP 784-128-128-10 (ReLU, no BatchNorm) trained with modescape's trainer; everything
is seeded and resumable (rerun with the same --out). Run from the repository root:

    .venv/bin/python studies/volumes_mnist.py --root ../shared/data/mnist --out runs/volumes_mnist

It writes ``OUT/results.json`` and the figures into ``docs/figures/`` (``--figures``).

Width (the filter-normalised 1-D width): along a filter-normalised Gaussian direction d (Li et al. 2018;
``modescape.directions.random_direction``, biases and norms zeroed), the train loss L(w + a d) on the
curvature subset at ``--width-points`` values of a in [-r, r]; the width is the length of the interval of a
around 0 where L stays within ``--width-level`` of L(w) (crossings interpolated linearly), averaged over
``--width-directions`` directions (seeds 0, 1, ...).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from modescape import io, provenance
from modescape import space as sp
from modescape.curvature import eigenvalues
from modescape.directions import random_direction
from modescape.ensembles import deep_ensemble, ensemble_metrics, predict_proba
from modescape.evaluate import Evaluator
from modescape.plots import plot_ensemble, plot_reliability, plot_swa, pyplot, save_figure
from modescape.swa import swa, swag_ensemble
from modescape.train import TrainConfig, train
from modescape.zoo import build_model, load_dataset

METRICS = ("accuracy", "nll", "brier", "ece")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def trained(split, args, name: str, out: Path, **cfg):
    """An MLP trained with modescape's trainer in ``out/name`` (resumable)."""
    seed = cfg.pop("seed", 0)
    torch.manual_seed(seed)
    model = build_model("mlp", split.input_shape, split.num_classes, depth=2, width=args.width)
    config = TrainConfig(batch_size=args.batch_size, lr=args.lr, wd=args.wd, schedule="cosine", seed=seed, **cfg)
    t0 = time.perf_counter()
    hist = train(model, split, config, out=out / name, meta={"data": split.meta}, progress=False)
    log(f"{name}: test acc {hist.last['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)")
    return model, out / name / "final.safetensors"


def width_1d(curve: np.ndarray, alphas: np.ndarray, level: float) -> float:
    """Length of the interval of alpha around 0 where curve <= curve(0) + level (linear crossings)."""
    i0 = int(np.argmin(np.abs(alphas)))
    top = curve[i0] + level

    def reach(step: int) -> float:
        i = i0
        while 0 <= i + step < len(alphas) and curve[i + step] <= top:
            i += step
        if not 0 <= i + step < len(alphas):
            return float(alphas[i])  # still below the level at the end of the range
        a, b = curve[i], curve[i + step]
        return float(alphas[i] + (alphas[i + step] - alphas[i]) * (top - a) / (b - a))

    return reach(1) - reach(-1)


def geometry(model, point, sub, args) -> dict:
    """Top Hessian eigenvalue and the filter-normalised 1-D width (curves for the figure) of ``point``."""
    ev = Evaluator(model, {"train": sub}, metrics=("loss",), bn="running", mode="loop")
    t0 = time.perf_counter()
    eig = eigenvalues(ev, None, point, k=1, tol=args.eig_tol, progress=False)
    alphas = np.linspace(-args.width_radius, args.width_radius, args.width_points)
    curves, widths = [], []
    for j in range(args.width_directions):
        d = random_direction(point, normalization="filter", ignore="biasbn", seed=j, space=ev.space)
        pts = [{k: point[k] + float(a) * d[k] for k in point} for a in alphas]
        curve = ev(pts, progress=False)["train_loss"].numpy()
        curves.append(curve.tolist())
        widths.append(width_1d(curve, alphas, args.width_level))
    return {"lambda_max": float(eig.values[0]), "lambda_converged": bool(eig.converged[0]), "n_hvp": eig.n_hvp,
            "width": float(np.mean(widths)), "widths": widths, "alphas": alphas.tolist(), "curves": curves,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/mnist")
    p.add_argument("--out", default="runs/volumes_mnist")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=None, help="subset of the 60000 training images")
    p.add_argument("--width", type=int, default=128, help="hidden width of the 2-layer MLP")
    p.add_argument("--budget", type=int, default=10, help="training epochs of every model and ensemble")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--swa-lrs", type=float, nargs="+", default=(0.05, 0.02, 0.01),
                   help="SWA's constant learning rates (one SWA run each; SWAG uses the first)")
    p.add_argument("--rho", type=float, default=0.05, help="SAM's radius")
    p.add_argument("--asam-rho", type=float, default=0.5, help="ASAM's radius")
    p.add_argument("--eta", type=float, default=0.01, help="ASAM's eta")
    p.add_argument("--swag-samples", type=int, default=30)
    p.add_argument("--curvature-n", type=int, default=10000, help="training images for the Hessian and the width")
    p.add_argument("--eig-tol", type=float, default=1e-3)
    p.add_argument("--width-radius", type=float, default=1.0)
    p.add_argument("--width-points", type=int, default=41)
    p.add_argument("--width-directions", type=int, default=2)
    p.add_argument("--width-level", type=float, default=0.1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, figs = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data_args = {} if args.n_train is None else {"n_train": args.n_train}
    split = load_dataset("mnist", root=args.root, **data_args)
    log(f"MNIST: {split.train[0].shape[0]} train, {split.test[0].shape[0]} test")
    half = args.budget // 2
    sub = (split.train[0][:args.curvature_n], split.train[1][:args.curvature_n])
    y = split.test[1]

    # the models
    sgd, _ = trained(split, args, f"sgd-{args.budget}", out, epochs=args.budget)
    a, a_ckpt = trained(split, args, f"sgd-{half}-seed0", out, epochs=half, seed=0)
    b, b_ckpt = trained(split, args, f"sgd-{half}-seed1", out, epochs=half, seed=1)
    sam, _ = trained(split, args, f"sam-{args.budget}-rho{args.rho}", out, epochs=args.budget, optimizer="sam",
                     rho=args.rho)
    asam, _ = trained(split, args, f"asam-{args.budget}-rho{args.asam_rho}-eta{args.eta}", out, epochs=args.budget,
                      optimizer="sam", rho=args.asam_rho, adaptive=True, eta=args.eta)
    swas = {}
    for lr in args.swa_lrs:
        t0 = time.perf_counter()
        swas[lr] = swa(a, a_ckpt, split, epochs=args.budget - half, lr=lr, start=0, wd=args.wd,
                       batch_size=args.batch_size, seed=0, rank=20, out=out / f"swa-lr{lr}", progress=False)
        log(f"swa lr {lr}: {swas[lr].n_averaged} iterates, budget {swas[lr].budget}; test acc "
            f"{swas[lr].metrics['accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)")
    lr0 = args.swa_lrs[0]
    res = swas[lr0]
    t0 = time.perf_counter()
    bma = swag_ensemble(a, res.swag, split, n_samples=args.swag_samples, seed=0, cache=out / "swag-samples",
                        budget_info=res.budget, progress=False)
    log(f"swag: {args.swag_samples} samples ({time.perf_counter() - t0:.0f} s)")
    deep = deep_ensemble(a, [a_ckpt, b_ckpt], split, cache=out / "deep-members", progress=False)

    # metrics on the test data (one evaluation for all: ensemble_metrics) and geometry on the train subset
    space = sp.WeightSpace(a)
    sgd_name, swa_name = f"SGD, {args.budget} epochs", f"SWA lr {lr0}, {half} + {args.budget - half} epochs"
    ev = Evaluator(a, {"train": split.train, "test": split.test}, metrics=("loss",), bn="running")
    singles = {f"SGD, {args.budget} epochs": space.point(sgd),
               **{f"SWA lr {lr}, {half} + {args.budget - half} epochs": r.point for lr, r in swas.items()},
               f"SAM rho {args.rho}, {args.budget} epochs": space.point(sam),
               f"ASAM rho {args.asam_rho}, {args.budget} epochs": space.point(asam),
               f"SGD, {half} epochs (SWA's start)": space.point(a),
               f"last iterate of SWA lr {lr0}": io.load_tensors(out / f"swa-lr{lr0}" / "final.safetensors")}
    probs = {k: predict_proba(ev, pt, "test") for k, pt in singles.items()}
    rows = {}
    for name, pt in singles.items():
        m = ensemble_metrics([probs[name]], y)
        geo = geometry(a, pt, sub, args)
        rows[name] = {**{k: m[k] for k in METRICS}, **geo, "budget_epochs": half if "start" in name else args.budget}
        log(f"{name}: err {100 * (1 - m['accuracy']):.2f}%, nll {m['nll']:.4f}, ece {m['ece']:.4f}, "
            f"lambda_max {geo['lambda_max']:.2f}, width {geo['width']:.3f} ({geo['seconds']:.0f} s)")
    rows[f"SWAG BMA, {args.swag_samples} samples"] = {**{k: bma.metrics[k] for k in METRICS},
                                                     "budget_epochs": bma.budget["epochs"]}
    rows[f"deep ensemble, 2 x {half} epochs"] = {**{k: deep.metrics[k] for k in METRICS},
                                                  "budget_epochs": deep.budget["epochs"]}
    results = {"args": vars(args), "data": split.meta, "versions": provenance.versions(), "rows": rows,
               "swa": {str(lr): r.to_dict() for lr, r in swas.items()}, "swag": bma.to_dict(), "deep": deep.to_dict()}

    # figures
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    alphas = rows[sgd_name]["alphas"]
    for name in (sgd_name, swa_name, f"SAM rho {args.rho}, {args.budget} epochs",
                 f"ASAM rho {args.asam_rho}, {args.budget} epochs"):
        r = rows[name]
        ax.plot(alphas, r["curves"][0], label=f"{name} (width {r['width']:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("a  (w + a d, d filter-normalised)")
    ax.set_ylabel("train loss (10k images)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    save_figure(fig, figs / "volumes_mnist_width.png")
    plot_swa(res.history, figs / "volumes_mnist_swa.png",
             title=f"SWA (lr {lr0}) from the {half}-epoch model: SGD iterates and average")
    plot_ensemble({"SWAG BMA": bma, "deep ensemble": deep}, figs / "volumes_mnist_ensembles.png",
                  metrics=("accuracy", "nll", "ece"),
                  references={sgd_name: rows[sgd_name], swa_name: rows[swa_name]},
                  title=f"MNIST MLP, {args.budget}-epoch budget")
    plot_reliability({sgd_name: (probs[sgd_name], y), swa_name: (probs[swa_name], y),
                      "SWAG BMA": (sum(bma.probs) / len(bma.probs), y),
                      "deep ensemble": (sum(deep.probs) / len(deep.probs), y)}, figs / "volumes_mnist_reliability.png")
    results["seconds"] = time.perf_counter() - t_start
    io.write_json(out / "results.json", results)
    log(f"done in {results['seconds']:.0f} s")
    for name, r in rows.items():
        log(json.dumps({"model": name, **{k: r.get(k) for k in (*METRICS, "lambda_max", "width", "budget_epochs")}}))


if __name__ == "__main__":
    main()

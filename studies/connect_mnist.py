"""Mode connectivity and fast geometric ensembling on MNIST: the numbers and figures of
docs/mode-connectivity.md.

Claims checked (Garipov et al. 2018):
1. Two MLPs trained from different seeds are separated by a test-error barrier along the straight
   segment, while a trained 3-bend Bezier curve joins them with a maximum test error within 1 point
   of the worse endpoint (a PolyChain is trained and reported as well).
2. Fast geometric ensembling (cyclical LR from model A, snapshots at the LR minima) beats one model
   trained for the same total number of epochs, and is compared with independently trained models
   at an equal epoch budget (here: A and B, 2 x the base epochs).

Everything is seeded; run from the repository root:

    .venv/bin/python studies/connect_mnist.py --root ../shared/data/mnist --out runs/connect_mnist

It writes ``OUT/results.json`` and the figures into ``docs/figures/`` (``--figures``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modescape import io, provenance
from modescape import space as sp
from modescape.connect import evaluate_plane, train_curve
from modescape.ensembles import ensemble_curve, fge, predict_proba
from modescape.evaluate import Evaluator
from modescape.paths import evaluate_path
from modescape.plots import plot_paths, plot_plane, pyplot, save_figure
from modescape.train import TrainConfig, train
from modescape.zoo import build_model, load_dataset


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def trained(split, args, seed: int, epochs: int, out: Path):
    """An MLP trained with the lead's trainer (resumable in out/run-SEED-EPOCHS)."""
    torch.manual_seed(seed)
    model = build_model("mlp", split.input_shape, split.num_classes, depth=args.depth, width=args.width)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd, schedule="cosine", seed=seed)
    t0 = time.perf_counter()
    hist = train(model, split, cfg, out=out / f"run-{seed}-{epochs}", meta={"data": split.meta})
    log(f"model seed {seed}, {epochs} epochs: test acc {hist.last['test_accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s)")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/mnist")
    p.add_argument("--out", default="runs/connect_mnist")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=None, help="subset of the 60000 training images")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8, help="epochs of each endpoint model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--curve-epochs", type=int, default=10)
    p.add_argument("--curve-lr", type=float, default=0.05)
    p.add_argument("--points", type=int, default=61)
    p.add_argument("--plane-points", type=int, default=21)
    p.add_argument("--fge-epochs", type=int, default=8)
    p.add_argument("--cycle", type=int, default=2)
    p.add_argument("--fge-lr", type=float, nargs=2, default=(0.05, 0.0005))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, figs = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    data_args = {} if args.n_train is None else {"n_train": args.n_train}
    split = load_dataset("mnist", root=args.root, **data_args)
    log(f"MNIST: {split.train[0].shape[0]} train, {split.test[0].shape[0]} test")
    a = trained(split, args, 0, args.epochs, out)
    b = trained(split, args, 1, args.epochs, out)
    space = sp.WeightSpace(a)
    pa, pb = space.point(a), space.point(b)

    ev = Evaluator(a, {"train": split.train, "test": split.test}, metrics=("loss", "error"), bn="recompute")
    results: dict = {"args": vars(args), "data": split.meta, "versions": provenance.versions()}

    # 1. the straight segment and trained curves
    line = evaluate_path((pa, pb), ev, n_points=args.points, name="segment")
    log(f"segment: test error max {line.summary()['test_error']['max']:.4f}")
    paths, curves = {"segment": line}, {}
    for kind in ("bezier", "polychain"):
        t0 = time.perf_counter()
        run = train_curve(a, pa, pb, split, kind=kind, bends=3, epochs=args.curve_epochs, lr=args.curve_lr,
                          wd=args.wd, batch_size=args.batch_size, seed=0, checkpoint=out / f"{kind}.safetensors")
        secs = time.perf_counter() - t0
        curves[kind] = run.family
        paths[kind] = evaluate_path(run.family, ev, n_points=args.points, name=kind)
        log(f"{kind}: trained {secs:.0f} s; test error max {paths[kind].summary()['test_error']['max']:.4f}")
        results[f"{kind}_history"] = run.history
    results["paths"] = {k: v.to_dict() for k, v in paths.items()}
    worse = max(line.summary()["test_error"]["start"], line.summary()["test_error"]["end"])
    results["claim_curve"] = {
        "worse_endpoint_test_error": worse,
        "segment_test_error_barrier_mean": line.summary()["test_error"]["barrier_mean"],
        "segment_test_error_barrier_linear": line.summary()["test_error"]["barrier_linear"],
        **{f"{k}_max_test_error": paths[k].summary()["test_error"]["max"] for k in curves},
        **{f"{k}_within_1_point": paths[k].summary()["test_error"]["max"] - worse <= 0.01 for k in curves},
    }
    plot_paths([paths["bezier"], paths["polychain"], line], figs / "connect_mnist_path.png",
               metrics=("train_loss", "test_loss", "test_error"), title="MNIST MLP: curve vs segment (61 points, BN recompute)")

    # the plane through the Bezier curve's bends (Garipov et al. Fig. 1)
    evp = Evaluator(a, {"test": split.test}, metrics=("error",), bn="recompute", bn_data=split.train)
    t0 = time.perf_counter()
    plane = evaluate_plane(curves["bezier"], evp, n_points=args.plane_points)
    log(f"plane {args.plane_points}x{args.plane_points}: {time.perf_counter() - t0:.0f} s")
    plot_plane(plane, figs / "connect_mnist_plane.png", title="MNIST MLP: test error, plane of the Bezier bends")
    results["plane"] = {"x": plane.x.tolist(), "y": plane.y.tolist(), "test_error": plane.values["test_error"].tolist(),
                        "bends": plane.bends.tolist()}

    # 2. FGE from A against one model and independent models at equal epoch budget
    t0 = time.perf_counter()
    res = fge(a, pa, split, cycle=args.cycle, lr=tuple(args.fge_lr), epochs=args.fge_epochs, wd=args.wd,
              batch_size=args.batch_size, seed=0)
    log(f"fge {args.fge_epochs} epochs: {time.perf_counter() - t0:.0f} s; ensemble {res.members[-1]}")
    budget = args.epochs + args.fge_epochs
    long = trained(split, args, 0, budget, out)
    evt = Evaluator(a, {"test": split.test}, metrics=("loss",), bn="recompute", bn_data=split.train)
    y = split.test[1]
    single_long = ensemble_curve([predict_proba(evt, space.point(long))], y)[0]
    indep = ensemble_curve([predict_proba(evt, pa), predict_proba(evt, pb)], y)
    n_indep = min(len(indep), max(1, budget // args.epochs))  # A and B: at most 2 independent models
    results["fge"] = {
        "budget_epochs": budget,
        "start_A": res.start,
        "members": res.members,
        "single_model_equal_budget": single_long,
        "independent_ensemble_equal_budget": indep[n_indep - 1],
        "independent_ensemble_members": n_indep,
        "fge_beats_single_equal_budget": res.members[-1]["accuracy"] > single_long["accuracy"]
        and res.members[-1]["nll"] < single_long["nll"],
        "lrs_first_cycle": res.lrs[: (len(res.lrs) // args.fge_epochs) * args.cycle],
    }
    _plot_fge(results["fge"], figs / "connect_mnist_fge.png")
    results["seconds"] = time.perf_counter() - t_start
    io.write_json(out / "results.json", results)
    log(f"done in {results['seconds']:.0f} s: {json.dumps(results['claim_curve'])}")
    log(json.dumps({k: v for k, v in results["fge"].items() if k != "lrs_first_cycle"}))


def _plot_fge(r: dict, path: Path) -> None:
    plt = pyplot()
    m = r["members"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.3))
    for ax, key, label in ((axes[0], "accuracy", "test error (%)"), (axes[1], "nll", "test NLL")):
        f = (lambda v: 100 * (1 - v)) if key == "accuracy" else (lambda v: v)
        ax.plot([x["members"] for x in m], [f(x[key]) for x in m], "o-", label="FGE ensemble")
        ax.plot([x["members"] for x in m], [f(x[f"single_{key}"]) for x in m], "s:", label="FGE snapshot alone")
        ax.axhline(f(r["start_A"][key]), color="gray", ls="--", label="start model A")
        ax.axhline(f(r["single_model_equal_budget"][key]), color="C3", ls="-.", label="one model, equal budget")
        ax.axhline(f(r["independent_ensemble_equal_budget"][key]), color="C2", ls="--",
                   label=f"{r['independent_ensemble_members']} independent, equal budget")
        ax.set_xlabel("FGE members")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

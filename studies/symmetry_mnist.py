"""Permutation symmetry on MNIST: the numbers and figures of docs/symmetry.md.

Claims checked (Ainsworth et al. 2022; Jordan et al. 2022; Brea et al. 2019; Entezari et al. 2022):
1. Two MLPs with three hidden layers of 512, trained from different seeds, are separated by a
   test-loss barrier along the straight line between them; permuting B into A's basis (weight
   matching, activation matching, the straight-through estimator) removes most of it; REPAIR
   removes more.
2. The barrier after alignment shrinks as the width grows (before alignment it does not).
3. The straight path that swaps two hidden units of a trained net rises to a barrier at the
   permutation point t = 1/2, where the Hessian has a negative eigenvalue (a saddle) well below the
   smallest one at the trained net itself. Shown on a narrow MLP (3 hidden layers of 16), where a
   swap matters; in the 3x512 net one swap of 512 units barely moves the loss.

Everything is seeded; run from the repository root:

    .venv/bin/python studies/symmetry_mnist.py --root ../shared/data/mnist --out runs/symmetry_mnist

It writes ``OUT/results.json`` and three figures into ``docs/figures/`` (``--figures``). Trained
models are kept under OUT, so a rerun only recomputes the measurements; ``--parts`` picks which of
``interp sweep swap`` to (re)compute (results.json keeps the others).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modescape import symmetry as sy
from modescape.evaluate import Evaluator
from modescape.plots import plot_alignment, pyplot, save_figure
from modescape.symmetry.align import interpolation
from modescape.train import TrainConfig, train
from modescape.zoo import build_model, load_dataset


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def trained(split, width: int, seed: int, args, out: Path):
    """An MLP (depth 3) trained with modescape's trainer (resumable in out/w{width}-s{seed})."""
    torch.manual_seed(seed)
    model = build_model("mlp", split.input_shape, split.num_classes, depth=3, width=width)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd, schedule="cosine",
                      seed=seed)
    t0 = time.perf_counter()
    hist = train(model, split, cfg, out=out / f"w{width}-s{seed}", meta={"data": split.meta}, progress=False)
    log(f"width {width} seed {seed}: test acc {hist.last['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)")
    return model, hist.last


def test_loss_barrier(curve) -> float:
    """The test-loss barrier (linear convention) of a `modescape.paths.PathResult`."""
    return curve.barriers()["test_loss"]["barrier_linear"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/mnist")
    p.add_argument("--out", default="runs/symmetry_mnist")
    p.add_argument("--figures", default="docs/figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    p.add_argument("--sweep-n-train", type=int, default=20000, help="training subset for the width sweep")
    p.add_argument("--eval-train", type=int, default=10000, help="training images the curves are evaluated on")
    p.add_argument("--points", type=int, default=25)
    p.add_argument("--match-samples", type=int, default=10000, help="images for activation matching and REPAIR")
    p.add_argument("--ste-steps", type=int, default=300)
    p.add_argument("--swap-samples", type=int, default=5000, help="training images of the swap loss and Hessian")
    p.add_argument("--swap-width", type=int, default=16, help="hidden width of the MLP whose units are swapped")
    p.add_argument("--swap-epochs", type=int, default=10)
    p.add_argument("--parts", nargs="+", default=["interp", "sweep", "swap"], choices=["interp", "sweep", "swap"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, figs = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    store = out / "results.json"
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    results["args"] = vars(args)
    full = load_dataset("mnist", root=args.root)
    if "interp" in args.parts:
        part_interp(results, full, args, out, figs)
    if "sweep" in args.parts:
        part_sweep(results, args, out, figs)
    if "swap" in args.parts:
        part_swap(results, full, args, out, figs)
    results["seconds"] = time.perf_counter() - t_start
    store.write_text(json.dumps(results, indent=1))
    log(f"done in {results['seconds']:.0f} s; results in {store}")


def part_interp(results, full, args, out, figs) -> None:
    """1. two 3x512 MLPs on all of MNIST: the line A -> B before and after each alignment."""
    a_net, a_metrics = trained(full, args.width, 0, args, out / "full")
    b_net, b_metrics = trained(full, args.width, 1, args, out / "full")
    results["endpoints"] = {"a": a_metrics, "b": b_metrics}
    train_eval = (full.train[0][:args.eval_train], full.train[1][:args.eval_train])
    data = {"train": train_eval, "test": full.test}
    match_data = (full.train[0][:args.match_samples], full.train[1][:args.match_samples])
    spec = sy.infer_spec(a_net)
    a, b = sy.state_of(a_net), sy.state_of(b_net)
    ev = Evaluator(a_net, data, metrics=("loss", "accuracy"), progress=False)
    curves, timings, perms = {}, {}, {}
    curves["naive"] = interpolation(a_net, a, b, data, args.points, evaluator=ev, name="naive")
    params = [n for n, _ in a_net.named_parameters()]
    for method in ("weights", "activations", "ste"):
        t0 = time.perf_counter()
        kwargs = {"steps": args.ste_steps} if method == "ste" else {}
        perms[method] = sy.match(a_net, a, b, method, data=full.train if method == "ste" else match_data,
                                 spec=spec, **kwargs)
        timings[method] = time.perf_counter() - t0
        aligned = sy.apply(spec, b, perms[method])
        curves[method] = interpolation(a_net, a, aligned, data, args.points, evaluator=ev, name=method)
        log(f"{method} matching ({timings[method]:.1f} s): test loss barrier "
            f"{test_loss_barrier(curves['naive']):.4f} -> {test_loss_barrier(curves[method]):.4f}")
    aligned = sy.apply(spec, b, perms["weights"])
    curves["weights+REPAIR"] = interpolation(a_net, a, aligned, data, args.points, evaluator=ev,
                                             repair_data=match_data, name="weights+REPAIR")
    log(f"weights+REPAIR: test loss barrier {test_loss_barrier(curves['weights+REPAIR']):.4f}")
    agree = {p: float((perms["weights"][p] == perms["activations"][p]).double().mean()) for p in spec.sizes}
    distance = {"naive": float(sum(((a[n] - b[n]) ** 2).sum() for n in params).sqrt())}
    for k in perms:
        moved = sy.apply(spec, b, perms[k])
        distance[k] = float(sum(((a[n] - moved[n]) ** 2).sum() for n in params).sqrt())
    results["mlp3x512"] = {"curves": {k: c.to_dict() for k, c in curves.items()}, "match_seconds": timings,
                           "weights_vs_activations_agreement": agree, "distance_to_a": distance}
    plot_alignment({k: curves[k] for k in ("naive", "weights", "activations", "ste", "weights+REPAIR")},
                   str(figs / "symmetry_mnist_interp.png"),
                   title=f"MNIST MLP 3x{args.width}: A -> B before and after alignment", log_loss=True)



def part_sweep(results, args, out, figs) -> None:
    """2. barrier vs width: pairs of MLPs trained on a subset."""
    sub = load_dataset("mnist", root=args.root, n_train=args.sweep_n_train)
    sweep = []
    for width in args.widths:
        wa, _ = trained(sub, width, 0, args, out / "sweep")
        wb, _ = trained(sub, width, 1, args, out / "sweep")
        sa, sb = sy.state_of(wa), sy.state_of(wb)
        wspec = sy.infer_spec(wa)
        wdata = {"test": sub.test}
        wev = Evaluator(wa, wdata, metrics=("loss", "accuracy"), progress=False)
        mdata = (sub.train[0][:args.match_samples], sub.train[1][:args.match_samples])
        row = {"width": width,
               "naive": test_loss_barrier(interpolation(wa, sa, sb, wdata, args.points, evaluator=wev))}
        for method in ("weights", "activations"):
            pm = sy.match(wa, sa, sb, method, data=mdata, spec=wspec)
            row[method] = test_loss_barrier(interpolation(wa, sa, sy.apply(wspec, sb, pm), wdata, args.points,
                                                          evaluator=wev))
        pm = sy.match(wa, sa, sb, "weights", spec=wspec)
        row["weights+REPAIR"] = test_loss_barrier(interpolation(wa, sa, sy.apply(wspec, sb, pm), wdata, args.points,
                                                                evaluator=wev, repair_data=mdata))
        log(f"width {width}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "width"))
        sweep.append(row)
    results["width_sweep"] = sweep
    plot_sweep(sweep, str(figs / "symmetry_mnist_width.png"))



def part_swap(results, full, args, out, figs) -> None:
    """3. swap paths in the middle hidden layer (fc1) of a narrow trained MLP."""
    swap_args = argparse.Namespace(**{**vars(args), "epochs": args.swap_epochs})
    net, metrics = trained(full, args.swap_width, 0, swap_args, out / "swap")
    state = sy.state_of(net)
    spec = sy.infer_spec(net)
    swap_data = (full.train[0][:args.swap_samples], full.train[1][:args.swap_samples])
    sev = Evaluator(net, swap_data, metrics=("loss", "accuracy"), progress=False)
    n = args.swap_width
    best = sy.best_pair(net, state, "fc1", evaluator=sev, candidates=n * (n - 1) // 2, n_points=args.points)
    worst = max(best["scored"], key=lambda r: r["barrier"])
    gen = torch.Generator().manual_seed(0)
    i, j = sorted(torch.randperm(n, generator=gen)[:2].tolist())
    swaps = {}
    for label, (u, v) in (("random pair", (i, j)), ("lowest-barrier pair", (best["i"], best["j"])),
                          ("highest-barrier pair", (worst["i"], worst["j"]))):
        t0 = time.perf_counter()
        swaps[label] = sy.swap_analysis(net, state, "fc1", u, v, evaluator=sev, n_points=args.points, k=3,
                                        eigen_at_start=not swaps, relax_steps=200, relax_lr=0.05, spec=spec)
        s = swaps[label]
        log(f"swap {label} ({u}, {v}): barrier {s['barrier']['barrier_linear']:.4g}, eigenvalues at t=1/2 "
            f"{[round(e, 4) for e in s['eigenvalues']]}, at t=0 {s.get('start_eigenvalues')}, "
            f"relaxed {s['relaxed']} ({time.perf_counter() - t0:.0f} s)")
    results["swap"] = {"model": {"width": n, "depth": 3, "epochs": args.swap_epochs, **metrics},
                       "search": best, **swaps}
    plot_swaps(swaps, str(figs / "symmetry_mnist_swap.png"))


def plot_sweep(sweep, path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    widths = [r["width"] for r in sweep]
    for key, style in (("naive", "o-"), ("weights", "s-"), ("activations", "^-"), ("weights+REPAIR", "d--")):
        ax.plot(widths, [r[key] for r in sweep], style, label=key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width (3 hidden layers)")
    ax.set_ylabel("test-loss barrier (A -> B)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_swaps(swaps, path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for label, s in swaps.items():
        ax.plot(s["t"], s["loss"], "-o", ms=3,
                label=f"{label} ({s['i']}, {s['j']}): min eig at t=1/2 {s['eigenvalues'][0]:.3g}")
    ax.axvline(0.5, color="gray", ls=":", lw=1)
    start = next((s["start_eigenvalues"] for s in swaps.values() if "start_eigenvalues" in s), None)
    if start:
        ax.set_title(f"MNIST MLP 3x16, layer fc1; min Hessian eig at A: {start[0]:.3g}", fontsize=9)
    ax.set_xlabel("t  (0: model A, 1: units i, j of fc1 swapped)")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()

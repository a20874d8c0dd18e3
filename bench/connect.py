"""Benchmark mode connectivity: curve-training overhead and BN-recompute path evaluation.

    python bench/connect.py [--device cpu] [--repeats 3] [--points 61] [--json-out PATH]

1. **Curve training vs plain training.** Seconds per epoch of `train_curve` (a 3-bend Bezier: each
   minibatch samples t, builds w(t) = coefficients(t) @ W and runs the model through
   ``functional_call``) against an ordinary PyTorch epoch of one model (``model(x)``, cross-entropy,
   SGD step) with the same data, batch size and optimiser; the ratio is the overhead.
2. **Path evaluation with BN recompute.** `evaluate_path` (Evaluator ``bn="recompute"``: fresh
   BatchNorm statistics at every point, vectorised over chunks of points) against the reference's
   per-point loop: for each t, load w(t) into the module, ``torch.optim.swa_utils.update_bn`` over the
   training batches, then evaluate train and test in eval mode.

Models: an MLP with BatchNorm on MNIST-shaped data and a small CNN with BatchNorm on CIFAR-shaped
data (zoo ``random-cifar``: the timing does not depend on the labels). Wall-clock medians of
``--repeats`` runs; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

os.environ.setdefault("MODESCAPE_PROGRESS", "0")

from torch.optim.swa_utils import update_bn  # noqa: E402

from modescape import space as sp  # noqa: E402
from modescape.connect import train_curve  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.families.curves import Bezier  # noqa: E402
from modescape.paths import evaluate_path  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402

CASES = {
    "mlp 784-256-256-10 + BN, MNIST-shaped": ("mlp", dict(depth=2, width=256, norm="bn"), "fake-mnist", 10000, 2000),
    "cnn w16 + BN, CIFAR-shaped": ("cnn", dict(width=16, norm="bn"), "random-cifar", 2000, 500),
}


def make_data(kind: str, n_train: int, n_test: int):
    if kind == "random-cifar":
        return load_dataset("random-cifar", n_train=n_train, n_test=n_test)
    # MNIST-shaped random data: same tensor shapes and cost as MNIST, no files needed
    g = torch.Generator().manual_seed(0)
    split = load_dataset("random-cifar", n_train=8, n_test=8)
    split.train = (torch.randn(n_train, 1, 28, 28, generator=g), torch.randint(0, 10, (n_train,), generator=g))
    split.test = (torch.randn(n_test, 1, 28, 28, generator=g), torch.randint(0, 10, (n_test,), generator=g))
    split.input_shape = (1, 28, 28)
    return split


clock = time.perf_counter  # --cpu-time: time.thread_time (this thread's CPU seconds; with --threads 1)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def plain_epoch(model, x, y, batch_size: int, device) -> float:
    """One ordinary training epoch of one model (the baseline)."""
    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    sync(device)
    t0 = clock()
    for i in range(0, x.shape[0], batch_size):
        idx = order[i : i + batch_size]
        loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return clock() - t0


def curve_epoch(model, a, b, split, batch_size: int, device) -> float:
    sync(device)
    t0 = clock()
    train_curve(
        model,
        a,
        b,
        split,
        kind="bezier",
        bends=3,
        epochs=1,
        lr=0.01,
        wd=5e-4,
        batch_size=batch_size,
        seed=0,
        device=device,
        progress=False,
    )
    sync(device)
    return clock() - t0


def reference_path(model, curve, split, points: int, batch_size: int, device) -> float:
    """The reference's evaluation: per point, update_bn over the train batches, then eval train and test."""
    net = copy.deepcopy(model).to(device)
    train_batches = [
        (x.to(device), y.to(device))
        for x, y in zip(split.train[0].split(batch_size), split.train[1].split(batch_size), strict=True)
    ]
    test_batches = [
        (x.to(device), y.to(device))
        for x, y in zip(split.test[0].split(batch_size), split.test[1].split(batch_size), strict=True)
    ]
    sync(device)
    t0 = clock()
    with torch.no_grad():
        for t in torch.linspace(0, 1, points, dtype=torch.float64):
            w = curve(t)
            for k, p in net.named_parameters():
                p.copy_(w[k])
            update_bn(train_batches, net)
            net.eval()
            for batches in (train_batches, test_batches):
                loss = correct = 0.0
                for x, y in batches:
                    out = net(x)
                    loss += float(F.cross_entropy(out, y, reduction="sum"))
                    correct += float((out.argmax(1) == y).sum())
    sync(device)
    return clock() - t0


def ours_path(model, curve, split, points: int, batch_size: int, device, mode: str) -> float:
    ev = Evaluator(
        model,
        {"train": split.train, "test": split.test},
        metrics=("loss", "error"),
        bn="recompute",
        batch_size=batch_size,
        device=device,
        mode=mode,
    )
    ev.family_mode = mode  # a fixed path: no one-off probe timing inside the measurement
    sync(device)
    t0 = clock()
    evaluate_path(curve, ev, n_points=points)
    sync(device)
    return clock() - t0


def median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points", type=int, default=61)
    ap.add_argument("--batch-size", type=int, default=128, help="training batch size")
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the data sizes (e.g. 5 on a GPU)")
    ap.add_argument("--parts", default="curve,path", help="curve (training epoch), path (BN recompute), or both")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time this thread's CPU seconds instead of wall clock (needs --threads 1): robust to "
        "other jobs on a shared machine, which stretch wall clock, not the work done",
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    global clock
    parts = set(args.parts.split(","))
    if not parts <= {"curve", "path"}:
        raise SystemExit(f"--parts: curve, path or both; got {args.parts}")
    if args.cpu_time:
        if args.threads != 1 or torch.device(args.device).type != "cpu":
            raise SystemExit("--cpu-time measures one CPU thread: use it with --threads 1 on the cpu")
        clock = time.thread_time
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}, device {dev}, "
        f"repeats {args.repeats} (median), T={args.points}, data scale {args.scale}, "
        f"clock {'thread CPU time' if args.cpu_time else 'wall'}"
    )
    rows = []
    for label, (model_name, kw, data_kind, n_train, n_test) in CASES.items():
        split = make_data(data_kind, int(n_train * args.scale), int(n_test * args.scale))
        torch.manual_seed(0)
        model = build_model(model_name, split.input_shape, split.num_classes, **kw)
        torch.manual_seed(1)
        other = build_model(model_name, split.input_shape, split.num_classes, **kw)
        space = sp.WeightSpace(model)
        a, b = space.point(model), space.point(other)
        x, y = split.train
        nan = float("nan")
        plain = curve = ref = nan
        ours = {"loop": nan, "vmap": nan}
        if "curve" in parts:  # interleaved: plain, curve, plain, curve, ...
            runs = [
                (plain_epoch(model, x, y, args.batch_size, dev), curve_epoch(model, a, b, split, args.batch_size, dev))
                for _ in range(args.repeats)
            ]
            plain, curve = (statistics.median(r[i] for r in runs) for i in (0, 1))
        bez = Bezier.on_segment(a, b, 3).to(dev)
        if "path" in parts:
            ref = median(
                lambda model=model, bez=bez, split=split: reference_path(
                    model, bez, split, args.points, args.eval_batch_size, dev
                ),
                args.repeats,
            )
            ours = {
                m: median(
                    lambda model=model, bez=bez, split=split, m=m: ours_path(
                        model, bez, split, args.points, args.eval_batch_size, dev, m
                    ),
                    args.repeats,
                )
                for m in ("loop", "vmap")
            }
        row = {
            "case": label,
            "params": space.numel,
            "n_train": int(x.shape[0]),
            "n_test": int(split.test[0].shape[0]),
            "plain_epoch_s": plain,
            "curve_epoch_s": curve,
            "curve_overhead": curve / plain,
            "reference_path_s": ref,
            "ours_path_loop_s": ours["loop"],
            "ours_path_vmap_s": ours["vmap"],
            "speedup_loop": ref / ours["loop"],
            "speedup_vmap": ref / ours["vmap"],
        }
        rows.append(row)
        print(f"{label}: {space.numel} params, {x.shape[0]} train / {split.test[0].shape[0]} test samples")
        if "curve" in parts:
            print(f"  training epoch: plain {plain:.2f} s, curve {curve:.2f} s, overhead x{curve / plain:.2f}")
        if "path" in parts:
            print(
                f"  path, {args.points} points, BN recompute: reference loop {ref:.2f} s, "
                f"ours loop {ours['loop']:.2f} s (x{ref / ours['loop']:.2f}), "
                f"ours vmap {ours['vmap']:.2f} s (x{ref / ours['vmap']:.2f})"
            )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {
                    "device": str(dev),
                    "device_name": name,
                    "torch": torch.__version__,
                    "scale": args.scale,
                    "clock": "thread_time" if args.cpu_time else "wall",
                    "threads": torch.get_num_threads(),
                    "points": args.points,
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

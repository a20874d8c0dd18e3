"""Benchmark simplex (SPRO) and random-subspace training epochs against a plain epoch of the same model.

    python bench/volumes.py [--data-root ../shared/data/mnist] [--repeats 3] [--samples 1,3] \
        [--dims 10,100,1000] [--projections dense,sparse,fastfood] [--device cpu] [--json-out PATH]

One interleaved run: each repeat times, in turn, a plain epoch (``model(x)``, cross-entropy, SGD step with
momentum and weight decay: the baseline), a SPRO epoch with k samples per minibatch for each k in
``--samples`` (`modescape.simplex.train_simplex`, one added vertex, lambda = 1e-3, a constant rate: k points of
the simplex from one matrix product, k forwards through ``functional_call``, the Cayley-Menger log-volume), and a
subspace epoch for every (projection, d) (`modescape.subspace.train_subspace`: ``sgd_epoch`` on
theta_0 + P z). Every ratio is a median of the repeats over the plain epoch's median, all at the same data,
batch size (128) and thread count. A method's epoch is (its run of 1 + E epochs minus its 1-epoch run) / E,
so that the setup (evaluator, projection, family) cancels; E is 1 on MNIST and enough epochs to see
``--min-samples`` samples on small data (digits: 21). ``--clock process`` (the default) counts this process's CPU
seconds, which a busy shared machine disturbs far less than elapsed time; with one thread they are the same on an idle
machine. On a GPU use ``--clock wall``.

Models: the digits MLP 64-64-64-10 (always) and, with ``--data-root``, the MNIST MLP 784-200-200-10 of Li
et al. 2018 (D = 199,210). Targets (issue 11): simplex epoch <= 1.5x plain at k = 1; subspace epoch <= 1.5x
for d <= 1000 on the MNIST MLP. A dense P is skipped where it would exceed ``--dense-limit`` entries.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

os.environ.setdefault("MODESCAPE_PROGRESS", "0")

from modescape.simplex import train_simplex  # noqa: E402
from modescape.subspace import train_subspace  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.process_time  # CPU seconds of this process (--clock wall: time.perf_counter)


def timed(fn) -> float:
    """Seconds ``fn()`` takes on the chosen clock."""
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def plain_epoch(model, x, y, batch_size: int, device, epochs: int = 1) -> float:
    """One ordinary training epoch of one model (the baseline): the mean over ``epochs`` epochs."""
    net = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    xd, yd = x.to(device), y.to(device)

    def run():
        for _ in range(epochs):
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(net(xd[idx]), yd[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        sync(device)

    return timed(run) / epochs


def per_epoch(call, epochs: int = 1) -> float:
    """The cost of one epoch of a method: ((its run with 1 + epochs epochs) - (with 1 epoch)) / epochs, so
    that the setup (evaluator, projection, family) cancels."""
    return (timed(lambda: call(1 + epochs)) - timed(lambda: call(1))) / epochs


def simplex_epoch(model, split, samples: int, batch_size: int, device, epochs: int = 1) -> float:
    return per_epoch(
        lambda e: train_simplex(
            model,
            [model],
            split,
            vertices=1,
            epochs=e,
            lr=0.01,
            lam=1e-3,
            samples=samples,
            batch_size=batch_size,
            schedule="constant",
            device=device,
            progress=False,
        ),
        epochs,
    )


def subspace_epoch(model, split, dim: int, projection: str, batch_size: int, device, epochs: int = 1) -> float:
    return per_epoch(
        lambda e: train_subspace(
            model,
            model,
            split,
            dim,
            projection,
            epochs=e,
            lr=0.01,
            batch_size=batch_size,
            evaluate=False,
            device=device,
            progress=False,
        ),
        epochs,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="MNIST folder: adds the 784-200-200-10 MLP case")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--samples", default="1,3", help="simplex samples per minibatch, comma separated")
    ap.add_argument("--dims", default="10,100,1000", help="subspace dimensions, comma separated")
    ap.add_argument("--projections", default="dense,sparse,fastfood,hashed")
    ap.add_argument(
        "--clock",
        choices=("process", "wall"),
        default="process",
        help="process: CPU seconds of this process (robust on a shared machine); wall: elapsed",
    )
    ap.add_argument("--dense-limit", type=float, default=2**26, help="skip a dense P above this many entries")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--min-samples",
        type=int,
        default=30000,
        help="measure over enough epochs to see this many samples (small datasets: several epochs)",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_num_threads(args.threads)
    samples = [int(s) for s in args.samples.split(",") if s]
    dims = [int(s) for s in args.dims.split(",") if s]
    projections = [p for p in args.projections.split(",") if p]

    cases = {}
    digits = load_dataset("digits")
    torch.manual_seed(0)
    cases["digits MLP 64-64-64-10"] = (build_model("mlp", digits.input_shape, 10, depth=2, width=64), digits)
    if args.data_root:
        mnist = load_dataset("mnist", root=args.data_root)
        torch.manual_seed(0)
        cases["MNIST MLP 784-200-200-10"] = (build_model("mlp", mnist.input_shape, 10, depth=2, width=200), mnist)

    report = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cases": {},
    }
    for name, (model, split) in cases.items():
        D = sum(p.numel() for p in model.parameters())
        x, y = split.train
        E = max(1, math.ceil(args.min_samples / x.shape[0]))  # epochs per measurement: small data, several
        dev, bs = args.device, args.batch_size
        # every job's arguments bound now (functools.partial): the jobs run within this case's iteration
        jobs = {"plain": functools.partial(plain_epoch, model, x, y, bs, dev, E)}
        for k in samples:
            jobs[f"simplex k={k}"] = functools.partial(simplex_epoch, model, split, k, bs, dev, E)
        for proj in projections:
            for d in dims:
                if d > D or (proj == "dense" and D * d > args.dense_limit):
                    continue
                jobs[f"subspace {proj} d={d}"] = functools.partial(subspace_epoch, model, split, d, proj, bs, dev, E)
        for fn in jobs.values():  # warm-up: allocator, first-call costs
            fn()
        times = {k: [] for k in jobs}
        for _ in range(args.repeats):  # interleaved: every job once per round
            for key, fn in jobs.items():
                times[key].append(fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        rows = {k: {"seconds": med[k], "ratio": med[k] / med["plain"]} for k in jobs}
        report["cases"][name] = {"D": D, "n_train": int(x.shape[0]), "epochs_per_measurement": E, "epochs": rows}
        print(f"\n{name}  (D = {D}, {x.shape[0]} samples, batch {args.batch_size})")
        for k, r in rows.items():
            print(f"  {k:28s} {r['seconds']:8.3f} s   {r['ratio']:5.2f}x plain")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

"""Per-step costs inside training, in one process (interleaved rounds, process CPU time, 1 thread).

    python bench/steps.py [--rounds 12] [--steps 50]

Rows (each a median over the rounds, ms per step, and the ratio to a plain step of the same model):

* ``plain``: ``model(x)``, cross-entropy, SGD with momentum and weight decay (an MLP 784-256-256-10 + BN,
  batch 128, random MNIST-shaped data);
* ``curve, functional``: a 3-bend Bezier curve's point w(t) as a differentiable flat vector (the cached
  endpoints' product plus the bend's), split into tensors and run through ``functional_call``, the L2
  penalty in the loss (the path before `modescape.evaluate.functional.FlatBinding`);
* ``curve, flat binding``: the same step through `FlatBinding` (`LinearFamily.write_flat` / `pull_flat`);
* ``cross-entropy``: per-sample cross-entropy forward and backward on [128, 10] logits, ``F.cross_entropy``
  against ``logsumexp - gather`` (in microseconds).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from modescape import space as sp
from modescape.evaluate import Evaluator
from modescape.families.curves import Bezier
from modescape.zoo import build_model


def timed(fn, steps: int) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, depth=2, width=256, norm="bn").train()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    wd = 5e-4
    a = sp.WeightSpace(model).point(model)
    fam = Bezier.on_segment(a, {k: v + 0.1 for k, v in a.items()}, 3)
    bend = fam.anchor(1)
    opt = torch.optim.SGD([bend], lr=0.01, momentum=0.9)
    buffers = {n: b for n, b in model.named_buffers()}
    functional_model = copy.deepcopy(model)
    binding = Evaluator(model, (x[:2], y[:2]), bn="train", mode="loop").flat_binding()
    plain_model = copy.deepcopy(model)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, weight_decay=wd)

    def plain():
        loss = F.cross_entropy(plain_model(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def curve_functional():
        flat = fam.flat(torch.rand((), dtype=torch.float64))
        out = functional_call(functional_model, (fam.layout.unflatten(flat), buffers), (x,))
        loss = F.cross_entropy(out, y) + wd * 0.5 * flat.dot(flat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def curve_binding():
        with torch.no_grad():
            coefs = fam.write_flat(torch.rand((), dtype=torch.float64), binding.values)
        binding.grads.zero_()
        loss = F.cross_entropy(binding(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fam.pull_flat(coefs, binding.grads.add_(binding.values, alpha=wd), steal=True)
        opt.step()

    logits = torch.randn(128, 10)

    def ce_torch():
        o = logits.clone().requires_grad_(True)
        F.cross_entropy(o, y, reduction="none").mean().backward()

    def ce_logsumexp():
        o = logits.clone().requires_grad_(True)
        (torch.logsumexp(o, 1) - o.gather(1, y[:, None])[:, 0]).mean().backward()

    jobs = {"plain": plain, "curve, functional": curve_functional, "curve, flat binding": curve_binding}
    micro = {"cross-entropy, F.cross_entropy": ce_torch, "cross-entropy, logsumexp - gather": ce_logsumexp}
    for fn in [*jobs.values(), *micro.values()]:
        timed(fn, 5)
    times: dict[str, list[float]] = {k: [] for k in [*jobs, *micro]}
    for _ in range(args.rounds):
        for k, fn in jobs.items():
            times[k].append(timed(fn, args.steps))
        for k, fn in micro.items():
            times[k].append(timed(fn, args.steps * 20) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds x {args.steps} steps, process CPU time")
    for k in jobs:
        print(f"  {k:34s} {med[k]:7.3f} ms/step  {med[k] / med['plain']:.2f}x plain")
    for k in micro:
        print(f"  {k:34s} {med[k]:7.1f} us")


if __name__ == "__main__":
    main()

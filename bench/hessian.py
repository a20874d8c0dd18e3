"""Benchmark Hessian top eigenvalue and trace: modescape vs pyhessian 0.1 vs hessian-eigenthings 1.0.0a5.

    python bench/hessian.py [--device cpu|cuda] [--models mlp,resnet20] [--n-resnet N] [--json-out PATH]

Same model, same data, same float32, same eval-mode BatchNorm, whole-dataset Hessian (multi-batch) for
every tool:

* ``digits MLP``: 64-64-64-10 ReLU MLP trained for a few epochs on the 1437 digits training images;
* ``ResNet-20``: the CIFAR ResNet-20 (zoo ``resnet``, BN, eval mode) at initialisation on random CIFAR-shaped
  inputs (``--n-resnet`` samples; keep it small on a CPU).

Top eigenvalue. Each tool runs with a tight tolerance while every Hessian-vector product is logged
with the tool's current estimate (modescape: Ritz value; pyhessian and eigenthings power iteration:
Rayleigh quotient). From one run: the number of products after which the estimate stays within a
relative error eps of the reference (a converged Lanczos value), for eps = 1e-3 and 1e-4, and what each
tool's own stopping rule at tol 1e-3 would return (pyhessian: relative change of the estimate, returning
the previous estimate; eigenthings power: change and residual; modescape: Ritz residual <= tol |theta|).
Time at equal accuracy = products x seconds per product, the latter measured for all tools interleaved
(fastest of a few rounds), so that a busy machine slows every tool alike; raw wall-clock is in the JSON.

modescape's times include building its operator: the gradient's graph, kept across products when it
fits in memory (so that each product is one backward pass), which also gives the Lanczos start vector
(seeded noise plus the normalised gradient). ``modescape-random-start`` and the ``modescape-recompute``
product time show what each of the two contributes.

Trace, to a relative standard error (5%; 20% for the ResNet on a CPU): modescape Hutchinson and Hutch++
stop on their standard error; pyhessian's Hutchinson is the same estimator, so it gets as many probes as
modescape's Hutchinson needed (its own rule, a relative change of the running mean, cannot aim at an
error; what it gives is reported as ``pyhessian-own-rule``); eigenthings Hutchinson and Hutch++ get the
same numbers of products. Blocked rows (``--block``): probes through vectorised products.

Ratios are pyhessian / modescape. Wall-clock numbers from a shared machine are noisy; the product
counts are exact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

os.environ.setdefault("MODESCAPE_PROGRESS", "0")

from hessian_peers import (  # noqa: E402
    Clock,
    Done,
    eigenthings_lanczos,
    eigenthings_op,
    eigenthings_power,
    pyhessian_eig,
    pyhessian_single_batch_eig,
    sync,
)

from modescape import curvature as cv  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402

# -- setups -----------------------------------------------------------------------------------------


def digits_mlp(device):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, depth=2, width=64)
    X, y = data.train
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(8):
        perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    # 3 equal batches of 479: hessian-eigenthings weights batches equally (exact only for equal sizes)
    return "digits MLP 64-64-64-10", model.eval().to(device), X, y, 479


def resnet20(device, n, steps=0):
    """ResNet-20 at initialisation (or after ``steps`` SGD steps) on random CIFAR-shaped inputs."""
    data = load_dataset("random-cifar", n_train=n, n_test=1)
    torch.manual_seed(0)
    model = build_model("resnet", data.input_shape, data.num_classes, depth=20).to(device)
    X, y = data.train[0].to(device), data.train[1].to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    at = f"{steps} SGD steps" if steps else "initialisation"
    return f"ResNet-20 (random CIFAR, n={n}, {at})", model.eval(), X, y, max(1, n // 2)


# -- the tools ------------------------------------------------------------------------------------


def ours_reference(model, X, y, bs, device, max_iter):
    ev = Evaluator(model, (X, y), batch_size=bs, device=device, progress=False)
    H = cv.Hessian(ev)  # measures the HVP method once per evaluator (a one-off, not timed)
    r = cv.eigenvalues(H, k=1, which="largest", tol=1e-6, max_iter=max_iter)
    return float(r.values[0]), H


def ours_eig(ev, clock, max_iter, start="gradient"):
    """modescape Lanczos; own rule: Ritz residual <= 1e-3 * |theta| (the top value sets the scale here).
    The clock includes building the operator (its retained gradient graph) and the start vector."""

    def cb(step, vals, res):
        clock.tick(float(vals[0]), rule=float(res[0]) <= 1e-3 * abs(float(vals[0])))

    clock.start()
    try:
        cv.eigenvalues(ev, k=1, which="largest", tol=1e-12, max_iter=max_iter, callback=cb, start=start)
    except Done:
        pass


def bench_eig(name, model, X, y, bs, device, max_iter, repeats):
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "n": len(X), "batch": bs}
    ref, H = ours_reference(model, X, y, bs, device, max_iter)
    out.update(reference=ref, hvp_method=H.method, hvp_timings=H.timings)
    clocks: dict[str, Clock] = {}
    for _ in range(repeats):  # interleaved repeats; each tool keeps its fastest run (shared, noisy machines)
        for tool in ("modescape", "modescape-random-start", "pyhessian", "pyhessian-single-batch", "eigenthings-power"):
            clock = Clock(device, ref, max_iter)
            if tool == "modescape":
                ours_eig(H.evaluator, clock, max_iter)
            elif tool == "modescape-random-start":
                ours_eig(H.evaluator, clock, max_iter, start="random")
            elif tool == "pyhessian-single-batch":
                pyhessian_single_batch_eig(model, X, y, device, clock, max_iter)
            elif tool == "pyhessian":
                pyhessian_eig(model, X, y, bs, device, clock, max_iter)
            else:
                eigenthings_power(model, X, y, bs, device, clock, max_iter)
            if tool not in clocks or clock.log[-1][0] < clocks[tool].log[-1][0]:
                clocks[tool] = clock
    out["hvp_to"] = {tool: {str(eps): c.count_to(eps) for eps in (1e-3, 1e-4)} for tool, c in clocks.items()}
    out["hvp_budget"] = max_iter
    out["wall_seconds_per_hvp"] = {tool: (c.log[-1][0] / len(c.log) if c.log else None) for tool, c in clocks.items()}
    per = product_seconds(model, X, y, bs, device, H, repeats)
    out["hvp_seconds"] = per
    # modescape pays once for its operator (the retained gradient graph, which also gives the start vector)
    key = {
        "modescape": "modescape",
        "modescape-random-start": "modescape",
        "pyhessian": "pyhessian",
        "pyhessian-single-batch": "pyhessian-single-batch",
        "eigenthings-power": "eigenthings",
    }
    once = {
        "modescape": per["modescape-build"],
        "modescape-random-start": per["modescape-build"],
        "pyhessian-single-batch": per["pyhessian-single-batch-build"],
    }
    out["time_to"] = {
        tool: {eps: (once.get(tool, 0.0) + n * per[key[tool]] if n else None) for eps, n in d.items()}
        for tool, d in out["hvp_to"].items()
    }
    own = {tool: c.own for tool, c in clocks.items()}
    steps = (own["modescape"] or {}).get("hvp") or 10
    secs = float("inf")
    for _ in range(repeats):
        lam, t, n_hvp = eigenthings_lanczos(model, X, y, bs, device, steps)
        secs = min(secs, t)
    own["eigenthings-lanczos"] = {
        "value": lam,
        "seconds": secs,
        "hvp": n_hvp,
        "rel_error": abs(lam - ref) / abs(ref),
        "note": f"max_iter={steps} (no tolerance stop; as many products as modescape)",
    }
    out["own_rule_tol_1e-3"] = own
    return out, H


def product_seconds(model, X, y, bs, device, H, repeats):
    """Seconds per whole-dataset Hessian-vector product of each tool, interleaved, fastest of ``repeats``
    rounds (so that a busy machine slows all tools alike)."""
    from pyhessian import hessian

    batches = [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]
    h = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
    op = eigenthings_op(model, X, y, bs)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(H.size, generator=g).to(device)
    vl = [t.reshape(p.shape) for t, p in zip(torch.split(v, [p.numel() for p in h.params]), h.params, strict=True)]
    import sys

    H_re = cv.Hessian(H.evaluator, retain=False)  # products that recompute the forward and backward passes
    single = lambda: hessian(model, torch.nn.CrossEntropyLoss(), data=(X, y), cuda=device.type == "cuda")  # noqa: E731
    h1 = single()
    hvp1 = sys.modules["pyhessian.hessian"].hessian_vector_product
    fns = {
        "modescape": lambda: H.matvec(v),
        "modescape-build": lambda: cv.Hessian(H.evaluator),
        "modescape-recompute": lambda: H_re.matvec(v),
        "pyhessian": lambda: h.dataloader_hv_product(vl),
        "pyhessian-single-batch": lambda: hvp1(h1.gradsH, h1.params, vl),
        "pyhessian-single-batch-build": single,
        "eigenthings": lambda: op.matvec(v),
    }
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(max(2, repeats)):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return best


def timed(fn, device, repeats):
    """(result of the fastest run, its seconds) over ``repeats`` runs of ``fn()``."""
    best, res = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        r = fn()
        sync(device)
        if time.perf_counter() - t0 < best:
            best, res = time.perf_counter() - t0, r
    return res, best


def bench_trace(name, model, X, y, bs, device, max_probes, H, sketch, repeats, target, block, per):
    """Trace to a relative standard error ``target``: modescape Hutchinson and Hutch++ stop on it;
    pyhessian's Hutchinson is the same estimator as ours, so it gets as many probes as ours needed (its
    own rule cannot aim at an error); eigenthings gets the same numbers of products."""
    import hessian_eigenthings as he
    from pyhessian import hessian

    out = {"model": name, "target_rel_stderr": target}
    batches = [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]
    variants = [("hutchinson", 1), ("hutch++", 1)] + ([("hutchinson", block), ("hutch++", block)] if block > 1 else [])
    for method, b in variants:  # timed from the evaluator: building the operator is part of the work
        r, secs = timed(
            lambda method=method, b=b: cv.trace(
                H.evaluator,
                method=method,
                rtol=target,
                min_samples=10,
                max_samples=max_probes,
                sketch=sketch,
                seed=0,
                block=b,
            ),
            device,
            repeats,
        )
        out[f"modescape-{method}" + (f"-block{b}" if b > 1 else "")] = {
            "estimate": r.estimate,
            "stderr": r.stderr,
            "probes": r.n_samples,
            "hvp": r.n_hvp,
            "seconds": secs,
            "converged": r.converged,
        }
    n_hutch = out["modescape-hutchinson"]["probes"]

    def py(n, tol):
        h = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
        torch.manual_seed(0)
        samples = h.trace(maxIter=n, tol=tol)
        model.zero_grad(set_to_none=True)
        return samples

    for label, n, tol in (("pyhessian", n_hutch, -1.0), ("pyhessian-own-rule", max_probes, 1e-3)):
        samples, secs = timed(lambda n=n, tol=tol: py(n, tol), device, repeats)
        t = torch.tensor(samples, dtype=torch.float64)
        se = float(t.std()) / math.sqrt(len(t)) if len(t) > 1 else float("nan")
        out[label] = {"estimate": float(t.mean()), "stderr": se, "probes": len(t), "hvp": len(t), "seconds": secs}
    out["pyhessian"]["note"] = "as many probes as modescape Hutchinson needed (tol=-1: no early stop)"
    out["pyhessian-own-rule"]["note"] = "its rule: relative change of the running mean < 1e-3"
    op = eigenthings_op(model, X, y, bs)
    r, secs = timed(lambda: he.hutchinson(op, num_samples=max(2, n_hutch), seed=0), device, repeats)
    out["eigenthings-hutchinson"] = {
        "estimate": r.estimate,
        "stderr": r.stderr,
        "probes": max(2, n_hutch),
        "hvp": max(2, n_hutch),
        "seconds": secs,
    }
    n_pp = out["modescape-hutch++"]["hvp"]
    r, secs = timed(lambda: he.hutch_plus_plus(op, num_matvecs=n_pp, seed=0), device, repeats)
    out["eigenthings-hutch++"] = {
        "estimate": r.estimate,
        "stderr": r.stderr,
        "probes": n_pp // 3,
        "hvp": n_pp,
        "seconds": secs,
    }
    # seconds at equal accuracy from products x interleaved seconds per product (robust to a busy machine)
    for k, o in out.items():
        if isinstance(o, dict) and "hvp" in o:
            tool = (
                "pyhessian"
                if k.startswith("pyhessian")
                else ("eigenthings" if k.startswith("eigenthings") else "modescape")
            )
            once = per["modescape-build"] if tool == "modescape" else 0.0
            o["seconds_from_products"] = once + o["hvp"] * per[tool] if "block" not in k else None
    return out


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mlp,resnet20")
    ap.add_argument("--n-resnet", type=int, default=None, help="ResNet samples (default 16 on cpu, 512 on cuda)")
    ap.add_argument("--max-iter", type=int, default=40, help="products per eigenvalue run at most")
    ap.add_argument(
        "--trace-max", type=int, default=None, help="trace probes at most (default 400; 20 for the ResNet on cpu)"
    )
    ap.add_argument(
        "--sketch", type=int, default=None, help="Hutch++ sketch size (default 10; 5 for the ResNet on cpu)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved repeats, fastest kept (default 2; 1 for the ResNet on cpu)",
    )
    ap.add_argument(
        "--block",
        type=int,
        default=None,
        help="probes per vectorised product in the blocked rows (default 8; none for the ResNet on cpu)",
    )
    ap.add_argument(
        "--no-resnet-trace",
        action="store_true",
        help="skip the ResNet trace (its trace at initialisation is near zero: no relative target)",
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    device = torch.device(args.device)
    n_res = args.n_resnet or (512 if device.type == "cuda" else 16)
    try:
        import hessian_eigenthings
        import pyhessian  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"bench/hessian.py compares with pyhessian and hessian-eigenthings ({e}): "
            f"pip install -r bench/requirements.txt"
        ) from None
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "pyhessian": "0.1",
        "hessian_eigenthings": hessian_eigenthings.__version__,
    }
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    setups = []
    for m in args.models.split(","):
        if m == "mlp":
            setups.append(digits_mlp(device))
        elif m == "resnet20":
            setups.append(resnet20(device, n_res))
        else:
            raise SystemExit(f"unknown model {m}: use mlp, resnet20")
    results = {"info": info, "eigenvalue": [], "trace": []}
    t_all = time.perf_counter()
    for name, model, X, y, bs in setups:
        X, y = X.to(device), y.to(device)
        small_cpu = device.type == "cpu" and name.startswith("ResNet")
        repeats = args.repeats or (1 if small_cpu else 2)
        e, H = bench_eig(name, model, X, y, bs, device, args.max_iter, repeats)
        results["eigenvalue"].append(e)
        print(
            f"\n== top eigenvalue: {name} ({e['params']} params, n={e['n']}, batch {e['batch']}, "
            f"reference {e['reference']:.6g}, HVP {e['hvp_method']})"
        )
        print(
            f"{'tool':20s} {'HVPs to 1e-3':>12s} {'1e-4':>5s} {'s to 1e-3':>9s} {'1e-4':>7s} | own rule (tol 1e-3): "
            f"{'HVPs':>4s} {'rel err':>8s}"
        )
        for tool, o in e["own_rule_tol_1e-3"].items():
            tt, nn = e["time_to"].get(tool, {}), e["hvp_to"].get(tool, {})
            o = o or {}
            never = f">{e['hvp_budget']}" if tool in e["hvp_to"] else "-"
            print(
                f"{tool:20s} {fmt(nn.get('0.001'), 'd') if nn.get('0.001') else never:>12s} "
                f"{fmt(nn.get('0.0001'), 'd') if nn.get('0.0001') else never:>5s} "
                f"{fmt(tt.get('0.001')):>9s} {fmt(tt.get('0.0001')):>7s} | {'':20s} "
                f"{fmt(o.get('hvp'), 'd'):>4s} {fmt(o.get('rel_error'), '8.1e'):>8s}"
            )
        print("  seconds per product: " + ", ".join(f"{k} {fmt(v)}" for k, v in e["hvp_seconds"].items()))
        us = e["time_to"]["modescape"]
        for peer in ("pyhessian", "pyhessian-single-batch"):
            py = e["time_to"][peer]
            for eps in ("0.001", "0.0001"):
                if py.get(eps) and us.get(eps):
                    print(f"  time to rel. error {eps}: {peer} / modescape = {py[eps] / us[eps]:.2f}x")
        py = e["time_to"]["pyhessian"]
        if py.get("0.0001") is None:
            print(
                f"  pyhessian did not reach rel. error 1e-4 within {e['hvp_budget']} products "
                f"(modescape: {e['hvp_to']['modescape'].get('0.0001')})"
            )
        if args.no_resnet_trace and name.startswith("ResNet"):
            continue
        tr = bench_trace(
            name,
            model,
            X,
            y,
            bs,
            device,
            args.trace_max or (20 if small_cpu else 400),
            H,
            args.sketch or (5 if small_cpu else 10),
            repeats,
            0.2 if small_cpu else 0.05,
            args.block or (1 if small_cpu else 8),
            e["hvp_seconds"],
        )
        results["trace"].append(tr)
        print(f"-- trace to a standard error of {tr['target_rel_stderr']:.0%}")
        blk = [k for k in tr if k.startswith("modescape-") and "block" in k]
        for tool in (
            "modescape-hutchinson",
            "modescape-hutch++",
            *blk,
            "pyhessian",
            "pyhessian-own-rule",
            "eigenthings-hutchinson",
            "eigenthings-hutch++",
        ):
            o = tr[tool]
            print(
                f"{tool:28s} {o['estimate']:12.5g} +- {o['stderr']:9.3g}  products {o['hvp']:4d}  "
                f"wall {o['seconds']:8.3f} s  products x s/product {fmt(o.get('seconds_from_products'), '8.3f'):>8s} s"
            )
        py, pyp = tr["pyhessian"]["seconds"], tr["pyhessian"]["seconds_from_products"]
        print(
            "  wall clock, pyhessian / "
            + ", ".join(
                f"{k} = {py / tr[k]['seconds']:.2f}x" for k in ("modescape-hutchinson", "modescape-hutch++", *blk)
            )
        )
        print(
            "  products x s/product, pyhessian / "
            + ", ".join(
                f"{k} = {pyp / tr[k]['seconds_from_products']:.2f}x"
                for k in ("modescape-hutchinson", "modescape-hutch++")
            )
        )
    results["total_seconds"] = time.perf_counter() - t_all
    print(f"\ntotal {results['total_seconds']:.1f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

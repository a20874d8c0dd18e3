"""Benchmark: one 2-D filter-normalised loss surface, three ways, at equal work.

1. **modescape**: `landscape.sweep(Plane(...), Evaluator(...), grid)` (data resident on the device,
   loop/vmap/shared-first-layer path chosen by measurement; optional bf16 autocast, channels_last and
   torch.compile on a GPU).
2. **reference loop**, written the way tomgoldstein/loss-landscape's ``plot_surface.crunch`` works:
   for every grid point the weights are copied into the module (``p.data = w + x dx + y dy``), then
   one pass of a ``DataLoader`` (batch 128) accumulates loss and accuracy.
3. **loss-landscapes 3.0.6** (``random_plane`` with its ``Loss`` metric forced onto the same samples).

All three see the same model and the same samples. modescape computes the whole grid (timed). Then,
because the machine may be shared, ``--rounds`` interleaved rounds each time a block of modescape points
(its sweep path), the reference loop and loss-landscapes on a few points; speedups are ratios of
per-point times (the cost of a point does not depend on where it is). The reference loop's values are
checked against modescape's. ``--threads 1`` gives steadier numbers on a busy 2-core machine.

    python bench/surface.py --width 32 --depth 1                     # 64-32-10 digits MLP
    python bench/surface.py --width 256 --depth 2                    # 64-256-256-10
    python bench/surface.py --model resnet --model-args depth=20 --data random-cifar \\
        --data-args n_train=10000,n_test=10 --device cuda --bf16 --channels-last --compile \\
        --batch-size 10000 --warmup --ref-points 8 --json-out resnet20.json   # 51x51 ResNet-20 on an H100
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modescape import io  # noqa: E402
from modescape import space as sp  # noqa: E402
from modescape.directions import random_directions  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.families import Plane  # noqa: E402
from modescape.landscape import Grid, sweep  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(model, origin, dx, dy, coords, x, y, device, batch_size=128):
    """Per point: copy weights into the module, one DataLoader pass (loss-landscape's crunch/eval_loss)."""
    net = copy.deepcopy(model).to(device).eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    params = dict(net.named_parameters())
    out = []
    for cx, cy in coords:
        with torch.no_grad():
            for n, p in params.items():  # net_plotter.set_weights
                p.data = origin[n] + float(cx) * dx[n] + float(cy) * dy[n]
            total, correct, loss_sum = 0, 0, 0.0
            for xb, yb in loader:  # evaluation.eval_loss
                xb, yb = xb.to(device), yb.to(device)
                o = net(xb)
                loss_sum += F.cross_entropy(o, yb).item() * xb.shape[0]
                correct += (o.argmax(1) == yb).sum().item()
                total += xb.shape[0]
        out.append((loss_sum / total, correct / total))
    return np.asarray(out)


def loss_landscapes_plane(model, x, y, steps):
    import loss_landscapes
    import loss_landscapes.metrics

    metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), x, y)
    return loss_landscapes.random_plane(
        model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--model-args", default="", help="e.g. depth=1,width=32 (for mlp see --depth/--width)")
    ap.add_argument("--depth", type=int, default=1, help="mlp hidden layers")
    ap.add_argument("--width", type=int, default=32, help="mlp width")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-args", default="")
    ap.add_argument("--samples", type=int, default=0, help="use the first N training samples (0: all)")
    ap.add_argument("--grid", type=int, default=51, help="points per axis of the [-1, 1]^2 grid")
    ap.add_argument("--ref-points", type=int, default=64, help="grid points timed for each baseline (all rounds)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    ap.add_argument("--block", type=int, default=128, help="modescape points per timing round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="modescape's evaluator precision; with bf16 the fp32 evaluator is timed in the same "
        "interleaved rounds and the largest difference reported",
    )
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the evaluator's forward")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (implies --compile)")
    ap.add_argument("--mode", default="auto", help="evaluator mode: auto, loop, vmap")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="evaluator batch size (0: all samples in one batch on CPU, up to 5000 on GPU)",
    )
    ap.add_argument("--warmup", action="store_true", help="compile and pick the mode before timing (reported apart)")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--skip-ll", action="store_true", help="skip loss-landscapes")
    ap.add_argument("--skip-ref", action="store_true", help="skip the reference loop in the interleaved rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        help="after the sweep, profile N points (torch.profiler) and print the top operators",
    )
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(a.seed)
    split = load_dataset(a.data, **io.parse_args(a.data_args))
    x, y = split.train
    if a.samples:
        x, y = x[: a.samples], y[: a.samples]
    margs = io.parse_args(a.model_args)
    if a.model == "mlp":
        margs = {"depth": a.depth, "width": a.width, **margs}
    model = build_model(a.model, split.input_shape, split.num_classes, **margs)
    space = sp.WeightSpace(model)
    origin = space.point(model)
    dx, dy = random_directions(model, 2, normalization="filter", ignore="biasbn", seed=a.seed)
    grid = Grid.parse(x=f"-1:1:{a.grid}", y=f"-1:1:{a.grid}")
    n_points = grid.size
    bs = a.batch_size or (x.shape[0] if device.type == "cpu" else min(x.shape[0], 5000))
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "model": a.model,
        "model_args": margs,
        "parameters": space.numel,
        "data": a.data,
        "samples": int(x.shape[0]),
        "grid": list(grid.shape),
        "points": n_points,
        "torch": torch.__version__,
    }

    # -- modescape ------------------------------------------------------------------------------
    extra = {}
    if a.bf16 or a.precision == "bf16":
        a.precision = "bf16"
        extra["precision"] = "bf16"
    if a.channels_last:
        extra["channels_last"] = True
    if a.compile or a.compile_mode:
        extra["compile"] = a.compile_mode or True
    t0 = time.perf_counter()
    ev = Evaluator(
        model,
        {"train": (x, y)},
        metrics=("loss", "accuracy"),
        device=device,
        batch_size=bs,
        mode=a.mode,
        progress=False,
        **extra,
    )
    plane = Plane(origin, dx, dy).to(device)
    t_setup = time.perf_counter() - t0
    t_warm = 0.0
    if a.warmup:  # compilation and the evaluation-mode probe, timed apart from the sweep
        sync(device)
        t0 = time.perf_counter()
        ev.choose_family_mode(plane, torch.as_tensor(grid.points()[: ev.family_path.chunk]))
        ev.evaluate_family(plane, torch.as_tensor(grid.points()[:2]), progress=False)
        sync(device)
        t_warm = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    ds = sweep(plane, ev, grid, progress=None)
    sync(device)
    t_ms = time.perf_counter() - t0
    result["modescape"] = {
        "seconds": t_ms,
        "setup_seconds": t_setup,
        "warmup_seconds": t_warm,
        "ms_per_point": 1e3 * t_ms / n_points,
        "batch_size": bs,
        "mode": ds.attrs.get("eval_mode"),
        "options": {k: str(v) for k, v in extra.items()},
    }
    print(
        f"modescape: {n_points} points in {t_ms:.2f} s ({1e3 * t_ms / n_points:.2f} ms/point, "
        f"mode {ds.attrs.get('eval_mode')}, setup {t_setup:.2f} s, warm-up {t_warm:.2f} s)",
        flush=True,
    )

    if a.profile:
        result["profile"] = profile(ev, plane, grid, a.profile, device)
    if not a.skip_baselines:
        baselines(a, result, model, origin, dx, dy, grid, ds, ev, plane, x, y, device, t_ms / n_points)
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def profile(ev, plane, grid, n, device) -> list[dict]:
    """The top operators (by self time on the device, else on the CPU) over ``n`` points of the sweep's
    path: where a point's time goes, for tuning on a new machine."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    pts = torch.as_tensor(grid.points()[:n])
    ev.evaluate_family(plane, pts, progress=False)  # warm
    sync(device)
    with prof(activities=acts) as p:
        ev.evaluate_family(plane, pts, progress=False)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(p.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:15]
    out = [{"name": e.key, "calls": e.count, "self_us_per_point": getattr(e, key, 0.0) / n} for e in rows]
    print(f"profile over {n} points (self time per point, {key}):")
    for r in out:
        print(f"  {r['self_us_per_point']:10.1f} us  {r['calls']:6d} calls  {r['name'][:90]}")
    return out


def baselines(a, result, model, origin, dx, dy, grid, ds, ev, plane, x, y, device, ours_per_point):
    """Time the reference loop and loss-landscapes against modescape in interleaved rounds.

    The machine may be shared: each round times a block of modescape points (the sweep's own path,
    `Evaluator.evaluate_family`), then the reference loop and loss-landscapes on a few points, so load
    changes hit all three alike. Ratios are of the summed per-point times.
    """
    pts = grid.points()
    rounds = max(1, a.rounds)
    k = max(1, a.ref_points // rounds)
    steps = max(2, int(math.isqrt(a.ref_points)))  # loss-landscapes: a steps x steps plane per round
    dev_origin, ddx, ddy = sp.to(origin, device), sp.to(dx, device), sp.to(dy, device)
    xd, yd = x.to(device), y.to(device)
    ref = reference_loop(model, dev_origin, ddx, ddy, pts[:k], x, y, device)  # warm-up and correctness
    ours = np.stack([ds.train_loss.values.reshape(-1)[:k], ds.train_accuracy.values.reshape(-1)[:k]], 1)
    diff = float(np.max(np.abs(ours[:, 0] - ref[:, 0]) / np.maximum(1.0, np.abs(ref[:, 0]))))
    tot = {"modescape": [0.0, 0], "reference_loop": [0.0, 0], "loss_landscapes": [0.0, 0], "fp32": [0.0, 0]}
    ll_error = None
    ev32, lows, highs = None, [], []
    if a.precision != "fp32":  # the same evaluator in fp32, timed in the same rounds on the same points
        ev32 = Evaluator(
            model,
            {"train": (x, y)},
            metrics=("loss", "accuracy"),
            device=device,
            batch_size=result["modescape"]["batch_size"],
            mode=a.mode,
            progress=False,
        )
        ev32.evaluate_family(plane, torch.as_tensor(pts[:2]), progress=False)  # its path probe, untimed
    for r in range(rounds):
        block = pts[(r * a.block) % len(pts) :][: a.block]
        sync(device)
        t0 = time.perf_counter()
        m = ev.evaluate_family(plane, torch.as_tensor(block), progress=False)
        sync(device)
        tot["modescape"][0] += time.perf_counter() - t0
        tot["modescape"][1] += len(block)
        if ev32 is not None:
            sync(device)
            t0 = time.perf_counter()
            m32 = ev32.evaluate_family(plane, torch.as_tensor(block), progress=False)
            sync(device)
            tot["fp32"][0] += time.perf_counter() - t0
            tot["fp32"][1] += len(block)
            lows.append(m.values)
            highs.append(m32.values)
        if not a.skip_ref:
            t0 = time.perf_counter()
            reference_loop(model, dev_origin, ddx, ddy, block[:k], x, y, device)
            sync(device)
            tot["reference_loop"][0] += time.perf_counter() - t0
            tot["reference_loop"][1] += min(k, len(block))
        if not a.skip_ll and ll_error is None:
            m = copy.deepcopy(model).to(device).eval()
            sync(device)
            t0 = time.perf_counter()
            try:
                loss_landscapes_plane(m, xd, yd, steps)
            except Exception as e:  # e.g. it makes its directions on the CPU for a model on the GPU
                ll_error = f"{type(e).__name__}: {e}"
            else:
                sync(device)
                tot["loss_landscapes"][0] += time.perf_counter() - t0
                tot["loss_landscapes"][1] += steps**2
    per = {n: 1e3 * t / max(c, 1) for n, (t, c) in tot.items()}
    low, high = (torch.cat(lows), torch.cat(highs)) if lows else (None, None)
    result["interleaved"] = {
        "rounds": rounds,
        "modescape_ms_per_point": per["modescape"],
        "modescape_points": tot["modescape"][1],
    }
    if ev32 is not None:
        d = {"max_abs_diff": {}, "max_rel_diff": {}}
        for j, n in enumerate(ev.names):
            diff = (low[:, j] - high[:, j]).abs()
            d["max_abs_diff"][n] = float(diff.max())
            d["max_rel_diff"][n] = float((diff / high[:, j].abs().clamp_min(1e-300)).max())
        result["fp32"] = {"ms_per_point": per["fp32"], "points_timed": tot["fp32"][1], **d}
        result["speedup_vs_fp32"] = per["fp32"] / per["modescape"]
        print(
            f"fp32 evaluator: {per['fp32']:.2f} ms/point -> {a.precision} is {result['speedup_vs_fp32']:.2f}x; "
            f"largest difference on {tot['fp32'][1]} points: "
            + ", ".join(f"{n} abs {d['max_abs_diff'][n]:.2g} rel {d['max_rel_diff'][n]:.2g}" for n in ev.names),
            flush=True,
        )
    if not a.skip_ref:
        result["reference_loop"] = {
            "ms_per_point": per["reference_loop"],
            "points_timed": tot["reference_loop"][1],
            "max_rel_loss_diff_vs_modescape": diff,
            "accuracy_equal": bool(np.allclose(ours[:, 1], ref[:, 1], atol=2.0 / x.shape[0])),
        }
        result["speedup_vs_reference_loop"] = per["reference_loop"] / per["modescape"]
        result["speedup_vs_reference_loop_full_sweep"] = per["reference_loop"] / (1e3 * ours_per_point)
        print(
            f"interleaved ({rounds} rounds): modescape {per['modescape']:.2f} ms/point, reference loop "
            f"{per['reference_loop']:.2f} ms/point -> {result['speedup_vs_reference_loop']:.1f}x "
            f"(full sweep {1e3 * ours_per_point:.2f} ms/point -> "
            f"{result['speedup_vs_reference_loop_full_sweep']:.1f}x; "
            f"max rel. loss diff {diff:.1e})",
            flush=True,
        )
    if not a.skip_ll:
        if ll_error is not None:
            result["loss_landscapes"] = {"version": "3.0.6", "error": ll_error}
            print(f"loss-landscapes 3.0.6 failed: {ll_error}", flush=True)
        else:
            result["loss_landscapes"] = {
                "version": "3.0.6",
                "ms_per_point": per["loss_landscapes"],
                "points_timed": tot["loss_landscapes"][1],
                "note": "train loss only (no accuracy): one full-batch forward per point",
            }
            result["speedup_vs_loss_landscapes"] = per["loss_landscapes"] / per["modescape"]
            print(
                f"loss-landscapes 3.0.6: {per['loss_landscapes']:.2f} ms/point -> modescape is "
                f"{result['speedup_vs_loss_landscapes']:.1f}x (it computes the loss only)",
                flush=True,
            )


if __name__ == "__main__":
    main()

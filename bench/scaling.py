"""Benchmark: does the cost grow as it should? Time against grid points, samples and parameters.

Two tasks, each timed while one size doubles and the others stay fixed:

* **surface**: `landscape.sweep` of a filter-normalised plane (``Evaluator``, fp32, the path it picks)
  against the number of grid points, of samples, and of parameters (an MLP 64-w-w-10 of growing width w);
* **Hessian top eigenvalue**: `modescape.curvature.eigenvalues` (k=1, Lanczos, a fixed number of
  products so that only the size changes) against samples and parameters.

The data are seeded random 64-feature inputs with 10 classes (any number of samples). Each time is the
process's CPU time (``time.process_time``, one torch thread by default), the best of ``--repeats`` runs
after one warm-up: on a machine shared with other jobs the wall clock also counts the time the others
run, while the CPU time is the work itself; the exponent is the slope of a least-squares line through
(log size, log time). Linear cost gives exponents near 1 (below 1 where fixed per-call overheads still
count at the small sizes). Prints a table, writes ``--json-out`` and the log-log figure
(`modescape.plots.plot_scaling`, default ``docs/figures/bench_scaling.png``).

    python bench/scaling.py                      # about 3-6 minutes on a busy 2-core machine
    python bench/scaling.py --quick              # smaller sizes (a rehearsal, under a minute)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modescape import curvature as cv  # noqa: E402
from modescape import space as sp  # noqa: E402
from modescape.directions import random_directions  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.families import Plane  # noqa: E402
from modescape.landscape import sweep  # noqa: E402
from modescape.plots import plot_scaling  # noqa: E402
from modescape.zoo import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def mlp(width: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (64,), 10, depth=2, width=width)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, path probe)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def time_surface(width: int, n: int, points: int, repeats: int) -> float:
    net = mlp(width)
    x, y = data(n)
    ev = Evaluator(net, {"train": (x, y)}, batch_size=n, progress=False, mode="loop")
    dx, dy = random_directions(net, 2, seed=0)
    plane = Plane(sp.WeightSpace(net).point(net), dx, dy)
    side = int(round(points**0.5))
    grid = {"x": np.linspace(-1, 1, side), "y": np.linspace(-1, 1, max(1, points // side))}
    ev.family_mode = "loop"  # one path at every size: the scaling of the work, not of the path choice
    return best_time(lambda: sweep(plane, ev, grid, progress=False), repeats)


def time_hessian(width: int, n: int, steps: int, repeats: int) -> float:
    net = mlp(width)
    x, y = data(n)
    ev = Evaluator(net, {"train": (x, y)}, batch_size=n, progress=False)
    op = cv.Hessian(ev)  # one operator: its one-off HVP-method probe is outside the timed runs
    return best_time(lambda: cv.eigenvalues(op, k=1, tol=1e-12, max_iter=steps, seed=0, progress=False), repeats)


def exponent(x, t) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(t, float)), 1)[0])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a rehearsal)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="Lanczos products per Hessian run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "bench_scaling.png"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    q = a.quick
    points = [16, 36, 64, 144] if q else [64, 144, 256, 576]
    samples = [256, 512, 1024, 2048] if q else [1024, 2048, 4096, 8192]
    widths = [32, 64, 128, 256] if q else [128, 256, 512, 1024]
    base = {"points": 36 if q else 64, "n": 512 if q else 2048, "width": 64 if q else 256}
    rows = []

    def run(task: str, variable: str, sizes, xs, fn) -> None:
        ts = []
        for s in sizes:
            ts.append(fn(s))
            print(f"  {task:<22} {variable:<11} {s:>8}: {ts[-1]:.3f} s", flush=True)
        rows.append({"task": task, "variable": variable, "x": list(xs), "seconds": ts, "exponent": exponent(xs, ts)})

    def params(w: int) -> int:
        return sp.WeightSpace(mlp(w)).numel

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run("surface", "grid points", points, points, lambda k: time_surface(base["width"], base["n"], k, a.repeats))
    run("surface", "samples", samples, samples, lambda n: time_surface(base["width"], n, base["points"], a.repeats))
    run(
        "surface",
        "parameters",
        widths,
        [params(w) for w in widths],
        lambda w: time_surface(w, base["n"], base["points"], a.repeats),
    )
    run(
        "Hessian top eigenvalue",
        "samples",
        samples,
        samples,
        lambda n: time_hessian(base["width"], n, a.steps, a.repeats),
    )
    run(
        "Hessian top eigenvalue",
        "parameters",
        widths,
        [params(w) for w in widths],
        lambda w: time_hessian(w, base["n"], a.steps, a.repeats),
    )
    print(f"\n{'task':<24}{'variable':<13}{'exponent':>9}")
    for r in rows:
        print(f"{r['task']:<24}{r['variable']:<13}{r['exponent']:>9.2f}")
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": base,
        "steps": a.steps,
        "rows": rows,
    }
    if a.figure:
        plot_scaling(
            rows,
            a.figure,
            title="modescape on the CPU: time against size (dotted: slope 1)",
            ylabel="CPU seconds (best of repeats)",
        )
        print(f"figure: {a.figure}")
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

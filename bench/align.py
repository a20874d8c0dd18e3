"""Weight-matching time: modescape.symmetry against rebasin 0.0.47 on the same pairs of models.

Models (two independent random initialisations each, same seeds for both libraries):
  * MLP 3x512 on MNIST-shaped inputs (784 -> 512 -> 512 -> 512 -> 10);
  * ResNet-20 at width x4 (channels 64/128/256, BatchNorm) on CIFAR-shaped inputs, its BatchNorm
    running statistics set by three train-mode passes on random inputs.

For each library we time (median of --repeats runs, ours and rebasin's interleaved; wall clock, this
process's threads):
  * ``spec``: building the permutation structure (ours: `infer_spec` via torch.fx; rebasin: the
    `PermutationCoordinateDescent` constructor, which traces with torchview);
  * ``match``: the coordinate descent itself (ours: `weight_matching`; rebasin:
    `calculate_permutations`), both capped at 100 passes and stopping when a pass gains nothing.
and print the ratio rebasin / modescape (> 1: we are faster). Also reported: the number of passes and
the matching objective sum_W <W_A, P[W_B]> each reached (the two use different random visiting orders,
so they can stop at different local optima), and max |f(B) - f(permuted B)| in eval mode on 8 random
inputs (0 up to float rounding when the permutation keeps the function, running statistics included).

    python bench/align.py [--repeats 5] [--threads 2] [--json]

rebasin is a benchmark-only dependency (bench/requirements.txt); without it only our times print.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from modescape.symmetry import apply, infer_spec, weight_matching
from modescape.zoo import build_model

MODELS = {
    "mlp-3x512": ("mlp", (1, 28, 28), dict(depth=3, width=512)),
    "resnet20-x4": ("resnet", (3, 32, 32), dict(depth=20, width=4)),
}


def pair(key: str):
    name, shape, args = MODELS[key]
    torch.manual_seed(0)
    a = build_model(name, shape, 10, **args)
    torch.manual_seed(1)
    b = build_model(name, shape, 10, **args)
    with torch.no_grad():  # non-trivial BatchNorm running statistics (at init they are 0 and 1)
        for m in (a, b):
            m.train()
            for _ in range(3):
                m(torch.randn(32, *shape) * 2 + 0.5)
    return a, b, shape


def params(model):
    return {k: v.detach() for k, v in model.named_parameters()}


def objective(a: dict, b: dict) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def function_diff(before: torch.nn.Module, after: torch.nn.Module, shape) -> float:
    """Max |output difference| (eval mode) between B and permuted B: 0 up to rounding if the function is kept."""
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(0))
    before.eval()
    after.eval()
    with torch.no_grad():
        return float((before(x) - after(x)).abs().max())


def time_ours(key: str, dtype: torch.dtype | None = None) -> dict:
    a, b, shape = pair(key)
    t0 = time.perf_counter()
    spec = infer_spec(a)
    spec_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    perms, info = weight_matching(spec, params(a), params(b), return_info=True, dtype=dtype)
    match_s = time.perf_counter() - t0
    moved = copy.deepcopy(b)
    moved.load_state_dict(apply(spec, b.state_dict(), perms))
    return {
        "spec_s": spec_s,
        "match_s": match_s,
        "passes": info["passes"],
        "objective": objective(params(a), params(moved)),
        "function_diff": function_diff(b, moved, shape),
    }


def time_rebasin(key: str) -> dict:
    from rebasin import PermutationCoordinateDescent

    a, b, shape = pair(key)
    x = torch.randn(2, *shape)
    bb = copy.deepcopy(b)
    t0 = time.perf_counter()
    pcd = PermutationCoordinateDescent(a, bb, x)
    spec_s = time.perf_counter() - t0
    passes = 0
    t0 = time.perf_counter()
    while passes < 100:
        passes += 1
        if not pcd._calculate_permutations_step(_NoLoop()):
            break
    match_s = time.perf_counter() - t0
    pcd.apply_permutations()
    return {
        "spec_s": spec_s,
        "match_s": match_s,
        "passes": passes,
        "objective": objective(params(a), params(bb)),
        "function_diff": function_diff(b, bb, shape),
    }


def summarise(runs: list[dict]) -> dict:
    """Median (and min) of the times over repeats; the last run's passes, objective and function check."""
    out = dict(runs[-1])
    for k in ("spec_s", "match_s"):
        vals = sorted(r[k] for r in runs)
        out[k] = vals[len(vals) // 2]
        out[k.replace("_s", "_min_s")] = vals[0]
    out["passes_all"] = [r["passes"] for r in runs]
    return out


class _NoLoop:
    """Stands in for the tqdm loop rebasin's step reports into."""

    def set_description(self, *_, **__):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--dtype",
        choices=("default", "float64", "float32"),
        default="default",
        help="our cost matrices' dtype (default: weight_matching's, the parameters' own: float32 here, as rebasin)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dtype = None if args.dtype == "default" else getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    try:
        import rebasin  # noqa: F401

        have_rebasin = True
    except ImportError:
        have_rebasin = False
    rows = {}
    for key in MODELS:
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so that load on a shared machine hits both alike
            ours.append(time_ours(key, dtype))
            if have_rebasin:
                theirs.append(time_rebasin(key))
        row = {"modescape": summarise(ours)}
        if have_rebasin:
            row["rebasin"] = summarise(theirs)
            row["ratio_match"] = row["rebasin"]["match_s"] / row["modescape"]["match_s"]
            row["ratio_total"] = (row["rebasin"]["match_s"] + row["rebasin"]["spec_s"]) / (
                row["modescape"]["match_s"] + row["modescape"]["spec_s"]
            )
        rows[key] = row
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"threads={args.threads} repeats={args.repeats} torch {torch.__version__} ours in {args.dtype}")
    for key, row in rows.items():
        ours = row["modescape"]
        line = (
            f"{key:12s} modescape: spec {ours['spec_s']:.3f}s match {ours['match_s']:.3f}s "
            f"({ours['passes_all']} passes, objective {ours['objective']:.2f}, "
            f"max |f(B) - f(permuted B)| {ours['function_diff']:.1e})"
        )
        print(line)
        if "rebasin" in row:
            rb = row["rebasin"]
            print(
                f"{'':12s} rebasin  : spec {rb['spec_s']:.3f}s match {rb['match_s']:.3f}s "
                f"({rb['passes_all']} passes, objective {rb['objective']:.2f}, "
                f"max |f(B) - f(permuted B)| {rb['function_diff']:.1e})"
            )
            print(
                f"{'':12s} ratio rebasin/modescape: match {row['ratio_match']:.2f}x, "
                f"spec+match {row['ratio_total']:.2f}x"
            )


if __name__ == "__main__":
    main()

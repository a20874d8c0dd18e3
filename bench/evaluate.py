"""Benchmark the Evaluator: K points over the full digits data, loop vs vmap vs auto, three model sizes.

    python bench/evaluate.py [--points 64] [--device cpu] [--repeats 3] [--json-out PATH]

Every configuration evaluates the same K random points (train + test loss and accuracy, BN policy as
given) and reports seconds per point and the vmap/loop speed ratio; `auto` includes its one-off timing
of both paths. Run it on an idle machine: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

os.environ.setdefault("MODESCAPE_PROGRESS", "0")

from modescape import space as sp  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402

MODELS = {
    "mlp 64-32-10": ("mlp", dict(depth=1, width=32)),
    "mlp 64-256-256-10": ("mlp", dict(depth=2, width=256)),
    "cnn w16 + BN": ("cnn", dict(width=16, norm="bn")),
}


def points_around(model, k: int, seed: int = 0):
    ws = sp.WeightSpace(model)
    p0 = ws.point(model)
    g = torch.Generator().manual_seed(seed)
    return sp.stack([{n: v + 0.01 * torch.randn(v.shape, generator=g) for n, v in p0.items()} for _ in range(k)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bn", default="running")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    data = load_dataset("digits")
    full = {"train": data.train, "test": data.test}
    results = []
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
        f"device {args.device}, K={args.points}, bn={args.bn}"
    )
    print(f"{'model':22s} {'loop s/pt':>10s} {'vmap s/pt':>10s} {'auto s/pt':>10s} {'vmap/loop':>10s} auto chose")
    for label, (name, kw) in MODELS.items():
        torch.manual_seed(0)
        model = build_model(name, data.input_shape, data.num_classes, **kw)
        pts = points_around(model, args.points)
        row = {"model": label}
        for mode in ("loop", "vmap", "auto"):
            best = float("inf")
            for _ in range(args.repeats):
                ev = Evaluator(model, full, bn=args.bn, device=args.device, mode=mode, batch_size=2048)
                t0 = time.perf_counter()
                ev(pts)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            row[mode] = best / args.points
            if mode == "auto":
                row["auto_chose"] = ev.mode_chosen
        row["vmap_speedup"] = row["loop"] / row["vmap"]
        results.append(row)
        print(
            f"{label:22s} {row['loop']:10.5f} {row['vmap']:10.5f} {row['auto']:10.5f}"
            f" {row['vmap_speedup']:10.2f} {row['auto_chose']}"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"device": args.device, "points": args.points, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

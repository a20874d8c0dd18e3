"""Benchmark: persistence, merge tree and basin count of a landscape, modescape next to gudhi and landscaper.

Three tools on the same arrays:

1. **modescape** (`modescape.topology.persistence` + ``merge_tree()`` + ``basins``): union-find over the
   descent basins of the grid graph, axis (4) and full (8) neighbourhoods;
2. **gudhi** 3.x cubical complexes (persistence pairs only, no merge tree): ``vertices=`` is the lower-star
   filtration of the 4-neighbour grid graph, ``top_dimensional_cells=`` the 8-neighbour one; the pairs
   must equal modescape's exactly (checked, printed);
3. **landscaper 1.3.1** (Geniesse, Chen et al.; through topopy / nglpy): ``get_sublevel_tree()`` (the merge
   tree) and ``get_ms_complex()`` (persistence of the minima), basins from the Morse-Smale merge
   sequence. Its graph is an empty-region (Gabriel, beta = 1) graph of the grid points built by brute
   force, so its cost grows about cubically with the number of points; it runs up to ``--peer-max``.

Surfaces, each sampled on n x n points of [-1, 1]^2 (the same function at every n):
``wells`` (a bowl with six Gaussian wells: smooth, a handful of basins), ``rough`` (the wells plus a random
Fourier series up to frequency 12: many shallow minima), ``noisy`` (rough plus per-cell noise of 1e-3, like
an evaluation on minibatches: the worst case, minima almost everywhere) and, with ``--digits N``, the train
loss of digits MLPs on an N x N plane through three independently trained ones (a real landscape with
separate basins; ``--digits-plane random``: a filter-normalised plane around one). Basins are counted at
``--threshold`` (default 1% of each surface's range), the same number for every tool.

landscaper pins numpy < 2 and networkx < 3 (through topopy 1.0.4) and imports torch without declaring it,
so it lives in its own environment: ``python -m venv .venv-landscaper && .venv-landscaper/bin/pip install
landscaper==1.3.1 torch`` and pass ``--peer-python .venv-landscaper/bin/python`` (or set
LANDSCAPER_PYTHON); it runs in a subprocess on the same arrays (saved to a temporary .npz) and times
itself there. Without it the column is skipped with the reason printed.

    python bench/topology.py [--sizes 21,41,61,201,501] [--peer-max 41] [--peer-python PATH] [--digits 41]
                             [--figures docs/figures] [--json-out topology.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MODESCAPE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modescape.topology import persistence  # noqa: E402

WELLS = [
    (-0.55, -0.45, 1.0),
    (0.5, 0.55, 0.85),
    (0.45, -0.5, 0.7),
    (-0.5, 0.5, 0.6),
    (0.0, 0.05, 0.5),
    (-0.05, -0.75, 0.4),
]


def surface(kind: str, n: int) -> np.ndarray:
    """The named surface on an n x n grid of [-1, 1]^2, indexed [x, y]."""
    x = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(x, x, indexing="ij")
    z = 0.3 * (X**2 + Y**2)
    for cx, cy, depth in WELLS:
        z -= depth * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * 0.15**2))
    if kind in ("rough", "noisy"):
        rng = np.random.default_rng(1)
        for _ in range(40):
            fx, fy = rng.integers(1, 13, size=2)
            a, p, q = rng.normal() * 0.012, rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
            z += a * np.sin(np.pi * fx * X + p) * np.sin(np.pi * fy * Y + q)
    if kind == "noisy":
        z += 1e-3 * np.random.default_rng(n).normal(size=z.shape)
    return z


def _trained_mlp(data, seed: int):
    import torch
    import torch.nn.functional as F

    from modescape.zoo import build_model

    torch.manual_seed(seed)
    model = build_model("mlp", data.input_shape, data.num_classes, depth=2, width=64)
    X, y = data.train
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(8):
        perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(1000 * seed + epoch))
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def digits_surface(n: int, plane: str = "through"):
    """Train loss of digits MLPs (64-64-64-10, 8 epochs of SGD) on an n x n grid: the plane through three
    independently trained ones (seeds 0, 1, 2: separate basins) or a filter-normalised random plane around
    one (``plane="random"``: one basin)."""
    from modescape import space as sp
    from modescape.directions import random_directions
    from modescape.evaluate import Evaluator
    from modescape.families import Plane, PlaneThrough
    from modescape.grid import auto_range
    from modescape.landscape import Grid, sweep
    from modescape.zoo import load_dataset

    data = load_dataset("digits")
    if plane == "through":
        models = [_trained_mlp(data, s) for s in (0, 1, 2)]
        family = PlaneThrough(*(sp.WeightSpace(m).point(m) for m in models))
        mc = family.model_coords.numpy()
        grid = Grid({"x": auto_range(mc[:, 0], n), "y": auto_range(mc[:, 1], n)})
    else:
        models = [_trained_mlp(data, 0)]
        dx, dy = random_directions(models[0], 2, normalization="filter", ignore="biasbn", seed=0, orthogonal=True)
        family = Plane(sp.WeightSpace(models[0]).point(models[0]), dx, dy)
        grid = Grid.parse(x=f"-1:1:{n}", y=f"-1:1:{n}")
    ev = Evaluator(models[0], {"train": data.train}, bn="running", progress=False)
    return sweep(family, ev, grid)


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def ours(z: np.ndarray, nb: int, t_abs: float):
    topo = persistence(z, neighbourhood=nb, threshold=t_abs)
    tree = topo.merge_tree()
    return topo, tree, topo.basins


def gudhi_pairs(z: np.ndarray, nb: int) -> list[tuple[float, float]]:
    import gudhi

    cc = gudhi.CubicalComplex(vertices=z) if nb == 4 else gudhi.CubicalComplex(top_dimensional_cells=z)
    return sorted((float(b), float(d)) for dim, (b, d) in cc.persistence() if dim == 0)


# the landscaper side, run by --peer-python on the saved arrays; prints one JSON line
PEER = r"""
import json, sys, time
import numpy as np
from landscaper import LossLandscape
arrays = np.load(sys.argv[1])
thresholds = json.loads(sys.argv[2])
out = {}
for key in arrays.files:
    z = arrays[key]
    x = np.linspace(-1, 1, z.shape[0]); y = np.linspace(-1, 1, z.shape[1])
    t0 = time.perf_counter()
    ll = LossLandscape(z, [x, y])
    tree = ll.get_sublevel_tree()
    t1 = time.perf_counter()
    msc = ll.get_ms_complex()
    seq = msc.merge_sequence
    pers = [seq[m][0] if seq[m][1] != m else float("inf") for m in msc.min_indices]
    basins = sum(p > thresholds[key] for p in pers)
    t2 = time.perf_counter()
    out[key] = {"tree_s": t1 - t0, "msc_s": t2 - t1, "total_s": t2 - t0, "minima": len(pers), "basins": basins}
print(json.dumps(out))
"""


def find_peer(arg: str | None) -> tuple[str | None, str]:
    """(python that imports landscaper, or None, and the reason when None)."""
    cands = (
        [arg]
        if arg
        else [
            os.environ.get("LANDSCAPER_PYTHON"),
            sys.executable,
            str(Path(__file__).resolve().parents[1] / ".venv-landscaper/bin/python"),
        ]
    )
    tried = []
    for py in cands:
        if not py or (py != sys.executable and not shutil.which(py) and not Path(py).exists()):
            continue
        r = subprocess.run(
            [py, "-c", "import landscaper, importlib.metadata as m; print(m.version('landscaper'))"],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            return py, r.stdout.strip()
        tried.append(f"{py}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return None, (
        "landscaper is not importable (" + "; ".join(tried) + "); install it in its own venv (it pins "
        "numpy<2): python -m venv .venv-landscaper && .venv-landscaper/bin/pip install landscaper==1.3.1 "
        "torch, then pass --peer-python .venv-landscaper/bin/python"
    )


def run_peer(py: str, arrays: dict[str, np.ndarray], thresholds: dict[str, float], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arrays.npz"
        np.savez(path, **arrays)
        r = subprocess.run(
            [py, "-c", PEER, str(path), json.dumps(thresholds)], capture_output=True, text=True, timeout=timeout
        )
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="21,41,61,201,501", help="grid sizes n (n x n)")
    p.add_argument("--surfaces", default="wells,rough,noisy")
    p.add_argument("--digits", type=int, default=41, help="also a digits-MLP loss surface of N x N (0: no)")
    p.add_argument(
        "--digits-plane",
        default="through",
        choices=("through", "random"),
        help="the plane through three trained MLPs, or a random plane around one",
    )
    p.add_argument("--threshold", default="1%", help="basin threshold: loss units or P%% of each range")
    p.add_argument("--repeat", type=int, default=3, help="best of R runs for modescape and gudhi")
    p.add_argument("--peer-max", type=int, default=41, help="run landscaper up to this n (it grows ~ n^6)")
    p.add_argument("--peer-python", default=None, help="a python that imports landscaper 1.3.1")
    p.add_argument("--peer-timeout", type=float, default=1800.0)
    p.add_argument("--figures", default=None, help="write the docs figures (digits and rough surfaces) here")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    from modescape.topology import resolve_threshold

    cases: list[tuple[str, int, np.ndarray]] = []
    for kind in args.surfaces.split(","):
        for n in map(int, args.sizes.split(",")):
            cases.append((kind, n, surface(kind, n)))
    digits_ds = None
    if args.digits:
        t = time.perf_counter()
        digits_ds = digits_surface(args.digits, args.digits_plane)
        print(
            f"digits MLP surface ({args.digits_plane} plane) {args.digits}x{args.digits}: trained and swept in "
            f"{time.perf_counter() - t:.1f} s"
        )
        cases.append(("digits", args.digits, digits_ds["train_loss"].values))

    peer, why = find_peer(args.peer_python)
    print(f"landscaper: {why if peer is None else f'{why} via {peer}'}")
    rows = []
    for kind, n, z in cases:
        t_abs = resolve_threshold(args.threshold, float(z.max() - z.min()))
        row = {"surface": kind, "n": n, "threshold": t_abs}
        for nb in (4, 8):
            s, (topo, tree, basins) = best_of(lambda z=z, nb=nb, t_abs=t_abs: ours(z, nb, t_abs), args.repeat)
            row[f"ours{nb}_s"], row[f"ours{nb}_minima"], row[f"ours{nb}_basins"] = s, topo.n_minima, basins
            g, pairs = best_of(lambda z=z, nb=nb: gudhi_pairs(z, nb), args.repeat)
            mine = sorted((float(b), float(d)) for b, d in topo.pairs())
            row[f"gudhi{nb}_s"] = g
            row[f"gudhi{nb}_basins"] = sum((d - b) > t_abs for b, d in pairs)
            row[f"pairs{nb}_equal"] = mine == pairs
        rows.append(row)

    if peer is not None:
        todo = {f"{r['surface']}_{r['n']}": z for r, (_, n, z) in zip(rows, cases, strict=True) if n <= args.peer_max}
        thr = {f"{r['surface']}_{r['n']}": r["threshold"] for r in rows}
        for key in sorted(todo, key=lambda k: todo[k].size):  # one subprocess per array: a timeout loses one
            try:
                res = run_peer(peer, {key: todo[key]}, {key: thr[key]}, args.peer_timeout)[key]
            except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                print(f"landscaper failed on {key}: {e}")
                continue
            for r in rows:
                if f"{r['surface']}_{r['n']}" == key:
                    r.update(
                        {
                            "landscaper_s": res["total_s"],
                            "landscaper_tree_s": res["tree_s"],
                            "landscaper_msc_s": res["msc_s"],
                            "landscaper_minima": res["minima"],
                            "landscaper_basins": res["basins"],
                        }
                    )

    head = (
        f"{'surface':8} {'n':>4} | {'ours 4':>8} {'ours 8':>8} {'gudhi 4':>8} {'gudhi 8':>8} {'landscaper':>10} "
        f"{'ratio':>7} | {'minima 4/8':>11} {'basins: ours4 ours8 gudhi4 gudhi8 lsc':>38} | pairs=gudhi"
    )
    print(
        f"\ntimes in seconds (best of {args.repeat}; landscaper once); ratio = landscaper / ours 4; basins: "
        f"persistence > threshold ({args.threshold} of the range)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        lsc = r.get("landscaper_s")
        ratio = f"{lsc / r['ours4_s']:7.0f}" if lsc else f"{'-':>7}"
        print(
            f"{r['surface']:8} {r['n']:4d} | {r['ours4_s']:8.4f} {r['ours8_s']:8.4f} {r['gudhi4_s']:8.4f} "
            f"{r['gudhi8_s']:8.4f} {(f'{lsc:10.2f}' if lsc else 'skipped'.rjust(10))} {ratio} | "
            f"{r['ours4_minima']:5d}/{r['ours8_minima']:<5d} "
            f"{r['ours4_basins']:>14d} {r['ours8_basins']:>5d} {r['gudhi4_basins']:>6d} {r['gudhi8_basins']:>6d} "
            f"{str(r.get('landscaper_basins', '-')):>5} | "
            f"{'yes' if r['pairs4_equal'] and r['pairs8_equal'] else 'NO'}"
        )
    if peer is None:
        print(f"landscaper skipped: {why}")
    elif any(r["n"] > args.peer_max for r in rows):
        print(f"landscaper not run above n = {args.peer_max} (--peer-max): about cubic in the number of points")
    agree = [r for r in rows if "landscaper_basins" in r]
    if agree:
        same4 = sum(r["landscaper_basins"] == r["ours4_basins"] for r in agree)
        same8 = sum(r["landscaper_basins"] == r["ours8_basins"] for r in agree)
        print(
            f"basin counts equal to landscaper's: {same4}/{len(agree)} (4-neighbourhood), "
            f"{same8}/{len(agree)} (8-neighbourhood)"
        )
    print(f"pairs identical to gudhi's: {sum(r['pairs4_equal'] and r['pairs8_equal'] for r in rows)}/{len(rows)}")
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"machine: {meta}")

    if args.figures:
        from modescape.plots.topology import plot_topology_panel

        figs = []
        if digits_ds is not None:
            what = (
                "the plane through three digits MLPs (seeds 0, 1, 2)"
                if args.digits_plane == "through"
                else "a filter-normalised random plane around a digits MLP"
            )
            figs.append(
                (
                    persistence(digits_ds, "train_loss"),
                    "topology_digits.png",
                    f"train loss on {what}, {args.digits}x{args.digits}",
                )
            )
        n = 201
        x = np.linspace(-1, 1, n)
        figs.append(
            (
                persistence(surface("rough", n), coords={"x": x, "y": x}),
                "topology_rough.png",
                f"the 'rough' surface of bench/topology.py ({n}x{n}): six wells and a random Fourier series",
            )
        )
        for topo, name, title in figs:
            print(f"figure: {plot_topology_panel(topo, Path(args.figures) / name, title=title)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))


if __name__ == "__main__":
    main()

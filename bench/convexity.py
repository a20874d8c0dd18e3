"""Benchmark: Li et al.'s convexity map (extreme Hessian eigenvalues over a plane), two ways.

1. **modescape**: `landscape.convexity` (Lanczos on both ends at once; the gradient's graph kept across
   products; one batch when the data fits).
2. **reference way**, written as tomgoldstein/loss-landscape's ``hess_vec_prod.min_max_hessian_eigs``
   works: per grid point the weights are copied into the module, products by double backward over a
   ``DataLoader`` (batch 128), scipy's ``eigsh(k=1, tol=1e-2)`` for the largest-magnitude eigenvalue,
   then again on ``H - 0.51 lambda I`` for the other end.

Same model (a digits MLP 64-64-64-10 trained for 8 epochs), same data (all 1,437 training images), same
parameters (the weights, tensors with dim > 1, as the reference), same grid of a filter-normalised
plane. Accuracy: both are compared with a tight Lanczos run (tol 1e-8) at every point. The reference's
values are off by design: its products accumulate the per-batch Hessians of batch-mean losses without
dividing by the number of batches (about 12 x H here), its "max" is the largest magnitude, and its
"min" is only found when lambda_min < 0.02 lambda_max.

    python bench/convexity.py [--grid 5] [--json-out convexity.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("MODESCAPE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modescape import curvature as cv  # noqa: E402
from modescape import space as sp  # noqa: E402
from modescape.directions import random_directions  # noqa: E402
from modescape.evaluate import Evaluator  # noqa: E402
from modescape.families import Plane  # noqa: E402
from modescape.landscape import Grid, convexity  # noqa: E402
from modescape.zoo import build_model, load_dataset  # noqa: E402


def trained_mlp():
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
    return model.eval(), X, y


def reference_min_max(net, loader):
    """The reference's min_max_hessian_eigs: eigsh (largest magnitude, tol 1e-2), then a shifted eigsh."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in net.parameters() if p.dim() > 1]
    n = sum(p.numel() for p in params)
    count = [0]

    def hvp(vec):
        count[0] += 1
        vs, o = [], 0
        for p in params:
            vs.append(torch.from_numpy(vec[o : o + p.numel()]).view_as(p).float())
            o += p.numel()
        net.zero_grad()
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            g = torch.autograd.grad(loss, params, create_graph=True)
            sum((gi * v).sum() for gi, v in zip(g, vs, strict=True)).backward()
        return np.concatenate([p.grad.detach().numpy().ravel() for p in params]).astype(np.float64)

    top = eigsh(LinearOperator((n, n), matvec=hvp), k=1, tol=1e-2)[0][0]
    shift = 0.51 * top
    low = eigsh(LinearOperator((n, n), matvec=lambda v: hvp(v) - shift * v), k=1, tol=1e-2)[0][0] + shift
    if top <= 0 and low > 0:
        top, low = low, top
    return float(top), float(low), count[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=5, help="points per axis of the [-0.5, 0.5]^2 grid")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    model, X, y = trained_mlp()
    origin = sp.WeightSpace(model).point(model)
    dx, dy = random_directions(model, 2, seed=0)
    plane = Plane(origin, dx, dy)
    r = f"-0.5:0.5:{a.grid}"
    grid = Grid.parse(x=r, y=r)
    pts = grid.points()
    info = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "grid": [a.grid, a.grid],
        "samples": int(X.shape[0]),
        "params": "weights (dim > 1)",
    }
    print(" ".join(f"{k}={v}" for k, v in info.items()))

    # exact values (tight Lanczos) at every point, not timed
    ev = Evaluator(model, {"train": (X, y)}, batch_size=128, progress=False)
    exact = np.array(
        [
            cv.extreme_eigenvalues(
                ev,
                point={k: v.detach() for k, v in plane(torch.as_tensor(c)).items()},
                params="weights",
                tol=1e-8,
                max_iter=400,
            )[:2]
            for c in pts
        ]
    )

    out = {"info": info}
    for tol in (1e-3, 1e-2):
        ev = Evaluator(model, {"train": (X, y)}, batch_size=128, progress=False)  # fresh: its one-off choices timed
        t0 = time.perf_counter()
        ds = convexity(plane, ev, grid, tol=tol, params="weights", progress=False)
        secs = time.perf_counter() - t0
        got = np.stack([ds.lambda_min.values.reshape(-1), ds.lambda_max.values.reshape(-1)], 1)
        out[f"modescape_tol{tol:g}"] = {
            "seconds": secs,
            "hvp": int(ds.n_hvp.sum()),
            "max_rel_err_max": float(np.max(np.abs(got[:, 1] - exact[:, 1]) / np.abs(exact[:, 1]))),
            "max_err_min_over_max": float(np.max(np.abs(got[:, 0] - exact[:, 0]) / np.abs(exact[:, 1]))),
        }
    net = copy.deepcopy(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=128, shuffle=False)
    names = dict(net.named_parameters())
    res, n_hvp = [], 0
    t0 = time.perf_counter()
    for c in pts:
        with torch.no_grad():
            for k, p in names.items():
                p.data = origin[k] + float(c[0]) * dx[k] + float(c[1]) * dy[k]
        hi, lo, n = reference_min_max(net, loader)
        res.append((lo, hi))
        n_hvp += n
    secs = time.perf_counter() - t0
    got = np.array(res)
    out["reference"] = {
        "seconds": secs,
        "hvp": n_hvp,
        "max_rel_err_max": float(np.max(np.abs(got[:, 1] - exact[:, 1]) / np.abs(exact[:, 1]))),
        "max_err_min_over_max": float(np.max(np.abs(got[:, 0] - exact[:, 0]) / np.abs(exact[:, 1]))),
    }
    print(
        f"{'':22s} {'seconds':>8s} {'HVPs':>6s} {'max rel err lambda_max':>24s}"
        f" {'max err lambda_min / lambda_max':>32s}"
    )
    for k in ("modescape_tol0.001", "modescape_tol0.01", "reference"):
        o = out[k]
        print(
            f"{k:22s} {o['seconds']:8.2f} {o['hvp']:6d} {o['max_rel_err_max']:24.1e} {o['max_err_min_over_max']:32.1e}"
        )
    for k in ("modescape_tol0.001", "modescape_tol0.01"):
        print(f"reference / {k}: {out['reference']['seconds'] / out[k]['seconds']:.1f}x")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

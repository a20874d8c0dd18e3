"""Mode connectivity: train low-loss curves between minima (Garipov et al. 2018; Draxler et al. 2018).

Two independently trained networks are joined by simple curves of nearly constant low loss, although the
straight segment between them crosses a high barrier. `train_curve` trains such a curve on *any*
``nn.Module``: a `Bezier` or `PolyChain` family maps t to a point, the point runs through
``Evaluator.forward`` (``torch.func.functional_call``), so no curve version of each layer is written by
hand. Each minibatch samples t ~ U[0, 1] and minimises loss(w(t)) + 0.5 wd ||w(t)||^2 with SGD +
momentum and the reference schedule (full LR for 50% of the epochs, linear decay to 1% at 90%, then 1%).
BatchNorm uses the batch's statistics in training, as the reference does. Checkpoints are safetensors
(the bends, the endpoints' buffers, momentum), resumable, and under ``torchrun`` the minibatch is split
across ranks with gradients all-reduced. `evaluate_plane` sweeps the plane through a 3-bend curve's
bends (Garipov et al., Figure 1).

Evaluating the trained curve (and the segment) is `modescape.paths.evaluate_path`; ensembles from one
run are `modescape.ensembles`.

```python
>>> run = train_curve(model, a, b, split, kind="bezier", bends=3, epochs=20)
>>> ev = Evaluator(model, {"train": split.train, "test": split.test}, metrics=("loss", "error"), bn="recompute")
>>> curve, line = evaluate_path(run.family, ev), evaluate_path((a, b), ev)
>>> curve.summary()["test_error"]["max"], line.barriers()["test_error"]["barrier_mean"]
```
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed, io
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator
from .families.curves import Curve, curve_class
from .point_sgd import sgd_epoch
from .progress import bar
from .zoo import train_test

CURVE_FORMAT = "modescape-curve/1"


# -- learning-rate schedules ------------------------------------------------------------------------


def reference_schedule(lr: float, epoch: int, epochs: int) -> float:
    """The curve-training schedule of the reference (0-based ``epoch``): with a = (epoch + 1) / epochs,
    lr for a <= 0.5, then linear decay to 0.01 lr at a = 0.9, then 0.01 lr."""
    a = (epoch + 1) / epochs
    if a <= 0.5:
        factor = 1.0
    elif a <= 0.9:
        factor = 1.0 - (a - 0.5) / 0.4 * 0.99
    else:
        factor = 0.01
    return factor * lr


def _save_state(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Rank 0 writes ``tensors`` and JSON ``meta`` into one safetensors file, atomically (io)."""
    if distributed.rank_world()[0] == 0:
        io.save_tensors(path, tensors, {"format": CURVE_FORMAT, "meta": io.json_dumps(meta)})


def _read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise UserError(f"{path} is not a readable curve checkpoint ({e}): delete it or pick another") from None
    if header.get("format") != CURVE_FORMAT:
        raise UserError(f"{path} is not a modescape curve (format {header.get('format')!r})")
    try:
        meta = json.loads(header.get("meta", ""))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{path} has no readable settings in its header: delete it or pick another curve file")
    return meta


# -- curves: save, load, train ------------------------------------------------------------------------


def save_curve(
    family: Curve,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a curve (its bends, the layout, the endpoints' buffers, optional momentum and ``meta``) as
    safetensors."""
    path = Path(path)
    tensors = {f"bend_{j}": family.anchor(j) for j in range(family.n_bends)}
    if family.carries_buffers:
        for end, j in (("a", 0), ("b", 1)):
            tensors.update({f"buffers_{end}/{n}": v for n, v in family.buffer_anchor(j).items()})
    if optimizer is not None:
        for j in range(1, family.n_bends - 1):
            st = optimizer.state.get(family.anchor(j), {})
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                tensors[f"momentum_{j}"] = st["momentum_buffer"]
    layout = {"names": list(family.layout.names), "shapes": [list(s) for s in family.layout.shapes]}
    _save_state(path, tensors, {**dict(meta or {}), "kind": family.kind, "bends": family.n_bends, "layout": layout})
    return path


def load_curve(path: str | Path) -> tuple[Curve, dict[str, Any]]:
    """Read a curve written by `save_curve` / `train_curve`: ``(family, meta)``."""
    path = Path(path)
    if path.is_dir():
        path = path / "curve.safetensors"
    if not path.exists():
        raise UserError(f"curve checkpoint not found: {path}")
    meta = _read_meta(path)
    tensors = io.load_tensors(path)
    names, shapes = meta["layout"]["names"], [tuple(s) for s in meta["layout"]["shapes"]]
    layout = sp.Layout(tuple(names), tuple(shapes))
    bends = [layout.unflatten(tensors[f"bend_{j}"]) for j in range(int(meta["bends"]))]
    ends = [{k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"buffers_{e}/")} for e in "ab"]
    family = curve_class(meta["kind"])(bends, buffers=ends if ends[0] and ends[1] else None)
    # the optimizer's momentum saved with the curve, as a plain attribute (torch types them Tensor | Module)
    family.momentum = {j: tensors[f"momentum_{j}"] for j in range(1, family.n_bends - 1) if f"momentum_{j}" in tensors}  # type: ignore[assignment]
    return family, meta


@dataclass
class CurveRun:
    """The result of `train_curve`: the trained curve, per-epoch history, the checkpoint path."""

    family: Curve
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def constant_lr(value: float) -> Callable[[int, int], float]:
    """A learning-rate function ``(iteration, iterations) -> value`` for one epoch of `sgd_epoch`."""
    return lambda it, n: value


def train_curve(
    model: nn.Module,
    a: Any,
    b: Any,
    data: Any,
    kind: str = "bezier",
    bends: int = 3,
    epochs: int = 50,
    lr: float = 0.015,
    wd: float = 5e-4,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    init: Sequence[Any] | None = None,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    device=None,
    dtype=None,
    loss=None,
    progress: bool | None = None,
) -> CurveRun:
    """Train a curve from ``a`` to ``b`` (modules of ``model``'s architecture, or their states / points)
    on ``data``; the curve carries the endpoints' buffers when both have them.

    kind: ``"bezier"`` | ``"polychain"``; bends: n >= 3 (n - 2 trainable inner bends), initialised on
    the segment, or at the points ``init`` (n - 2 points or modules). Each minibatch samples
    t ~ U[0, 1] and minimises loss(w(t)) + 0.5 wd ||w(t)||^2 with SGD(momentum), learning rate by
    `reference_schedule`. ``checkpoint`` (a .safetensors path): written after every epoch; when it
    exists with the same settings the run resumes after its last epoch, with the same result as an
    uninterrupted run; ``stop_after`` ends this call after that epoch (to split a long run).
    ``model`` is not modified.
    """
    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise UserError(f"lr must be positive, got {lr}")
    cls = curve_class(kind)
    space = sp.WeightSpace(model)
    (pa, ba), (pb, bb) = space.split_state(a, "endpoint A"), space.split_state(b, "endpoint B")
    buffers = [ba, bb] if ba and bb else None
    if init is not None:
        inner = [space.split_state(p, f"initial bend {j + 1}")[0] for j, p in enumerate(init)]
        family = cls.through(pa, pb, inner, buffers)
    else:
        family = cls.on_segment(pa, pb, bends, buffers)
    (xtr, ytr), _ = train_test(data)
    ev = Evaluator(model, (xtr[:2], ytr[:2]), bn="train", device=device, dtype=dtype, loss=loss, mode="loop")
    family = family.to(device=ev.device, dtype=ev.dtype)
    params = [p for p in family.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=0.0)
    config = {
        "kind": family.kind,
        "bends": family.n_bends,
        "epochs": epochs,
        "lr": lr,
        "wd": wd,
        "momentum": momentum,
        "batch_size": batch_size,
        "seed": seed,
    }

    start, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        saved, meta = load_curve(ckpt)
        if meta.get("config") != config:
            diff = [k for k, v in config.items() if meta.get("config", {}).get(k) != v]
            raise UserError(
                f"{ckpt} holds a curve trained with other settings ({', '.join(diff)}): "
                f"use the same settings to resume, or another checkpoint path"
            )
        with torch.no_grad():
            for j in range(family.n_bends):
                family.anchor(j).copy_(saved.anchor(j))
        for j, buf in getattr(saved, "momentum", {}).items():
            opt.state[family.anchor(j)]["momentum_buffer"] = buf.to(ev.device, ev.dtype).clone()
        start, history = int(meta["epoch"]), list(meta.get("history", []))

    class Step:  # t ~ U[0, 1] per minibatch, w(t) written into the evaluator's flat binding (`sgd_epoch`)
        def write(self, gen: torch.Generator, out: Tensor) -> list[float]:
            return family.write_flat(torch.rand((), generator=gen, dtype=torch.float64), out)

        def pull(self, coefs: list[float], grad: Tensor) -> None:
            family.pull_flat(coefs, grad, steal=True)  # sgd_epoch zeroes grad only after the step

    iters = math.ceil(xtr.shape[0] / batch_size)
    stop = epochs if stop_after is None else max(start, min(epochs, int(stop_after)))
    with bar("training curve", (stop - start) * iters, enabled=progress) as advance:
        for epoch in range(start, stop):
            t0 = time.perf_counter()
            lr_e = reference_schedule(lr, epoch, epochs)
            stats = sgd_epoch(
                ev,
                params,
                opt,
                None,
                xtr,
                ytr,
                epoch,
                seed,
                batch_size,
                wd,
                constant_lr(lr_e),
                advance,
                flat_step=Step(),
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": lr_e,
                    "train_loss": stats["loss"],
                    "train_error": stats["error"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            if ckpt is not None:
                save_curve(family, ckpt, {"config": config, "epoch": epoch + 1, "history": history}, opt)
    return CurveRun(family, history, ckpt, config)


# -- the plane through a curve's bends -------------------------------------------------------------


@dataclass
class PlaneResult:
    """Test metrics on the plane through a 3-bend curve's bends (Garipov et al. 2018, Figure 1).

    ``x``, ``y``: grid coordinates [nx], [ny] (weight-space units, orthonormal basis: origin the
    first endpoint, x towards the second endpoint); ``values``: {metric: [nx, ny]};
    ``bends`` [3, 2] and ``curve`` [T, 2]: the (x, y) of the bends and of the curve (exactly in the
    plane: a 3-bend curve is a combination of its bends).
    """

    x: Tensor
    y: Tensor
    values: dict[str, Tensor]
    bends: Tensor
    curve: Tensor
    bn: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "values": {k: v.tolist() for k, v in self.values.items()},
            "bends": self.bends.tolist(),
            "curve": self.curve.tolist(),
            "bn": self.bn,
        }

    def to_xarray(self):
        import xarray as xr

        return xr.Dataset(
            {k: (("x", "y"), v.numpy()) for k, v in self.values.items()},
            coords={"x": self.x.numpy(), "y": self.y.numpy()},
            attrs={
                "bn": self.bn,
                "models": {"labels": ["w0", "w1", "w2"], "coords": self.bends.tolist()},
                "path": self.curve.tolist(),
            },
        )


def evaluate_plane(
    family: Curve,
    evaluator: Evaluator,
    n_points: int = 21,
    margin: float = 0.25,
    curve_points: int = 61,
    progress: bool | None = None,
) -> PlaneResult:
    """Sweep the plane through the three bends of ``family`` on an ``n_points`` x ``n_points`` grid that
    covers the bends with ``margin`` on each side (`landscape.sweep`). A curve carrying its endpoints'
    buffers gives the plane the endpoints' and their mean (the inner bend's), so that every point of the
    curve gets ``(1 - t) b_0 + t b_1`` as on the curve itself."""
    from .families.lines import PlaneThrough
    from .landscape import auto_range, sweep

    if family.n_bends != 3:
        raise UserError(f"the plane through a curve's bends needs exactly 3 bends; this curve has {family.n_bends}")
    points = n_points
    w0, w1, w2 = family.bends()
    buffers = None
    if family.carries_buffers:
        mid_buffers = family.buffers_at(0.5)
        assert mid_buffers is not None  # a family that carries buffers has them at every t
        buffers = [family.buffer_anchor(0), family.buffer_anchor(1), mid_buffers]
    plane = PlaneThrough(w0, w2, w1, buffers=buffers)
    bends = plane.model_coords[[0, 2, 1]]  # the (x, y) of w0, w1, w2
    with torch.no_grad():
        ts = torch.linspace(0.0, 1.0, curve_points, dtype=torch.float64)
        coef = family.coefficients(ts[:, None])  # [T, 3]: w(t) = sum_j coef_j w_j, so its (x, y) too
    curve = coef @ bends
    xs = auto_range(bends[:, 0].numpy(), points, margin)
    ys = auto_range(bends[:, 1].numpy(), points, margin)
    # the plot is drawn to scale: give y at least 40% of x's extent so that a slight bend looks slight
    half = 0.2 * float(xs[-1] - xs[0])
    if float(ys[-1] - ys[0]) < 2 * half:
        mid = 0.5 * float(ys[0] + ys[-1])
        ys = np.linspace(mid - half, mid + half, points)
    ds = sweep(plane, evaluator, {"x": xs, "y": ys}, progress=progress)
    values = {n: torch.from_numpy(ds[n].values.copy()) for n in evaluator.names}
    return PlaneResult(torch.from_numpy(xs), torch.from_numpy(ys), values, bends, curve, evaluator.bn)


__all__ = [
    "CURVE_FORMAT",
    "CurveRun",
    "PlaneResult",
    "evaluate_plane",
    "load_curve",
    "reference_schedule",
    "save_curve",
    "train_curve",
]

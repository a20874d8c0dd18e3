"""Mode connectivity: low-loss curves between minima, evaluation along paths, fast geometric ensembling.

Garipov et al. (2018) and Draxler et al. (2018) found that two independently trained networks are
joined by simple curves of nearly constant low loss, although the straight segment between them
crosses a high barrier. This module

* trains such curves (`train_curve`) on *any* ``nn.Module``: a `Bezier` or `PolyChain` family maps
  t to a point, the point runs through ``Evaluator.forward`` (``torch.func.functional_call``), so
  no curve version of each layer is written by hand. Each minibatch samples t ~ U[0, 1] and
  minimises loss(w(t)) + 0.5 wd ||w(t)||^2 with SGD + momentum and the reference schedule
  (full LR for 50% of the epochs, linear decay to 1% at 90%, then 1%). BatchNorm uses the batch's
  statistics in training, as the reference does. Checkpoints are safetensors, resumable, and
  under ``torchrun`` the minibatch is split across ranks with gradients all-reduced;
* evaluates a path (`evaluate_path`) at T values of t with BatchNorm statistics recomputed at every
  point (the Evaluator's ``recompute`` policy, vectorised), and summarises it: ends, min, max, mean,
  arc-length integral, length and the two named barriers of `modescape.barrier`;
* runs fast geometric ensembling (`fge`, Garipov et al. Sec. 5): a cyclical learning rate from a
  trained network, a snapshot at each minimum of the cycle, and an ensemble that averages the
  snapshots' softmax probabilities.

>>> run = train_curve(model, a, b, split, kind="bezier", bends=3, epochs=20)
>>> ev = Evaluator(model, {"train": split.train, "test": split.test}, metrics=("loss", "error"), bn="recompute")
>>> curve, line = evaluate_path(run.family, ev), evaluate_path((a, b), ev)
>>> curve.summary()["test_error"]["max"], line.summary()["test_error"]["barrier_mean"]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed, io
from . import space as sp
from .barrier import barrier
from .errors import UserError
from .evaluate import Evaluator, Metrics
from .families.base import LinearFamily
from .families.curves import Curve, curve_class
from .families.lines import Line
from .progress import bar
from .train import epoch_order

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


def cyclic_lr(epoch: int, it: int, iters: int, cycle: int, a1: float, a2: float) -> float:
    """FGE's cyclical learning rate at iteration ``it`` of ``iters`` in 0-based ``epoch``.

    t = ((epoch mod cycle) + it / iters) / cycle; lr = a1 (1 - 2t) + a2 2t for t < 1/2, else
    a1 (2t - 1) + a2 (2 - 2t): from a1 down to a2 at mid-cycle and back up.
    """
    t = ((epoch % cycle) + it / iters) / cycle
    if t < 0.5:
        return a1 * (1.0 - 2.0 * t) + a2 * 2.0 * t
    return a1 * (2.0 * t - 1.0) + a2 * (2.0 - 2.0 * t)


# -- small helpers ------------------------------------------------------------------------------------

def _point(x: Any, space: sp.WeightSpace, what: str) -> sp.Point:
    """A point from a point or a module of the same architecture (parameters only, detached)."""
    if isinstance(x, nn.Module):
        return space.point(x)
    if isinstance(x, Mapping):
        p = {n: x[n] for n in space.names if n in x}
        space.check(p, what=what)
        return {k: v.detach() for k, v in p.items()}
    raise UserError(f"{what} must be an nn.Module or a point (dict of tensors), got {type(x).__name__}")


def _split(data: Any) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """(train, test or None) from a zoo DataSplit, a {"train", "test"} dict or (X, y) tensors."""
    if hasattr(data, "train") and hasattr(data, "test"):
        return tuple(data.train), tuple(data.test)
    if isinstance(data, Mapping):
        if "train" not in data:
            raise UserError(f"data dict needs a 'train' entry; has {list(data)}")
        return tuple(data["train"]), (tuple(data["test"]) if "test" in data else None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return (data[0], data[1]), None
    raise UserError("data must be a zoo DataSplit, a dict {'train': (X, y), 'test': (X, y)} or (X, y) tensors")


def _dist() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group (see `distributed.init`), else (0, 1)."""
    import torch.distributed as dist

    if distributed.active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_grads(params: Sequence[Tensor]) -> None:
    """Sum gradients over ranks (each rank's loss is already scaled by its share of the batch)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)


def _sgd_epoch(ev: Evaluator, params: Sequence[Tensor], opt: torch.optim.Optimizer,
               make_point: Callable[[torch.Generator], tuple[sp.Point, Tensor]], x: Tensor, y: Tensor,
               epoch: int, seed: int, batch_size: int, wd: float, lr_at: Callable[[int, int], float],
               advance: Callable, lrs: list[float] | None = None) -> dict[str, float]:
    """One epoch of minibatch SGD on a point made by ``make_point``; returns mean loss and error.

    ``make_point(generator) -> (point, flat)``: the point to train through (differentiable in
    ``params``) and its flat vector for the L2 penalty 0.5 wd ||flat||^2. The data order and every
    random draw are pure functions of (seed, epoch), so resumed runs repeat exactly. Under
    torchrun every rank takes its slice of each minibatch; gradients are summed across ranks.
    """
    rank, world = _dist()
    n = x.shape[0]
    order = epoch_order(n, seed, epoch)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 7_919)
    iters = math.ceil(n / batch_size)
    # running sums stay on the device: no host synchronisation per step
    sums = torch.zeros(3, dtype=torch.float64, device=ev.device)  # loss sum, correct, seen
    for it in range(iters):
        idx = order[it * batch_size:(it + 1) * batch_size]
        local = idx[rank::world]
        lr = lr_at(it, iters)
        for g in opt.param_groups:
            g["lr"] = lr
        if lrs is not None:
            lrs.append(lr)
        point, flat = make_point(gen)
        if ev.bn_modules and idx.numel() < 2 * world:  # BatchNorm cannot normalise a single sample
            advance(1)  # (decided on the global batch, so that every rank skips it together)
            continue
        xb, yb = x[local].to(ev.device, ev.dtype), y[local].to(ev.device)
        out = ev.forward(point, ev.buffers, xb, bn_train=True)
        per = ev.loss_fn(out, yb)
        loss = per.sum() / idx.numel() + 0.5 * wd * flat.pow(2).sum() / world
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _all_reduce_grads(params)
        opt.step()
        with torch.no_grad():
            sums += torch.stack([per.sum().double(), (out.argmax(-1) == yb).sum().double(),
                                 torch.tensor(float(yb.numel()), dtype=torch.float64, device=ev.device)])
        advance(1)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged in epoch {epoch + 1} (loss {loss_sum}): lower the learning rate")
    return {"loss": loss_sum / max(seen, 1.0), "error": 1.0 - correct / max(seen, 1.0)}


def _save_state(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Rank 0 writes ``tensors`` and JSON ``meta`` into one safetensors file, atomically (io)."""
    if _dist()[0] == 0:
        io.save_tensors(path, tensors, {"format": CURVE_FORMAT, "meta": json.dumps(meta, default=io._json_default)})


def _read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise UserError(f"{path} is not a readable curve checkpoint ({e}): delete it or pick another") from None
    if header.get("format") != CURVE_FORMAT:
        raise UserError(f"{path} is not a modescape curve (format {header.get('format')!r})")
    return json.loads(header["meta"])


# -- curves: save, load, train ------------------------------------------------------------------------

def save_curve(family: Curve, path: str | Path, meta: Mapping[str, Any] | None = None,
               optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a curve (its bends, the layout, optional momentum buffers and ``meta``) as safetensors."""
    path = Path(path)
    tensors = {f"bend_{j}": family.anchor(j) for j in range(family.n_bends)}
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
    from .space import Layout

    layout = Layout(tuple(names), tuple(shapes))
    bends = [layout.unflatten(tensors[f"bend_{j}"]) for j in range(int(meta["bends"]))]
    family = curve_class(meta["kind"])(bends)
    family.momentum = {j: tensors[f"momentum_{j}"] for j in range(1, family.n_bends - 1) if f"momentum_{j}" in tensors}
    return family, meta


@dataclass
class CurveRun:
    """The result of `train_curve`: the trained curve, per-epoch history, the checkpoint path."""

    family: Curve
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def train_curve(model: nn.Module, a: Any, b: Any, data: Any, kind: str = "bezier", bends: int = 3,
                epochs: int = 50, lr: float = 0.015, wd: float = 5e-4, momentum: float = 0.9,
                batch_size: int = 128, seed: int = 0, init: Sequence[Any] | None = None,
                checkpoint: str | Path | None = None, stop_after: int | None = None, device=None, dtype=None,
                loss=None, progress: bool | None = None) -> CurveRun:
    """Train a curve from ``a`` to ``b`` (points or modules of ``model``'s architecture) on ``data``.

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
    pa, pb = _point(a, space, "endpoint A"), _point(b, space, "endpoint B")
    if init is not None:
        inner = [_point(p, space, f"initial bend {j + 1}") for j, p in enumerate(init)]
        family = cls.through(pa, pb, inner)
    else:
        family = cls.on_segment(pa, pb, bends)
    (xtr, ytr), _ = _split(data)
    ev = Evaluator(model, (xtr[:2], ytr[:2]), bn="train", device=device, dtype=dtype, loss=loss, mode="loop")
    family = family.to(device=ev.device, dtype=ev.dtype)
    params = [p for p in family.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=0.0)
    config = {"kind": family.kind, "bends": family.n_bends, "epochs": epochs, "lr": lr, "wd": wd,
              "momentum": momentum, "batch_size": batch_size, "seed": seed}

    start, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        saved, meta = load_curve(ckpt)
        if meta.get("config") != config:
            diff = [k for k, v in config.items() if meta.get("config", {}).get(k) != v]
            raise UserError(f"{ckpt} holds a curve trained with other settings ({', '.join(diff)}): "
                            f"use the same settings to resume, or another checkpoint path")
        with torch.no_grad():
            for j in range(family.n_bends):
                family.anchor(j).copy_(saved.anchor(j))
        for j, buf in saved.momentum.items():
            opt.state[family.anchor(j)]["momentum_buffer"] = buf.to(ev.device, ev.dtype).clone()
        start, history = int(meta["epoch"]), list(meta.get("history", []))

    def make_point(gen: torch.Generator) -> tuple[sp.Point, Tensor]:
        t = torch.rand((), generator=gen, dtype=torch.float64)
        flat = family.flat(t)
        return family.layout.unflatten(flat), flat

    iters = math.ceil(xtr.shape[0] / batch_size)
    stop = epochs if stop_after is None else max(start, min(epochs, int(stop_after)))
    with bar("training curve", (stop - start) * iters, enabled=progress) as advance:
        for epoch in range(start, stop):
            t0 = time.perf_counter()
            lr_e = reference_schedule(lr, epoch, epochs)
            stats = _sgd_epoch(ev, params, opt, make_point, xtr, ytr, epoch, seed, batch_size, wd,
                               lambda it, n: lr_e, advance)
            history.append({"epoch": epoch + 1, "lr": lr_e, "train_loss": stats["loss"],
                            "train_error": stats["error"], "seconds": time.perf_counter() - t0})
            if ckpt is not None:
                save_curve(family, ckpt, {"config": config, "epoch": epoch + 1, "history": history}, opt)
    return CurveRun(family, history, ckpt, config)


# -- paths ------------------------------------------------------------------------------------------------

def segment(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> LinearFamily:
    """The straight segment (1 - t) a + t b as a family."""
    return Line(a, b)


@dataclass
class PathResult:
    """Metrics along a path: ``t`` [T], ``metrics`` [T, M], ``dl`` [T] (dl[i] = |w(t_i) - w(t_{i-1})|)."""

    t: Tensor
    metrics: Metrics
    dl: Tensor
    name: str = "path"

    @property
    def length(self) -> float:
        return float(self.dl.sum())

    def values(self, metric: str) -> Tensor:
        return self.metrics[metric]

    def summary(self) -> dict[str, Any]:
        """Per metric: start, end, min, max, mean, int (arc-length weighted mean), barrier_linear,
        barrier_mean; plus ``length`` and the BN policy."""
        out: dict[str, Any] = {"length": self.length, "points": int(self.t.numel()), "bn": self.metrics.bn}
        for name in self.metrics.names:
            v = self.metrics[name].double()
            seg = 0.5 * (v[1:] + v[:-1])
            dl = self.dl[1:].double()
            integral = float((seg * dl).sum() / dl.sum()) if float(dl.sum()) > 0 else float(v.mean())
            out[name] = {"start": float(v[0]), "end": float(v[-1]), "min": float(v.min()), "max": float(v.max()),
                         "mean": float(v.mean()), "int": integral, **barrier(v, self.t)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "t": self.t.tolist(), "dl": self.dl.tolist(),
                "metrics": {n: self.metrics[n].tolist() for n in self.metrics.names}, "summary": self.summary()}


def evaluate_path(family_or_pair: Any, evaluator: Evaluator, points: int = 61, name: str | None = None,
                  progress: bool | None = None) -> PathResult:
    """Evaluate a path at ``points`` equally spaced t in [0, 1].

    ``family_or_pair``: a 1-d family (a `Curve`) or a pair ``(a, b)`` of points / modules for the
    straight segment. The evaluator's metrics and BN policy apply at every point; use
    ``bn="recompute"`` for networks with BatchNorm (fresh statistics at each point, vectorised).
    """
    if points < 2:
        raise UserError(f"points must be >= 2, got {points}")
    if isinstance(family_or_pair, LinearFamily):
        family = family_or_pair
        label = name or getattr(family, "kind", "path")
    elif isinstance(family_or_pair, (tuple, list)) and len(family_or_pair) == 2:
        a, b = (_point(p, evaluator.space, w) for p, w in zip(family_or_pair, ("endpoint A", "endpoint B")))
        family = segment(a, b)
        label = name or "segment"
    else:
        raise UserError("evaluate_path takes a curve family or a pair (a, b) of points or models")
    ts = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    dls, prev = [torch.zeros(1, dtype=torch.float64)], None
    with torch.no_grad():
        for i in range(0, points, 64):  # arc-length elements |w(t_i) - w(t_{i-1})|, a chunk at a time
            flat = family.flat(ts[i:i + 64])
            seq = flat if prev is None else torch.cat([prev, flat])
            dls.append((seq[1:] - seq[:-1]).double().norm(dim=1).cpu())
            prev = flat[-1:]
        if hasattr(evaluator, "evaluate_family"):  # chunked, with the evaluator's fastest family path
            m = evaluator.evaluate_family(family, ts, progress=progress, description=f"evaluating {label}")
        else:
            m = evaluator(family(ts), progress=progress, description=f"evaluating {label}")
    return PathResult(ts, m, torch.cat(dls), label)


# -- fast geometric ensembling ---------------------------------------------------------------------------

def predict_proba(evaluator: Evaluator, point: Mapping[str, Tensor], source: str = "test") -> Tensor:
    """Softmax probabilities [N, C] of ``point`` on a source, with the evaluator's BN policy."""
    buffers = evaluator.point_buffers(point)
    with torch.no_grad():
        return torch.cat([F.softmax(evaluator.forward(point, buffers, x, bn_train=False).double(), -1)
                          for x, _ in evaluator.sources[source]]).cpu()


def ensemble_curve(probs: Sequence[Tensor], targets: Tensor) -> list[dict[str, float]]:
    """Accuracy and NLL of the ensemble of the first m members, m = 1..len(probs).

    ``probs``: member probabilities [N, C] each; the ensemble predicts their average.
    """
    out, total = [], None
    targets = targets.cpu()
    for m, p in enumerate(probs, 1):
        total = p.double() if total is None else total + p.double()
        avg = total / m
        out.append({"members": m, "accuracy": float((avg.argmax(-1) == targets).double().mean()),
                    "nll": float(-avg.gather(1, targets[:, None]).clamp_min(1e-40).log().mean())})
    return out


@dataclass
class FGEResult:
    """`fge` output: snapshots (points), per-member single and ensemble metrics, the LR of every step."""

    snapshots: list[sp.Point]
    members: list[dict[str, float]]
    start: dict[str, float]
    lrs: list[float]
    history: list[dict[str, float]]
    probs: list[Tensor] = field(default_factory=list, repr=False)


def fge(model: nn.Module, checkpoint: Any, data: Any, cycle: int = 4, lr: tuple[float, float] = (0.05, 0.0001),
        epochs: int = 20, wd: float = 1e-4, momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
        bn: str = "recompute", device=None, dtype=None, progress: bool | None = None,
        momentum_buffers: Mapping[str, Tensor] | None = None) -> FGEResult:
    """Fast geometric ensembling from a trained network.

    ``checkpoint``: the start (a module, a point, or a checkpoint path); ``data``: a DataSplit or
    {"train", "test"}. SGD(momentum, weight decay ``wd``) with `cyclic_lr` at every iteration; after
    the epoch ending each LR minimum (epoch mod cycle = cycle/2 - 1) the point is a snapshot. Members
    are evaluated on the test data with BN policy ``bn``; the ensemble averages their softmax
    probabilities. ``model`` is not modified. ``momentum_buffers`` (by parameter name, e.g. from
    `modescape.train.momentum_of`): SGD's momentum at the start, as the reference restores the training
    run's optimiser state; default zero.
    """
    if cycle < 2 or cycle % 2:
        raise UserError(f"cycle must be an even number of epochs >= 2, got {cycle}")
    if epochs < cycle // 2:
        raise UserError(f"epochs ({epochs}) must be at least half a cycle ({cycle // 2}) to reach a snapshot")
    a1, a2 = (float(v) for v in lr)
    space = sp.WeightSpace(model)
    if isinstance(checkpoint, (str, Path)):
        checkpoint, _ = io.load_model(checkpoint)
    start = _point(checkpoint, space, "FGE start")
    (xtr, ytr), test = _split(data)
    if test is None:
        raise UserError("fge needs test data to evaluate the ensemble: pass a DataSplit or {'train', 'test'}")
    ev = Evaluator(model, {"train": (xtr, ytr), "test": test}, metrics=("loss", "accuracy"), bn=bn,
                   device=device, dtype=dtype)
    point = {k: v.to(ev.device, ev.dtype).clone().requires_grad_(True) for k, v in start.items()}
    params = list(point.values())
    opt = torch.optim.SGD(params, lr=a1, momentum=momentum, weight_decay=0.0)
    if momentum_buffers is not None:
        space.check(momentum_buffers, what="momentum buffers")
        for name, p in point.items():
            opt.state[p]["momentum_buffer"] = momentum_buffers[name].detach().to(p.device, p.dtype).clone()
    flat_of = lambda: torch.cat([p.reshape(-1) for p in params])  # noqa: E731

    def single(p: sp.Point) -> tuple[dict[str, float], Tensor]:
        pr = predict_proba(ev, p, "test")
        return ensemble_curve([pr], test[1])[0], pr

    start_metrics, _ = single({k: v.detach() for k, v in point.items()})
    snapshots, probs, members, lrs, history = [], [], [], [], []
    iters = math.ceil(xtr.shape[0] / batch_size)
    with bar("fge", epochs * iters, enabled=progress) as advance:
        for epoch in range(epochs):
            stats = _sgd_epoch(ev, params, opt, lambda g: (point, flat_of()), xtr, ytr, epoch, seed, batch_size,
                               wd, lambda it, n: cyclic_lr(epoch, it, n, cycle, a1, a2), advance, lrs)
            history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_error": stats["error"]})
            if (epoch % cycle) + 1 == cycle // 2:
                snap = {k: v.detach().clone() for k, v in point.items()}
                m, pr = single(snap)
                snapshots.append(snap)
                probs.append(pr)
                ens = ensemble_curve(probs, test[1])[-1]
                members.append({"epoch": epoch + 1, "members": len(probs), "single_accuracy": m["accuracy"],
                                "single_nll": m["nll"], "accuracy": ens["accuracy"], "nll": ens["nll"]})
    return FGEResult(snapshots, members, start_metrics, lrs, history, probs)


# -- plots -------------------------------------------------------------------------------------------------

def plot_paths(results: Sequence[PathResult], path: str | Path,
               metrics: Sequence[str] = ("train_loss", "test_error"), title: str | None = None) -> Path:
    """Metrics along t for several paths (e.g. the curve and the straight segment) on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m in results[0].metrics.names]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for r in results:
            scale = 100.0 if m.endswith("error") else 1.0
            ax.plot(r.t.numpy(), (r.metrics[m] * scale).numpy(), label=r.name, lw=1.8)
        ax.set_xlabel("t")
        ax.set_ylabel(m.replace("_", " ") + (" (%)" if m.endswith("error") else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path


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


def evaluate_plane(family: Curve, evaluator: Evaluator, points: int = 21, margin: float = 0.25,
                   curve_points: int = 61, progress: bool | None = None) -> PlaneResult:
    """Sweep the plane through the three bends of ``family`` on a ``points`` x ``points`` grid that
    covers the bends with ``margin`` on each side (`landscape.sweep`)."""
    from .families.lines import PlaneThrough
    from .landscape import auto_range, sweep

    if family.n_bends != 3:
        raise UserError(f"the plane through a curve's bends needs exactly 3 bends; this curve has {family.n_bends}")
    w0, w1, w2 = family.bends()
    plane = PlaneThrough(w0, w2, w1)
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


def plot_plane(result: PlaneResult, path: str | Path, metric: str = "test_error", title: str | None = None) -> Path:
    """Filled contour of ``metric`` on the plane with the curve, its bends and the straight segment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    z = result.values[metric].numpy().T * (100.0 if metric.endswith("error") else 1.0)  # [ny, nx]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    levels = np.geomspace(max(lo, 1e-3), hi, 18) if hi > lo > 0 else 18
    cs = ax.contourf(result.x.numpy(), result.y.numpy(), z, levels=levels, cmap="viridis")  # low = dark, as the surfaces
    fig.colorbar(cs, ax=ax, shrink=0.8, label=metric.replace("_", " ") + (" (%)" if metric.endswith("error") else ""))
    c, b = result.curve.numpy(), result.bends.numpy()
    ax.plot(c[:, 0], c[:, 1], color="white", lw=2, label="curve")
    ax.plot(b[[0, 2], 0], b[[0, 2], 1], color="white", lw=1.2, ls="--", label="segment")
    ax.scatter(b[[0, 2], 0], b[[0, 2], 1], color="black", zorder=3, s=30, label="endpoints")
    ax.scatter(b[1:2, 0], b[1:2, 1], color="red", marker="x", zorder=3, s=40, label="bend")
    ax.set_aspect("equal")  # distances in weight space, to scale
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(frameon=True, facecolor="0.7", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path

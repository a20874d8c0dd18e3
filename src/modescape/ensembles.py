"""Cheap ensembles from one training run: fast geometric ensembling, and the ensemble evaluation.

Fast geometric ensembling (FGE; Garipov et al. 2018, Sec. 5): from a trained network, SGD with a
cyclical learning rate (`cyclic_lr`: from a1 down to a2 at mid-cycle and back up); after the epoch that
ends at each minimum of the cycle the point is a snapshot, and the ensemble averages the snapshots'
softmax probabilities. Every snapshot carries BatchNorm statistics of its own weights, by the policy
asked for: ``running`` keeps the running statistics BatchNorm tracks during the FGE run itself (each
layer's momentum, as the reference's train-mode loop does); ``recompute`` computes fresh statistics at the
snapshot (``update_bn``); ``train`` scores with batch statistics and keeps the tracked ones for saving.

`ensemble_metrics` is the one ensemble evaluation, for any set of members (FGE snapshots, SWAG samples,
simplex samples, a deep ensemble): accuracy, NLL, Brier score and expected calibration error (15 bins) of
the members' averaged probabilities, and their mean pairwise disagreement; `ensemble_curve` gives it for
the first m members, m = 1..M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import io
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator
from .progress import bar
from .train import sgd_epoch
from .zoo import train_test


def cyclic_lr(epoch: int, it: int, iters: int, cycle: int, a1: float, a2: float) -> float:
    """FGE's cyclical learning rate at iteration ``it`` of ``iters`` in 0-based ``epoch``.

    t = ((epoch mod cycle) + it / iters) / cycle; lr = a1 (1 - 2t) + a2 2t for t < 1/2, else
    a1 (2t - 1) + a2 (2 - 2t): from a1 down to a2 at mid-cycle and back up.
    """
    t = ((epoch % cycle) + it / iters) / cycle
    if t < 0.5:
        return a1 * (1.0 - 2.0 * t) + a2 * 2.0 * t
    return a1 * (2.0 * t - 1.0) + a2 * (2.0 - 2.0 * t)


def predict_proba(evaluator: Evaluator, point: Mapping[str, Tensor], source: str = "test",
                  buffers: Mapping[str, Tensor] | None = None) -> Tensor:
    """Softmax probabilities [N, C] of ``point`` on a source, with the evaluator's BN policy (under
    ``running``: the point's own ``buffers`` when given, else the model's)."""
    if evaluator.bn == "train":
        bufs = evaluator.buffers
    else:
        bufs = evaluator.point_buffers(point, buffers)
    with torch.no_grad():
        return torch.cat([F.softmax(evaluator.forward(point, bufs, x).double(), -1)
                          for x, _ in evaluator.sources[source]]).cpu()


ECE_BINS = 15


def calibration_error(probs: Tensor, targets: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017): the confidence ``max_c p_c`` split into ``bins`` equal
    bins of (0, 1]; sum over bins of (bin size / N) * |accuracy in the bin - mean confidence in the bin|."""
    conf, pred = probs.double().max(-1)
    correct = (pred == targets).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b + 1]]
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        mask = which == b
        if bool(mask.any()):
            ece += mask.double().mean() * (correct[mask].mean() - conf[mask].mean()).abs()
    return float(ece)


def ensemble_metrics(probs: Sequence[Tensor], targets: Tensor) -> dict[str, float]:
    """The ensemble of ``probs`` (member probabilities [N, C] each; the ensemble predicts their mean):

    ``accuracy``; ``nll`` = -mean log p(y); ``brier`` = mean over samples of sum_c (p_c - 1[c = y])^2;
    ``ece`` (`calibration_error`, 15 bins); ``disagreement`` = mean over member pairs of the fraction of
    samples whose predicted classes differ (0 for one member); ``members``.
    """
    if len(probs) == 0:
        raise UserError("an ensemble needs at least one member")
    targets = targets.cpu()
    ps = [p.double().cpu() for p in probs]
    avg = torch.stack(ps).mean(0)
    onehot = torch.nn.functional.one_hot(targets, avg.shape[-1]).double()
    preds = [p.argmax(-1) for p in ps]
    pairs = [(i, j) for i in range(len(ps)) for j in range(i + 1, len(ps))]
    disagree = sum(float((preds[i] != preds[j]).double().mean()) for i, j in pairs) / len(pairs) if pairs else 0.0
    return {"members": len(ps), "accuracy": float((avg.argmax(-1) == targets).double().mean()),
            "nll": float(-avg.gather(1, targets[:, None]).clamp_min(1e-40).log().mean()),
            "brier": float(((avg - onehot) ** 2).sum(-1).mean()), "ece": calibration_error(avg, targets),
            "disagreement": disagree}


def ensemble_curve(probs: Sequence[Tensor], targets: Tensor) -> list[dict[str, float]]:
    """`ensemble_metrics` of the first m members, m = 1..len(probs)."""
    return [ensemble_metrics(probs[:m], targets) for m in range(1, len(probs) + 1)]


@dataclass
class FGEResult:
    """`fge` output: snapshots (points) with their buffers, per-member single and ensemble metrics, the
    learning rate of every step, the per-epoch training history and the BN policy."""

    snapshots: list[sp.Point]
    members: list[dict[str, float]]
    start: dict[str, float]
    lrs: list[float]
    history: list[dict[str, float]]
    probs: list[Tensor] = field(default_factory=list, repr=False)
    buffers: list[sp.Point] = field(default_factory=list, repr=False)
    bn: str = "recompute"

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "members": self.members, "history": self.history, "bn": self.bn}


def fge(model: nn.Module, checkpoint: Any, data: Any, cycle: int = 4, lr: tuple[float, float] = (0.05, 0.0001),
        epochs: int = 20, wd: float = 1e-4, momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
        bn: str = "recompute", device=None, dtype=None, progress: bool | None = None,
        momentum_buffers: Mapping[str, Tensor] | None = None) -> FGEResult:
    """Fast geometric ensembling from a trained network (see the module docstring).

    ``checkpoint``: the start (a module, a state or point, or a checkpoint path); ``data``: a DataSplit or
    {"train", "test"}. SGD(momentum) with the L2 penalty 0.5 wd ||w||^2 and `cyclic_lr` at every
    iteration; after the epoch ending each LR minimum (epoch mod cycle = cycle/2 - 1) the point is a
    snapshot. Members are evaluated on the test data with BN policy ``bn``; the ensemble averages their
    softmax probabilities. ``model`` is not modified. ``momentum_buffers`` (by parameter name, e.g. from
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
    start, start_buffers = space.split_state(checkpoint, "FGE start")
    (xtr, ytr), test = train_test(data)
    if test is None:
        raise UserError("fge needs test data to evaluate the ensemble: pass a DataSplit or {'train', 'test'}")
    ev = Evaluator(model, {"train": (xtr, ytr), "test": test}, metrics=("loss", "accuracy"), bn=bn,
                   device=device, dtype=dtype)
    point = {k: v.to(ev.device, ev.dtype).clone().requires_grad_(True) for k, v in start.items()}
    # the statistics BatchNorm tracks along the run, from the start's own (they stay the model's if none)
    tracked = sp.to(sp.clone(start_buffers or ev.buffers), ev.device, ev.dtype)
    params = list(point.values())
    opt = torch.optim.SGD(params, lr=a1, momentum=momentum, weight_decay=0.0)
    if momentum_buffers is not None:
        space.check(momentum_buffers, what="momentum buffers")
        for name, p in point.items():
            opt.state[p]["momentum_buffer"] = momentum_buffers[name].detach().to(p.device, p.dtype).clone()
    flat_of = lambda: torch.cat([p.reshape(-1) for p in params])  # noqa: E731

    def single(p: sp.Point, bufs: sp.Point) -> tuple[dict[str, float], Tensor, sp.Point]:
        own = bufs if bn != "recompute" else ev.point_buffers(p)
        pr = predict_proba(ev, p, "test", own)
        return ensemble_metrics([pr], test[1]), pr, own

    start_metrics, _, _ = single({k: v.detach() for k, v in point.items()}, tracked)
    snapshots, buffers, probs, members, lrs, history = [], [], [], [], [], []
    iters = math.ceil(xtr.shape[0] / batch_size)
    with bar("fge", epochs * iters, enabled=progress) as advance:
        for epoch in range(epochs):
            stats = sgd_epoch(ev, params, opt, lambda g: (point, flat_of()), xtr, ytr, epoch, seed, batch_size,
                              wd, lambda it, n: cyclic_lr(epoch, it, n, cycle, a1, a2), advance, lrs,
                              buffers=tracked if ev.bn_modules else None)
            history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_error": stats["error"]})
            if (epoch % cycle) + 1 == cycle // 2:
                snap = {k: v.detach().clone() for k, v in point.items()}
                m, pr, own = single(snap, sp.clone(tracked))
                snapshots.append(snap)
                buffers.append(sp.clone(own))
                probs.append(pr)
                ens = ensemble_metrics(probs, test[1])
                members.append({"epoch": epoch + 1, "single_accuracy": m["accuracy"], "single_nll": m["nll"],
                                **ens})
    return FGEResult(snapshots, members, start_metrics, lrs, history, probs, buffers, bn)


__all__ = ["ECE_BINS", "FGEResult", "calibration_error", "cyclic_lr", "ensemble_curve", "ensemble_metrics", "fge",
           "predict_proba"]

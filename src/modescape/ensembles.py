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
the first m members, m = 1..M. `EnsembleResult` (`evaluate_ensemble`) holds it with each member's own
metrics and the ensemble's **training budget in epochs**, so that ensembles are compared at equal budget:
FGE counts its start checkpoint's epochs plus its own, SWA/SWAG the epochs of the run that collected the
iterates (plus its start's), a deep ensemble the sum over its members (`budget_epochs` reads a sidecar).
`deep_ensemble` evaluates independently trained checkpoints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import io, provenance
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator
from .point_sgd import sgd_epoch
from .progress import bar
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


def predict_proba(
    evaluator: Evaluator, point: Mapping[str, Tensor], source: str = "test", buffers: Mapping[str, Tensor] | None = None
) -> Tensor:
    """Softmax probabilities [N, C] of ``point`` on a source, with the evaluator's BN policy (under
    ``running``: the point's own ``buffers`` when given, else the model's)."""
    if evaluator.bn == "train":
        bufs = evaluator.buffers
    else:
        bufs = evaluator.point_buffers(point, buffers)
    with torch.no_grad():
        return torch.cat(
            [F.softmax(evaluator.forward(point, bufs, x).double(), -1) for x, _ in evaluator.sources[source]]
        ).cpu()


ECE_BINS = 15


def reliability(probs: Tensor, targets: Tensor, bins: int = ECE_BINS) -> dict[str, Tensor]:
    """The reliability diagram behind `calibration_error`: the confidence ``max_c p_c`` split into ``bins``
    equal bins of (0, 1] (bin b holds (b/bins, (b+1)/bins]); per bin the sample ``count``, the mean
    ``confidence`` and the ``accuracy`` (NaN in empty bins), and the ``edges`` [bins + 1]."""
    conf, pred = probs.double().cpu().max(-1)
    correct = (pred == targets.cpu()).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b + 1]]
    count = torch.bincount(which, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, conf)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, correct)
    return {"edges": edges, "count": count, "confidence": conf_sum / count, "accuracy": acc_sum / count}


def calibration_error(probs: Tensor, targets: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017): the confidence ``max_c p_c`` split into ``bins`` equal
    bins of (0, 1]; sum over bins of (bin size / N) * |accuracy in the bin - mean confidence in the bin|."""
    r = reliability(probs, targets, bins)
    full = r["count"] > 0
    weight = r["count"][full] / r["count"].sum()
    return float((weight * (r["accuracy"][full] - r["confidence"][full]).abs()).sum())


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
    return {
        "members": len(ps),
        "accuracy": float((avg.argmax(-1) == targets).double().mean()),
        "nll": float(-avg.gather(1, targets[:, None]).clamp_min(1e-40).log().mean()),
        "brier": float(((avg - onehot) ** 2).sum(-1).mean()),
        "ece": calibration_error(avg, targets),
        "disagreement": disagree,
    }


def ensemble_curve(probs: Sequence[Tensor], targets: Tensor) -> list[dict[str, float]]:
    """`ensemble_metrics` of the first m members, m = 1..len(probs)."""
    return [ensemble_metrics(probs[:m], targets) for m in range(1, len(probs) + 1)]


# -- training budgets ------------------------------------------------------------------------------


def budget_epochs(meta: Mapping[str, Any]) -> int | None:
    """The epochs of training behind a checkpoint, from its sidecar: ``budget.epochs`` when recorded (the
    trainer writes it: the run's epoch plus its start's, for runs that start from a checkpoint, as SWA
    does), else ``epoch`` (plus ``start.epochs``); None when unknown (a bare file, a start of unknown
    training)."""
    recorded = meta.get("budget") or {}
    if "epochs" in recorded:
        return None if recorded["epochs"] is None else int(recorded["epochs"])
    epoch, first = meta.get("epoch"), meta.get("start") or {}
    if epoch is None or (first and first.get("epochs") is None):
        return None
    return int(epoch) + int(first.get("epochs") or 0)


def budget(epochs: int, start_epochs: int | None, key: str) -> dict[str, Any]:
    """A budget record for a method run for ``epochs`` from a start trained ``start_epochs`` epochs
    (None: unknown): ``{"epochs": total or None, "start_epochs", key: epochs}``."""
    total = None if start_epochs is None else int(start_epochs) + int(epochs)
    return {"epochs": total, "start_epochs": start_epochs, key: int(epochs)}


# -- the one ensemble result -------------------------------------------------------------------------


@dataclass
class EnsembleResult:
    """An ensemble evaluated on the test data (`evaluate_ensemble`).

    ``metrics``: `ensemble_metrics` of all members; ``curve``: of the first m, m = 1..M; ``members``: each
    member's own metrics (``label``, accuracy, nll, brier, ece); ``budget``: ``{"epochs": total training
    epochs or None, ...}``; ``kind``: "deep", "swag", ...; ``bn``: the BN policy members were evaluated
    with; ``probs`` [M x [N, C]] and ``targets`` [N] for figures; ``info``: more JSON-able facts (e.g. the
    SWA model's metrics beside SWAG's); ``baselines``: probabilities of reference models (e.g. ``"swa"``)."""

    kind: str
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    members: list[dict[str, Any]]
    budget: dict[str, Any]
    bn: str
    probs: list[Tensor] = field(default_factory=list, repr=False)
    targets: Tensor | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metrics": self.metrics,
            "curve": self.curve,
            "members": self.members,
            "budget": self.budget,
            "bn": self.bn,
            **self.info,
        }


def evaluate_ensemble(
    probs: Sequence[Tensor],
    targets: Tensor,
    kind: str,
    budget: Mapping[str, Any] | None = None,
    bn: str = "running",
    labels: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
) -> EnsembleResult:
    """`EnsembleResult` of members' test probabilities (each [N, C])."""
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(len(probs))]
    members = []
    for label, p in zip(labels, probs, strict=True):
        one = ensemble_metrics([p], targets)
        members.append({"label": label, **{k: one[k] for k in ("accuracy", "nll", "brier", "ece")}})
    return EnsembleResult(
        kind,
        ensemble_metrics(probs, targets),
        ensemble_curve(probs, targets),
        members,
        dict(budget or {"epochs": None}),
        bn,
        list(probs),
        targets.cpu(),
        dict(info or {}),
    )


def cached_probs(cache: str | Path | None, name: str, key: Mapping[str, Any], compute) -> Tensor:
    """``compute()`` (a member's probabilities), read back from ``cache/name.safetensors`` when a previous
    run wrote it with the same ``key`` (JSON-able settings), else computed and written atomically: what
    makes ensemble evaluations resumable."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{name}.safetensors"
    text = io.json_dumps(key, sort_keys=True)
    if path.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == text:
                    return f.get_tensor("probs")
        except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed
            pass
    probs = compute()
    io.save_tensors(path, {"probs": probs}, {"key": text})
    return probs


def train_test_evaluator(
    model: nn.Module, data: Any, what: str, **options: Any
) -> tuple[Evaluator, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """An `Evaluator` of loss and accuracy on the train and test splits of ``data`` (``options``: the
    evaluator's), with the splits: what every ensemble evaluation starts from. Test data is required;
    ``what`` names the method in the error."""
    (xtr, ytr), test = train_test(data)
    if test is None:
        raise UserError(f"{what} is evaluated on test data: pass a DataSplit or {{'train', 'test'}}")
    ev = Evaluator(model, {"train": (xtr, ytr), "test": test}, metrics=("loss", "accuracy"), **options)
    return ev, (xtr, ytr), test


def deep_ensemble(
    model: nn.Module,
    members: Sequence[Any],
    data: Any,
    bn: str = "running",
    budgets: Sequence[int | None] | None = None,
    device=None,
    dtype=None,
    batch_size: int | None = None,
    progress: bool | None = None,
    cache: str | Path | None = None,
    precision: str | None = None,
) -> EnsembleResult:
    """A deep ensemble: independently trained ``members`` (checkpoint paths, modules or state dicts of
    ``model``'s architecture) averaged on the test data of ``data``.

    ``bn="running"`` (default) evaluates each member with its own BatchNorm statistics; ``recompute`` with
    fresh ones. The budget is the sum of the members' epochs (``budgets``, else read from each path's
    sidecar; None when any is unknown). ``cache``: a folder where each member's probabilities are kept,
    so that a rerun continues. ``precision``: the evaluator's (``"fp32"`` or ``"bf16"``; recorded in
    ``info``). ``model`` is not modified.
    """
    if len(members) == 0:
        raise UserError("an ensemble needs at least one member")
    space = sp.WeightSpace(model)
    ev, _, test = train_test_evaluator(
        model, data, "an ensemble", bn=bn, device=device, dtype=dtype, batch_size=batch_size, precision=precision
    )
    epochs, labels, probs, states = [], [], [], []
    for i, member in enumerate(members):  # every member read and checked before any is evaluated (or cached)
        meta: dict[str, Any] = {}
        if isinstance(member, (str, Path)):
            meta = io.read_meta(member)
            state = io.load_tensors(member)
            labels.append(str(member))
        else:
            state = member
            labels.append(f"member {i + 1}")
        states.append(space.split_state(state, f"ensemble member {labels[-1]}"))
        if isinstance(member, (str, Path)):
            io.load_state_into(copy.deepcopy(model), state, source=str(member))  # names, shapes, NaN
        epochs.append(budgets[i] if budgets is not None else budget_epochs(meta))
    data_key = provenance.data_hash(ev) if cache is not None else None
    with bar("ensemble members", len(members), enabled=progress) as advance:
        for i, (point, buffers) in enumerate(states):
            key = {"weights": io.tensor_hash({**point, **buffers}), "bn": bn, "data": data_key}
            if ev.precision != "fp32":  # fp32 keys as before: older caches stay valid
                key["precision"] = ev.precision
            probs.append(
                cached_probs(
                    cache,
                    f"member-{i + 1:03d}",
                    key,
                    lambda point=point, buffers=buffers: predict_proba(ev, point, "test", buffers or None),
                )
            )
            advance(1)
    total = None if any(e is None for e in epochs) else int(sum(e for e in epochs if e is not None))
    return evaluate_ensemble(
        probs, test[1], "deep", {"epochs": total, "members": epochs}, bn, labels, {"precision": ev.precision}
    )


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
    budget: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "members": self.members,
            "history": self.history,
            "bn": self.bn,
            "budget": self.budget,
            "precision": self.precision,
        }


def fge(
    model: nn.Module,
    checkpoint: Any,
    data: Any,
    cycle: int = 4,
    lr: tuple[float, float] = (0.05, 0.0001),
    epochs: int = 20,
    wd: float = 1e-4,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    bn: str = "recompute",
    device=None,
    dtype=None,
    progress: bool | None = None,
    momentum_buffers: Mapping[str, Tensor] | None = None,
    start_epochs: int | None = None,
    precision: str | None = None,
) -> FGEResult:
    """Fast geometric ensembling from a trained network (see the module docstring).

    ``checkpoint``: the start (a module, a state or point, or a checkpoint path); ``data``: a DataSplit or
    {"train", "test"}. SGD(momentum) with the L2 penalty 0.5 wd ||w||^2 and `cyclic_lr` at every
    iteration; after the epoch ending each LR minimum (epoch mod cycle = cycle/2 - 1) the point is a
    snapshot. Members are evaluated on the test data with BN policy ``bn``; the ensemble averages their
    softmax probabilities (``precision="bf16"``: the members' forwards in bf16; training stays in the
    evaluator's dtype). ``model`` is not modified. ``momentum_buffers`` (by parameter name, e.g. from
    `modescape.train.momentum_of`): SGD's momentum at the start, as the reference restores the training
    run's optimiser state; default zero. ``start_epochs``: the epochs that trained the start (read from
    its sidecar when ``checkpoint`` is a path); the result's ``budget`` is those plus ``epochs``.
    """
    if cycle < 2 or cycle % 2:
        raise UserError(f"cycle must be an even number of epochs >= 2, got {cycle}")
    if epochs < cycle // 2:
        raise UserError(f"epochs ({epochs}) must be at least half a cycle ({cycle // 2}) to reach a snapshot")
    a1, a2 = (float(v) for v in lr)
    space = sp.WeightSpace(model)
    if isinstance(checkpoint, (str, Path)):
        if start_epochs is None:
            start_epochs = budget_epochs(io.read_meta(checkpoint))
        checkpoint, _ = io.load_model(checkpoint)
    start, start_buffers = space.split_state(checkpoint, "FGE start")
    ev, (xtr, ytr), test = train_test_evaluator(model, data, "fge", bn=bn, device=device, dtype=dtype)
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
        with ev.at_precision(precision or "fp32"):  # the evaluation only: SGD steps stay in ev's dtype
            own = bufs if bn != "recompute" else ev.point_buffers(p)
            pr = predict_proba(ev, p, "test", own)
        return ensemble_metrics([pr], test[1]), pr, own

    start_metrics, _, _ = single({k: v.detach() for k, v in point.items()}, tracked)
    snapshots, buffers, probs, members, history = [], [], [], [], []
    lrs: list[float] = []
    iters = math.ceil(xtr.shape[0] / batch_size)
    with bar("fge", epochs * iters, enabled=progress) as advance:
        for epoch in range(epochs):

            def lr_at(it: int, n: int, epoch: int = epoch) -> float:
                return cyclic_lr(epoch, it, n, cycle, a1, a2)

            stats = sgd_epoch(
                ev,
                params,
                opt,
                lambda g: (point, flat_of()),
                xtr,
                ytr,
                epoch,
                seed,
                batch_size,
                wd,
                lr_at,
                advance,
                lrs,
                buffers=tracked if ev.bn_modules else None,
            )
            history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_error": stats["error"]})
            if (epoch % cycle) + 1 == cycle // 2:
                snap = {k: v.detach().clone() for k, v in point.items()}
                m, pr, own = single(snap, sp.clone(tracked))
                snapshots.append(snap)
                buffers.append(sp.clone(own))
                probs.append(pr)
                ens = ensemble_metrics(probs, test[1])
                members.append({"epoch": epoch + 1, "single_accuracy": m["accuracy"], "single_nll": m["nll"], **ens})
    return FGEResult(
        snapshots,
        members,
        start_metrics,
        lrs,
        history,
        probs,
        buffers,
        bn,
        budget(epochs, start_epochs, "fge_epochs"),
        precision or "fp32",
    )


__all__ = [
    "ECE_BINS",
    "EnsembleResult",
    "FGEResult",
    "budget",
    "budget_epochs",
    "cached_probs",
    "calibration_error",
    "cyclic_lr",
    "deep_ensemble",
    "ensemble_curve",
    "ensemble_metrics",
    "evaluate_ensemble",
    "fge",
    "predict_proba",
    "reliability",
]

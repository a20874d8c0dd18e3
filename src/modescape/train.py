"""The trainer: produce the minima every method starts from, one checkpoint per epoch, resumable.

One epoch of SGD on a point of weight space (curves, subspaces, FGE) is `modescape.point_sgd.sgd_epoch`,
with the data order of `modescape.point_sgd.epoch_order`, which this trainer uses too.

``train(model, data, config, out=DIR)`` writes

* ``DIR/checkpoints/epoch-000.safetensors`` (the initialisation) and ``epoch-NNN`` after every epoch
  (every ``save_every`` epochs and the last, for long full-batch runs such as grokking), each with its
  JSON sidecar (model spec, data spec, seed, config, metrics, versions);
* ``DIR/trainer.safetensors`` (+ ``.json``): optimiser state after the last finished epoch;
* ``DIR/final.safetensors`` (+ ``.json``) when the run ends;
* with SWA (``swa_start``): ``DIR/swa.safetensors`` (+ ``.json``), the averaged model with BatchNorm
  statistics recomputed for it, and ``DIR/swag.safetensors``, the SWAG moments of the same iterates.

Optimisers: SGD (momentum), Adam, AdamW, and SAM / ASAM around SGD (`modescape.sam`: two
forward-backward passes per step, the second at the ascent point without moving BatchNorm's running
statistics). Stochastic weight averaging (`modescape.swa`): after ``swa_start`` epochs on the schedule,
every epoch runs at SWALR's learning rate (annealed to ``swa_lr`` over ``swa_anneal_epochs``) and ends by
adding the weights to the average (``torch.optim.swa_utils.AveragedModel``) and to the SWAG moments.

Rerun with the same ``DIR`` and the same configuration and it resumes after the last finished epoch,
with the same result as an uninterrupted run: data order is a pure function of (seed, epoch), the
learning rate a pure function of (config, epoch, step), and the optimiser state is restored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import io
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator, cross_entropy
from .point_sgd import epoch_order
from .progress import bar

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw", "sam")
SWA_ANNEAL = ("cos", "linear")


@dataclass
class TrainConfig:
    """Training settings; every field is saved with each checkpoint."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    wd: float = 5e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"
    step_every: int = 0  # step schedule: multiply by gamma every this many epochs (0: epochs // 3)
    gamma: float = 0.1
    seed: int = 0
    save_every: int = 1  # checkpoint every this many epochs (and the last); long full-batch runs (grokking)
    # SAM / ASAM (optimizer="sam"): radius, adaptive (ASAM), ASAM's eta in T = |w| + eta
    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01
    # SWA: None = off; else the epochs on the schedule before averaging starts (0 <= swa_start < epochs)
    swa_start: int | None = None
    swa_lr: float | None = None  # default: the schedule's learning rate at swa_start
    swa_anneal_epochs: int = 0
    swa_anneal: str = "cos"
    swag_rank: int = 20  # SWAG deviation columns kept (0: diagonal only)

    def check(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive finite number, got {self.lr}")
        for name in ("wd", "momentum", "gamma", "rho", "eta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name} must be a finite number >= 0, got {value}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer '{self.optimizer}': use {' or '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.schedule}': use one of {', '.join(SCHEDULES)}")
        if self.save_every < 1:
            raise UserError(f"--save-every must be at least 1, got {self.save_every}")
        if self.adaptive and self.optimizer != "sam":
            raise UserError("--adaptive (ASAM) needs --optimizer sam")
        if self.swa_start is not None:
            if not 0 <= self.swa_start < self.epochs:
                raise UserError(
                    f"--swa-start must be at least 0 and below --epochs ({self.epochs}): got {self.swa_start}"
                )
            if self.swa_lr is not None and not (self.swa_lr > 0 and math.isfinite(self.swa_lr)):
                raise UserError(f"--swa-lr must be a positive finite number, got {self.swa_lr}")
            if self.swa_anneal not in SWA_ANNEAL:
                raise UserError(f"unknown SWA annealing '{self.swa_anneal}': use cos or linear")
            if self.swa_anneal_epochs < 0:
                raise UserError(f"--swa-anneal-epochs must be >= 0, got {self.swa_anneal_epochs}")
            if self.swag_rank < 0:
                raise UserError(f"--swag-rank must be >= 0, got {self.swag_rank}")
        elif self.swa_lr is not None:
            raise UserError("--swa-lr needs --swa-start (the epochs on the schedule before averaging starts)")

    def swa_epoch_lr(self, epoch: int, steps: int) -> float:
        """The learning rate of 0-based ``epoch`` >= ``swa_start``: SWALR's, from the schedule's value at
        ``swa_start`` to ``swa_lr`` (`modescape.swa.swa_learning_rate`)."""
        from .swa import swa_learning_rate

        if self.swa_start is None:
            raise ValueError("swa_epoch_lr needs swa_start")
        start_lr = learning_rate(self, self.swa_start, 0, steps)
        target = start_lr if self.swa_lr is None else self.swa_lr
        return swa_learning_rate(start_lr, target, self.swa_anneal_epochs, self.swa_anneal, epoch - self.swa_start)


def learning_rate(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The learning rate at step ``step`` of ``steps`` within 0-based ``epoch``."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        every = config.step_every or max(1, config.epochs // 3)
        return config.lr * config.gamma ** (epoch // every)
    progress = (epoch + step / steps) / config.epochs
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


@dataclass
class History:
    """Per-epoch metrics of a run; with SWA, the `modescape.swa.SWAG` moments (``swag``: its ``mean()`` is
    the SWA point) and the BatchNorm buffers recomputed for the average (``swa_buffers``)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    swag: Any = None
    swa_buffers: dict[str, Tensor] | None = None

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.wd)
    if config.optimizer == "sam":
        from .sam import SAM, bias_mask

        return SAM(
            model.parameters(),
            torch.optim.SGD,
            rho=config.rho,
            adaptive=config.adaptive,
            eta=config.eta,
            scaled=bias_mask(model),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.wd,
        )
    if config.optimizer == "adamw":  # decoupled weight decay (the grokking runs' optimiser)
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.wd)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.wd)


def _save_optimizer(
    path: Path,
    opt: torch.optim.Optimizer,
    epoch: int,
    config: TrainConfig,
    history: list[dict[str, float]],
    identity: Mapping[str, Any],
    extra: Mapping[str, Tensor] | None = None,
    weights_hash: str | None = None,
) -> None:
    """The optimiser state after ``epoch`` (and ``extra`` tensors, e.g. SWA's, under ``extra/``): one
    safetensors file and its JSON sidecar, which names the weights it belongs to (``weights_hash``: the
    epoch checkpoint's), so that it is never used with other weights (e.g. a permuted copy)."""
    state = opt.state_dict()
    tensors, numbers = {}, {}
    for idx, st in state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{idx}.{key}"] = val
            else:
                numbers[f"state.{idx}.{key}"] = val
    tensors.update({f"extra/{k}": v for k, v in (extra or {}).items()})
    io.save_tensors(path, tensors)
    io.write_json(
        path.with_suffix(".json"),
        {
            "epoch": epoch,
            "config": asdict(config),
            "numbers": numbers,
            "param_groups": state["param_groups"],
            "history": history,
            "weights_hash": weights_hash,
            **identity,
        },
    )


def _read_optimizer(path: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The saved optimiser state: (its JSON sidecar, {parameter index: {name: value}})."""
    side = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, val in list(io.load_tensors(path).items()) + list(side["numbers"].items()):
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = val
    return side, state


def _load_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    side, state = _read_optimizer(path)
    opt.load_state_dict({"state": state, "param_groups": side["param_groups"]})


def _find_resume(out: Path, config: TrainConfig, identity: Mapping[str, Any]) -> int:
    """The last finished epoch in ``out`` (0 when starting fresh); errors if ``out`` holds another run.

    Another run: other settings, another model (name, arguments, shapes), other data or another start.
    Settings a run saved before they existed count as their defaults.
    """
    side = out / "trainer.json"
    if not side.exists():
        return 0
    try:
        saved = json.loads(side.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{side} is corrupt: delete {out} or choose another --out") from None
    saved_config = {**asdict(TrainConfig()), **saved.get("config", {})}
    if saved_config != asdict(config):
        diff = [k for k, v in asdict(config).items() if saved_config.get(k) != v]
        raise UserError(
            f"{out} holds a run with different settings ({', '.join(diff)}): "
            f"use the same settings to resume, or another --out"
        )
    for key, value in identity.items():
        if json.loads(json.dumps(value, default=str)) != saved.get(key):
            raise UserError(
                f"{out} holds a run of another {key} ({saved.get(key)}): use the same {key} to resume, or another --out"
            )
    epoch = int(saved["epoch"])
    if not (out / "checkpoints" / f"epoch-{epoch:03d}.safetensors").exists():
        raise UserError(f"{out} has trainer state for epoch {epoch} but no checkpoint: delete {out} to start over")
    return epoch


def checkpoint_path(out: Path, epoch: int) -> Path:
    return out / "checkpoints" / f"epoch-{epoch:03d}.safetensors"


def momentum_of(checkpoint: str | Path, model: nn.Module) -> tuple[dict[str, torch.Tensor] | None, str]:
    """SGD momentum buffers saved by `train` for the weights in ``checkpoint``, by parameter name.

    Found when ``checkpoint`` is ``DIR/final.safetensors`` or ``DIR/checkpoints/epoch-NNN.safetensors`` of a
    run whose optimiser state (``DIR/trainer.safetensors``, kept for the last finished epoch) is for the
    same epoch and the same weights (the hash in its sidecar), and the run used SGD with momentum. Returns
    ``(buffers or None, why)``.
    """
    checkpoint = Path(checkpoint)
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    state = run / "trainer.safetensors"
    if not state.exists() or not state.with_suffix(".json").exists():
        return None, f"no optimiser state beside {checkpoint}"
    meta = io.read_meta(checkpoint)
    side, saved = _read_optimizer(state)
    config = side.get("config", {})
    if config.get("optimizer") not in ("sgd", "sam") or not config.get("momentum"):  # SAM's base is SGD
        return None, f"{state} is not SGD with momentum"
    if meta.get("epoch") != side.get("epoch"):
        return None, f"{state} is for epoch {side.get('epoch')}, {checkpoint} for epoch {meta.get('epoch')}"
    if side.get("weights_hash") and side["weights_hash"] != meta.get("weights_hash"):
        return None, (
            f"{state} belongs to other weights than {checkpoint} (weights hash {side['weights_hash']}, "
            f"not {meta.get('weights_hash')}): a rewritten or permuted checkpoint"
        )
    params = list(model.named_parameters())  # the trainer's optimiser indexes model.parameters()
    out = {}
    for idx, entry in saved.items():
        buf = entry.get("momentum_buffer")
        if buf is None:
            continue
        if idx >= len(params) or tuple(buf.shape) != tuple(params[idx][1].shape):
            return None, f"{state} does not match the model's parameters"
        out[params[idx][0]] = buf
    if len(out) != len(params):
        return None, f"{state} has no momentum for every parameter"
    return out, f"restored from {state} (epoch {side.get('epoch')})"


def train(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    device=None,
    meta: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    momentum_buffers: Mapping[str, Tensor] | None = None,
) -> History:
    """Train ``model`` in place on ``data`` (a zoo `DataSplit`); checkpoint every epoch into ``out``.

    ``meta`` (e.g. the data spec) is stored in every sidecar; ``meta["start"]`` (``{"weights_hash",
    "epochs"}``) says the model starts from a trained checkpoint: it is part of what a resumed run must
    match, and its epochs count in every checkpoint's ``budget``. ``momentum_buffers`` (by parameter name):
    SGD's (or SAM's base SGD's) momentum at the start of a fresh run. Returns the per-epoch `History`
    (with SWA: ``swag`` and ``swa_buffers``, and ``swa_*`` metrics of the running average per epoch).
    """
    config = config or TrainConfig()
    config.check()
    device = torch.device(device or "cpu")
    model.to(device)
    xtr, ytr = data.train
    n = xtr.shape[0]
    xtr_d, ytr_d = xtr.to(device), ytr.to(device)
    opt = _make_optimizer(model, config)
    out = Path(out) if out is not None else None
    history = History()
    start = 0
    base_meta = {**dict(meta or {}), "seed": config.seed, "config": asdict(config)}
    # what makes a run the same run besides its settings: the model and the data
    identity = {
        "model": getattr(model, "modescape_spec", None) or {"class": type(model).__name__},
        "data": dict(getattr(data, "meta", {}) or {}),
    }
    first = dict((meta or {}).get("start") or {})
    if first:  # a run from a trained checkpoint (SWA from a checkpoint): the same start to resume
        identity["start"] = {k: first.get(k) for k in ("weights_hash", "epochs")}
    offset = first.get("epochs") if first else 0  # epochs before this run, for the budget (None: unknown)
    spent = lambda e: None if offset is None else int(offset) + e  # noqa: E731
    swag = None
    if config.swa_start is not None:
        from .swa import SWAG

        swag = SWAG(model, rank=config.swag_rank)
    if momentum_buffers is not None:
        base = getattr(opt, "base_optimizer", opt)
        for name, p in model.named_parameters():
            base.state[p]["momentum_buffer"] = momentum_buffers[name].detach().to(p.device, p.dtype).clone()
    # the evaluator checks the data (NaN or infinite inputs, labels, a model that cannot run on it): before
    # anything is written into ``out``
    space = sp.WeightSpace(model)
    evaluator = Evaluator(
        model,
        {"train": data.train, "test": data.test},
        metrics=("loss", "accuracy"),
        bn="running",
        device=device,
        mode="loop",
    )
    if out is not None:
        start = _find_resume(out, config, identity)
        if start > 0:
            io.load_state_into(model, io.load_tensors(checkpoint_path(out, start)), str(checkpoint_path(out, start)))
            _load_optimizer(out / "trainer.safetensors", opt)
            history.epochs = json.loads((out / "trainer.json").read_text()).get("history", [])
            if swag is not None and config.swa_start is not None and start > config.swa_start:
                extra = {
                    k[len("extra/swag/") :]: v
                    for k, v in io.load_tensors(out / "trainer.safetensors").items()
                    if k.startswith("extra/swag/")
                }
                if not extra:
                    raise UserError(f"{out} has no SWA state for epoch {start}: delete {out} to start over")
                swag.load_state_tensors(extra)
        else:
            io.save_checkpoint(
                checkpoint_path(out, 0), model, {**base_meta, "epoch": 0, "budget": {"epochs": spent(0)}}
            )

    swa_ev = None
    if swag is not None:  # the average is a point SGD never visited: fresh BatchNorm statistics (if any)
        from .evaluate import default_bn

        swa_ev = Evaluator(
            model,
            dict(evaluator.sources),
            metrics=("loss", "accuracy"),
            bn=default_bn(model),
            device=device,
            mode="loop",
        )
    sam = config.optimizer == "sam"
    if sam:
        from .sam import SAM, frozen_batchnorm
    steps = math.ceil(n / config.batch_size)
    with bar("training", (config.epochs - start) * steps, enabled=progress) as advance:
        for epoch in range(start, config.epochs):
            model.train()
            order = epoch_order(n, config.seed, epoch).to(device)
            running = 0.0
            in_swa = swag is not None and config.swa_start is not None and epoch >= config.swa_start
            swa_lr = config.swa_epoch_lr(epoch, steps) if in_swa else None
            for step in range(steps):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                lr = swa_lr if in_swa else learning_rate(config, epoch, step, steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                xb, yb = xtr_d[idx], ytr_d[idx]

                def batch_loss(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:  # bound: called in this step only
                    logits = model(xb)
                    # sequence outputs [B, T, V]: the mean per-token loss (the evaluator's loss)
                    if logits.dim() == 2 and yb.dim() == 1:
                        return F.cross_entropy(logits, yb)
                    return cross_entropy(logits, yb).mean()

                loss = batch_loss()
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}): lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if sam:  # SAM: the gradient at the ascent point w + e, BatchNorm statistics left alone
                    assert isinstance(opt, SAM)  # _make_optimizer's choice for optimizer="sam"
                    opt.first_step(zero_grad=True)
                    with frozen_batchnorm(model):
                        batch_loss().backward()
                    opt.second_step(zero_grad=True)
                else:
                    opt.step()
                running += loss.item() * idx.numel()
                advance(1, info=f"epoch {epoch + 1}/{config.epochs} loss {loss.item():.4f}")
            model.eval()
            metrics = evaluator([space.point(model)], buffers=[space.buffers(model)]).to_dict()
            metrics = {"epoch": epoch + 1, "running_loss": running / n, "lr": lr, **metrics}
            if in_swa and swag is not None and swa_ev is not None:
                swag.collect(model)
                avg = swa_ev([swag.mean()]).to_dict()
                metrics.update({"swa_n": swag.n, **{f"swa_{k}": v for k, v in avg.items()}})
            history.epochs.append(metrics)
            if out is not None and ((epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs):
                io.save_checkpoint(
                    checkpoint_path(out, epoch + 1),
                    model,
                    {**base_meta, "epoch": epoch + 1, "metrics": metrics, "budget": {"epochs": spent(epoch + 1)}},
                )
                swag_state = (
                    {f"swag/{k}": v for k, v in swag.state_tensors().items()} if swag is not None and swag.n else None
                )
                _save_optimizer(
                    out / "trainer.safetensors",
                    opt,
                    epoch + 1,
                    config,
                    history.epochs,
                    identity,
                    **({"extra": swag_state} if swag_state else {}),
                    weights_hash=io.read_meta(checkpoint_path(out, epoch + 1)).get("weights_hash"),
                )
    model.eval()
    if swag is not None and swa_ev is not None:
        history.swag = swag
        mean = swag.mean()
        history.swa_buffers = {k: v.detach().cpu() for k, v in swa_ev.point_buffers(mean).items()}
    if out is not None:
        final_meta = {
            **base_meta,
            "epoch": config.epochs,
            "metrics": history.last,
            "budget": {"epochs": spent(config.epochs)},
        }
        io.save_checkpoint(out / "final.safetensors", model, final_meta)
        if swag is not None and swa_ev is not None:
            swa_metrics = {k[len("swa_") :]: v for k, v in history.last.items() if k.startswith("swa_")}
            swa_meta = {
                **base_meta,
                "epoch": config.epochs,
                "metrics": swa_metrics,
                "budget": {"epochs": spent(config.epochs)},
                "swa": {"n_averaged": swag.n, "bn": swa_ev.bn, **swag.settings()},
            }
            io.save_checkpoint(out / "swa.safetensors", sp.module_at(model, mean, history.swa_buffers), swa_meta)
            swag.save(
                out / "swag.safetensors",
                {
                    "epochs": spent(config.epochs),
                    "run_epochs": config.epochs,
                    "start": first,
                    "swa_start": config.swa_start,
                },
            )
    return history

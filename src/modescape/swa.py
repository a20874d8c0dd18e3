"""Stochastic weight averaging (SWA; Izmailov et al. 2018) and SWA-Gaussian (SWAG; Maddox et al. 2019).

**SWA.** SGD with a high constant (or cyclical) learning rate keeps moving around a wide low-loss region;
the arithmetic mean of its iterates, taken once per epoch, lies closer to the region's centre and
generalises better than the iterates. Built on ``torch.optim.swa_utils``: ``AveragedModel`` keeps the
running mean, the learning rate of the averaging phase is ``SWALR``'s (`swa_learning_rate`), and
BatchNorm statistics are recomputed for the average (the Evaluator's ``recompute`` policy, equal to
``update_bn`` for models without dropout; a test checks both). SWA runs inside the trainer
(``TrainConfig(swa_start=E, swa_lr=LR)``, ``modescape train --swa-start``) or from a checkpoint (`swa`).

**SWAG.** From the same iterates w_1..w_n: the mean (SWA), the diagonal variance
``max(mean(w^2) - mean(w)^2, 1e-30)`` and the deviation matrix ``D`` [K, P] whose rows are
``w_i - mean_i`` (the running mean just after w_i, as the reference stores them) for the last K iterates.
The posterior is ``N(mean, scale (diag(var) + D^T D / (K - 1)))``; a sample is
``mean + sqrt(scale) (sqrt(var) z_1 + D^T z_2 / sqrt(K - 1))`` with z_1 ~ N(0, I_P), z_2 ~ N(0, I_K);
``scale = 0.5`` is the paper's covariance ``(Sigma_diag + Sigma_lowrank) / 2`` (the reference's
``sample(scale=0.5)``: the 1/sqrt(2) on both parts). Bayesian model averaging (`swag_ensemble`) averages
the softmax of S samples, each with BatchNorm statistics recomputed at the sample, through the one
ensemble evaluation (`modescape.ensembles.evaluate_ensemble`).

Differences from wjmaddox/swa_gaussian (``swag/posteriors/swag.py``): K in ``1/sqrt(K - 1)`` is the number
of deviation rows actually kept (the reference divides by ``max_num_models - 1`` even before that many
iterates were collected); the variance comes from float64 running moments (Welford's update), where the
reference subtracts two float32 running means (the clamp at 1e-30 is the same).

```python
>>> hist = train(model, split, TrainConfig(epochs=20, swa_start=10, swa_lr=0.02), out="runs/swa")
>>> swa_point, swa_buffers = hist.swag.mean(), hist.swa_buffers
>>> bma = swag_ensemble(model, hist.swag, split, n_samples=30, seed=0)   # EnsembleResult
```
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel

from . import io, provenance
from . import space as sp
from .ensembles import (
    EnsembleResult,
    budget,
    budget_epochs,
    cached_probs,
    ensemble_metrics,
    evaluate_ensemble,
    predict_proba,
    train_test_evaluator,
)
from .errors import UserError
from .evaluate import Evaluator, default_bn
from .progress import bar
from .space import module_at  # noqa: F401  (part of this module's API too)
from .zoo import train_test

ANNEAL = ("cos", "linear")
SWAG_FORMAT = "modescape-swag/1"
VAR_CLAMP = 1e-30


def swa_learning_rate(start_lr: float, swa_lr: float, anneal_epochs: int, strategy: str, k: int) -> float:
    """The learning rate of the k-th (0-based) epoch of the averaging phase: what ``SWALR(opt, swa_lr,
    anneal_epochs, strategy)`` gives when it is created as the phase begins, with the optimiser at
    ``start_lr``, and stepped once per epoch. From ``start_lr`` at k = 0 to ``swa_lr`` at k = anneal_epochs
    (cosine: ``swa_lr a + start_lr (1 - a)``, a = (1 - cos(pi k / A)) / 2; linear: a = k / A), then
    ``swa_lr``; ``swa_lr`` from the start when ``anneal_epochs`` is 0. A pure function of its arguments, so
    resumed runs repeat exactly."""
    if strategy not in ANNEAL:
        raise UserError(f"unknown SWA annealing '{strategy}': use cos or linear")
    if anneal_epochs < 0:
        raise UserError(f"SWA annealing epochs must be >= 0, got {anneal_epochs}")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=start_lr)
    sched = SWALR(
        opt, swa_lr=swa_lr, anneal_epochs=int(anneal_epochs), anneal_strategy="cos" if strategy == "cos" else "linear"
    )  # checked above
    for _ in range(int(k)):
        opt.step()
        sched.step()
    return float(sched.get_last_lr()[0])


class SWAG:
    """SWA and SWAG moments from one stream of iterates (see the module docstring).

    ``collect(model)`` adds the model's current weights: ``AveragedModel.update_parameters`` (the SWA mean,
    in the model's dtype), float64 running moments for the variance, and the deviation from the new mean
    for the last ``rank`` iterates (``rank=0``: diagonal only). ``mean()``, ``variance()``, ``sample(...)``.
    """

    def __init__(self, model: nn.Module, rank: int = 20, var_clamp: float = VAR_CLAMP):
        if rank < 0:
            raise UserError(f"the SWAG rank (deviation columns kept) must be >= 0, got {rank}")
        self.space = sp.WeightSpace(model)
        self.rank = int(rank)
        self.var_clamp = float(var_clamp)
        self.averaged = AveragedModel(model)
        first = next(iter(model.parameters()))
        self.device, self.dtype = first.device, first.dtype
        d = self.space.numel
        self.mean64 = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.deviations = torch.zeros(0, d, dtype=self.dtype, device=self.device)

    @property
    def n(self) -> int:
        """The number of iterates collected."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def collect(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        w = self.space.flatten(self.space.point(model)).to(self.device, torch.float64)
        delta = w - self.mean64
        self.mean64 += delta / self.n
        self.m2 += delta * (w - self.mean64)
        if self.rank > 0:
            dev = (w - self.mean64).to(self.dtype)[None]
            self.deviations = torch.cat([self.deviations, dev])[-self.rank :]

    def _need(self) -> None:
        if self.n == 0:
            raise UserError("SWA has collected no iterates yet: train past the SWA start epoch")

    def mean(self) -> sp.Point:
        """The SWA mean (``AveragedModel``'s parameters) as a point."""
        self._need()
        return self.space.point(self.averaged.module)

    def variance(self) -> Tensor:
        """The diagonal variance [P] (float64), ``max(E[w^2] - E[w]^2, var_clamp)``."""
        self._need()
        return (self.m2 / self.n).clamp_min(self.var_clamp)

    def covariance(self, scale: float = 0.5, cov: bool = True) -> Tensor:
        """The dense covariance [P, P] that `sample` draws from (small models and tests only)."""
        c = torch.diag(self.variance())
        k = self.deviations.shape[0]
        if cov and k >= 2:
            d = self.deviations.double()
            c = c + d.T @ d / (k - 1)
        return scale * c

    def draw(self, n: int, seed: int | torch.Generator = 0, scale: float = 0.5, cov: bool = True) -> Tensor:
        """``n`` SWAG samples as flat vectors [n, P] (float64): ``mean + sqrt(scale) (sqrt(var) z_1 + D^T z_2 /
        sqrt(K - 1))``; ``cov=False``: diagonal only. The normals (z_1 [n, P], then z_2 [n, K]) are drawn on
        the CPU from ``seed`` (or the generator given), so every device gets the same samples."""
        self._need()
        if not scale >= 0:
            raise UserError(f"the SWAG scale must be non-negative, got {scale}")
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        k = self.deviations.shape[0]
        if cov and k < 2:
            raise UserError(
                f"SWAG's low-rank part needs at least 2 collected iterates (have {k}, rank "
                f"{self.rank}): collect more epochs, raise the rank, or sample the diagonal only"
            )
        var = self.variance()
        x = var.sqrt() * torch.randn(n, var.shape[0], generator=gen, dtype=torch.float64).to(self.device)
        if cov:
            z = torch.randn(n, k, generator=gen, dtype=torch.float64).to(self.device)
            x = x + z @ self.deviations.double() / math.sqrt(k - 1)
        mean = self.space.flatten(self.mean()).double()
        return mean + math.sqrt(scale) * x

    def sample(self, seed: int | torch.Generator = 0, scale: float = 0.5, cov: bool = True) -> sp.Point:
        """One SWAG sample as a point (`draw` with n = 1), in the model's dtype."""
        return self.space.unflatten(self.draw(1, seed, scale, cov)[0].to(self.dtype))

    # -- state ----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to continue collecting (``AveragedModel`` state, moments, deviations)."""
        out = {f"averaged.{k}": v for k, v in self.averaged.state_dict().items()}
        out.update({"mean64": self.mean64, "m2": self.m2, "deviations": self.deviations})
        return out

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> SWAG:
        avg = {k[len("averaged.") :]: v for k, v in tensors.items() if k.startswith("averaged.")}
        self.averaged.load_state_dict(avg)
        self.mean64 = tensors["mean64"].to(self.device, torch.float64).clone()
        self.m2 = tensors["m2"].to(self.device, torch.float64).clone()
        self.deviations = (
            tensors["deviations"].to(self.device, self.dtype).clone()[-self.rank :]
            if self.rank
            else torch.zeros(0, self.space.numel, dtype=self.dtype, device=self.device)
        )
        return self

    def settings(self) -> dict[str, Any]:
        return {"rank": self.rank, "var_clamp": self.var_clamp, "n": self.n, "columns": int(self.deviations.shape[0])}

    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the SWAG state as one safetensors file (atomically), with ``meta`` in its header."""
        path = Path(path)
        io.save_tensors(
            path,
            self.state_tensors(),
            {"format": SWAG_FORMAT, "meta": io.json_dumps({**dict(meta or {}), **self.settings()})},
        )
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> tuple[SWAG, dict[str, Any]]:
        """``(swag, meta)`` from a file written by `save` (``model``: the architecture)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise UserError(f"SWAG state not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise UserError(f"{path} is not a readable SWAG state ({e}): rerun swa/swag") from None
        if header.get("format") != SWAG_FORMAT:
            raise UserError(f"{path} is not a modescape SWAG state (format {header.get('format')!r})")
        meta = json.loads(header["meta"])
        swag = cls(model, rank=int(meta["rank"]), var_clamp=float(meta["var_clamp"]))
        tensors = io.load_tensors(path)
        if tensors["mean64"].shape[0] != swag.space.numel:
            raise UserError(
                f"{path} holds a SWAG state of {tensors['mean64'].shape[0]} parameters; the model has "
                f"{swag.space.numel}: pass the checkpoint it was collected from"
            )
        return swag.load_state_tensors(tensors), meta


# -- SWA from a checkpoint ---------------------------------------------------------------------------


@dataclass
class SWAResult:
    """`swa` output: the averaged point with its recomputed BatchNorm statistics, the metrics (on the test
    data: accuracy, nll, brier, ece) of the start, of the last SGD iterate and of the SWA model, the
    budget in epochs, the trainer's history, and the `SWAG` moments of the same iterates."""

    point: sp.Point
    buffers: sp.Point
    n_averaged: int
    metrics: dict[str, float]
    start: dict[str, float]
    last: dict[str, float]
    budget: dict[str, Any]
    history: list[dict[str, float]]
    swag: SWAG = field(repr=False)
    bn: str = "recompute"
    probs: Tensor | None = field(default=None, repr=False)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": self.n_averaged,
            "swa": self.metrics,
            "start": self.start,
            "last": self.last,
            "budget": self.budget,
            "history": self.history,
            "bn": self.bn,
            "swag": self.swag.settings(),
            "precision": self.precision,
        }


def _single(ev: Evaluator, point, buffers, targets) -> tuple[dict[str, float], Tensor]:
    probs = predict_proba(ev, point, "test", buffers)
    m = ensemble_metrics([probs], targets)
    return {k: m[k] for k in ("accuracy", "nll", "brier", "ece")}, probs


def swa(
    model: nn.Module,
    checkpoint: Any,
    data: Any,
    epochs: int = 10,
    lr: float = 0.01,
    start: int = 0,
    wd: float = 5e-4,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    rank: int = 20,
    out: str | Path | None = None,
    device=None,
    progress: bool | None = None,
    momentum_buffers: Mapping[str, Tensor] | None = None,
    start_epochs: int | None = None,
    precision: str | None = None,
) -> SWAResult:
    """SWA from a trained network: ``epochs`` epochs of SGD(momentum, weight decay ``wd``) at the constant
    learning rate ``lr`` from ``checkpoint`` (a module, a state, or a checkpoint path); the weights at the end
    of every epoch after the first ``start`` are averaged (``epochs - start`` iterates) and collected for
    SWAG (last ``rank`` deviations). Runs the trainer (`modescape.train.train` with the constant schedule,
    ``swa_start=start`` and ``swa_lr=lr``), so ``out`` (a run folder) makes it resumable and
    holds ``swa.safetensors`` (the averaged model with recomputed BN statistics) and ``swag.safetensors``.
    ``precision``: the evaluations' (``"fp32"`` or ``"bf16"``; training is the trainer's).
    ``momentum_buffers``: SGD's momentum at the start (see `modescape.train.momentum_of`); ``start_epochs``:
    the epochs that trained the start (from its sidecar for a path). ``model`` is not modified.
    """
    from .train import TrainConfig, train

    if not 0 <= start < epochs:
        raise UserError(f"the SWA start ({start}) must be at least 0 and below the epochs ({epochs})")
    space = sp.WeightSpace(model)
    meta: dict[str, Any] = {}
    if isinstance(checkpoint, (str, Path)):
        meta = io.read_meta(checkpoint)
        state = io.load_tensors(checkpoint)
        if start_epochs is None:
            start_epochs = budget_epochs(meta)
    else:
        state = checkpoint.state_dict() if isinstance(checkpoint, nn.Module) else dict(checkpoint)
    net = copy.deepcopy(model)
    params, buffers = space.split_state(state, "SWA start")
    io.load_state_into(net, {**dict(net.state_dict()), **params, **buffers}, source="SWA start")
    if hasattr(data, "train") and hasattr(data, "test"):
        split = data
    else:
        (xtr, ytr), test = train_test(data)
        if test is None:
            raise UserError("swa needs test data: pass a DataSplit or {'train', 'test'}")
        split = SimpleNamespace(train=(xtr, ytr), test=test, meta={})
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        wd=wd,
        optimizer="sgd",
        momentum=momentum,
        schedule="constant",
        seed=seed,
        swa_start=start,
        swa_lr=lr,
        swag_rank=rank,
    )
    first = {"weights_hash": io.tensor_hash({**params, **buffers}), "epochs": start_epochs}
    if isinstance(checkpoint, (str, Path)):
        first["checkpoint"] = str(checkpoint)
    run_meta = {"data": dict(getattr(split, "meta", {}) or {}), "start": first}
    hist = train(
        net, split, config, out=out, device=device, meta=run_meta, progress=progress, momentum_buffers=momentum_buffers
    )
    # the evaluations; training above is the trainer's
    ev, _, (_, targets) = train_test_evaluator(net, split, "swa", bn="running", device=device, precision=precision)
    start_m, _ = _single(ev, params, buffers or None, targets)
    last_m, _ = _single(ev, space.point(net), space.buffers(net) or None, targets)
    swag = hist.swag
    point = swag.mean()
    swa_m, probs = _single(ev, point, hist.swa_buffers or None, targets)
    assert hist.swa_buffers is not None  # train() sets them whenever it averages
    return SWAResult(
        point,
        hist.swa_buffers,
        swag.n,
        swa_m,
        start_m,
        last_m,
        budget(epochs, start_epochs, "swa_epochs"),
        hist.epochs,
        swag,
        default_bn(net),
        probs,
        ev.precision,
    )


# -- SWAG: Bayesian model averaging ------------------------------------------------------------------


def swag_ensemble(
    model: nn.Module,
    swag: SWAG,
    data: Any,
    n_samples: int = 30,
    scale: float = 0.5,
    cov: bool = True,
    seed: int = 0,
    bn: str | None = None,
    device=None,
    dtype=None,
    batch_size: int | None = None,
    progress: bool | None = None,
    cache: str | Path | None = None,
    budget_info: Mapping[str, Any] | None = None,
    precision: str | None = None,
) -> EnsembleResult:
    """Bayesian model averaging over ``n_samples`` SWAG samples (sample s drawn from the seed
    ``seed * 1_000_003 + s``), each evaluated on the test data of ``data`` with BatchNorm statistics
    recomputed at the sample over the training data (``bn`` default: ``recompute`` for models with
    BatchNorm, else ``running``). ``cache``: a folder where each sample's probabilities are kept, so that a
    rerun continues. ``budget_info``: the budget of the run that collected the iterates. The result's
    ``info`` holds the SWA mean's own metrics (``swa``), the settings and the evaluator's ``precision``
    (``"fp32"`` or ``"bf16"``)."""
    if n_samples < 1:
        raise UserError(f"SWAG needs at least 1 sample, got {n_samples}")
    bn = bn or default_bn(model)
    ev, _, test = train_test_evaluator(
        model, data, "SWAG", bn=bn, device=device, dtype=dtype, batch_size=batch_size, precision=precision
    )
    state_hash = io.tensor_hash({"mean64": swag.mean64, "m2": swag.m2, "deviations": swag.deviations})
    settings = {"n_samples": n_samples, "scale": scale, "cov": cov, "seed": seed}
    probs = []
    data_key = provenance.data_hash(ev) if cache is not None else None
    with bar("swag samples", n_samples, enabled=progress) as advance:
        for s in range(n_samples):
            key = {
                "swag": state_hash,
                "sample": s,
                "scale": scale,
                "cov": cov,
                "seed": seed,
                "bn": bn,
                "data": data_key,
            }
            if ev.precision != "fp32":  # fp32 keys as before: older caches stay valid
                key["precision"] = ev.precision
            probs.append(
                cached_probs(
                    cache,
                    f"sample-{s + 1:03d}",
                    key,
                    lambda s=s: predict_proba(
                        ev, sp.to(swag.sample(seed * 1_000_003 + s, scale, cov), ev.device, ev.dtype), "test"
                    ),
                )
            )
            advance(1)
    mean_m, mean_probs = _single(ev, sp.to(swag.mean(), ev.device, ev.dtype), None, test[1])
    res = evaluate_ensemble(
        probs,
        test[1],
        "swag",
        dict(budget_info or {"epochs": None}),
        bn,
        [f"sample {s + 1}" for s in range(n_samples)],
        {"swa": mean_m, "settings": settings, "swag": swag.settings(), "precision": ev.precision},
    )
    res.baselines["swa"] = mean_probs
    return res


__all__ = ["ANNEAL", "SWAG", "SWAResult", "module_at", "swa", "swa_learning_rate", "swag_ensemble"]

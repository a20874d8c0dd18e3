"""Low-loss simplices and complexes (SPRO), and their ensembles (ESPRO) (Benton et al. 2021).

Benton et al. ("Loss Surface Simplexes for Mode Connecting Volumes and Fast Ensembling", 2021) find whole
simplices of low loss around a trained network: *SPRO* grows a simplex one vertex at a time. Starting from
trained modes (frozen), each stage adds a vertex at the centroid of the existing ones (the reference's
``add_vert``), freezes every older vertex, and trains the new one to minimise

    mean over S samples c ~ Dirichlet(1) on a simplex of  loss(sum_j c_j w_j)  +  0.5 wd |w_new|^2
        -  lambda log( sum_s sqrt(V_s^2 + eps) )

per minibatch: the *mean* loss over S points drawn uniformly on the simplex (the reference sums them) and
the log-volume of the *whole* complex, every simplex's Cayley-Menger volume V_s (the reference takes
simplex 0's only); eps = 1e-4 as the reference's ``log(vol + 1e-4)``, whose ``vol`` is V^2. With one mode
this grows one simplex around it; with several modes (independently trained, or a curve's endpoints) it
grows a *complex*: every added vertex joins every mode's simplex, so the modes are joined through shared
vertices (the reference's ``complex_iterative``). The family is `modescape.families.Simplex`; every point
runs through ``Evaluator.forward`` (any ``nn.Module``; BatchNorm normalises with the batch's statistics while
training). Learning rate per stage: cosine over the stage's epochs, stepped per epoch (the reference's
``CosineAnnealingLR``), SGD with momentum. Checkpoints are one safetensors file (vertices, the trainable
vertex's momentum, settings, history), written after every epoch; a rerun resumes after the last epoch.

*ESPRO*: a simplex grown around each of several modes; the ensemble averages the softmax outputs of points
drawn from every simplex (`modescape.ensembles.ensemble_metrics`), each with its own BatchNorm statistics
under ``bn="recompute"``, and records its training budget in epochs.

>>> run = train_simplex(model, [mode], split, vertices=2, epochs=5, lam=1e-3)
>>> evaluate_simplex(run.family, Evaluator(model, {"test": split.test}, bn="recompute"), n_samples=16)
>>> espro(model, [m1, m2, m3], split, vertices=2, members=8, mode_epochs=10).ensemble
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from . import io
from . import space as sp
from .ensembles import ensemble_metrics, predict_proba
from .errors import UserError
from .evaluate import Evaluator, Metrics
from .families.simplex import Simplex
from .point_sgd import epoch_order
from .progress import bar
from .zoo import train_test

SIMPLEX_FORMAT = "modescape-simplex/1"


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The stage's learning rate in 0-based ``epoch`` of ``epochs``: lr (1 + cos(pi epoch / epochs)) / 2,
    as the reference's ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))


# -- checkpoints ----------------------------------------------------------------------------------


def save_simplex(
    family: Simplex,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a simplex or complex (vertices, simplices, which vertices train, the models' buffers, the
    trainable vertices' momentum, ``meta``) as one safetensors file, atomically."""
    path = Path(path)
    tensors = {f"vertex_{j}": family.anchor(j) for j in range(family.n_vertices)}
    for j, bufs in enumerate(family.model_buffers() or []):
        tensors.update({f"buffers_{j}/{n}": v for n, v in bufs.items()})
    if optimizer is not None:
        for j in range(family.n_vertices):
            st = optimizer.state.get(family.anchor(j), {})
            if st.get("momentum_buffer") is not None:
                tensors[f"momentum_{j}"] = st["momentum_buffer"]
    layout = {"names": list(family.layout.names), "shapes": [list(s) for s in family.layout.shapes]}
    info = {
        **dict(meta or {}),
        "vertices": family.n_vertices,
        "simplices": [list(s) for s in family.simplices],
        "trainable": list(family.trainable),
        "layout": layout,
    }
    io.save_tensors(path, tensors, {"format": SIMPLEX_FORMAT, "meta": io.json_dumps(info)})
    return path


def load_simplex(path: str | Path) -> tuple[Simplex, dict[str, Any]]:
    """Read a simplex written by `save_simplex` / `train_simplex`: ``(family, meta)``; ``family.momentum``
    holds the saved momentum buffers by vertex."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "simplex.safetensors"
    if not path.exists():
        raise UserError(f"simplex checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise UserError(f"{path} is not a readable simplex checkpoint ({e}): delete it or pick another") from None
    if header.get("format") != SIMPLEX_FORMAT:
        raise UserError(f"{path} is not a modescape simplex (format {header.get('format')!r})")
    meta = json.loads(header["meta"])
    tensors = io.load_tensors(path)
    layout = sp.Layout(tuple(meta["layout"]["names"]), tuple(tuple(s) for s in meta["layout"]["shapes"]))
    verts = [layout.unflatten(tensors[f"vertex_{j}"]) for j in range(int(meta["vertices"]))]
    buffers = []
    j = 0
    while any(k.startswith(f"buffers_{j}/") for k in tensors):
        buffers.append({k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"buffers_{j}/")})
        j += 1
    family = Simplex(verts, meta["simplices"], trainable=meta["trainable"], buffers=buffers or None)
    family.momentum = {j: tensors[f"momentum_{j}"] for j in range(family.n_vertices) if f"momentum_{j}" in tensors}
    return family, meta


# -- training ---------------------------------------------------------------------------------------


@dataclass
class SimplexRun:
    """The result of `train_simplex`: the family (every vertex frozen), per-epoch history, checkpoint, settings."""

    family: Simplex
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Training epochs spent on the added vertices (stages x epochs per stage)."""
        return int(self.config.get("vertices", 0)) * int(self.config.get("epochs", 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "history": self.history,
            "simplices": [list(s) for s in self.family.simplices],
            "volume": float(self.family.volume()),
            "checkpoint": self.checkpoint,
        }


class _EpochStats(TypedDict):
    loss: float
    error: float
    log_volume_term: float | None  # None without a volume term (lam = 0)


def _simplex_epoch(
    ev: Evaluator,
    family: Simplex,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    key: int,
    seed: int,
    batch_size: int,
    samples: int,
    lam: float,
    eps: float,
    lr: float,
    advance: Callable[[int], Any],
) -> _EpochStats:
    """One epoch of SPRO on the trainable vertices; data order and samples are functions of (seed, key).

    Each sample's point runs through the evaluator's `FlatBinding` (written into the model's flat
    parameters; the gradient with respect to it read from one flat vector and scaled onto the trainable
    vertices by `Simplex.pull_flat`), the volume term's gradient added by `Simplex.volume_step`."""
    n = x.shape[0]
    binding = ev.flat_binding()
    order = epoch_order(n, seed, key)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key) + 7_919)
    for g in opt.param_groups:
        g["lr"] = lr
    # running sums stay on the device (no host synchronisation per step): loss x samples, correct, log-volume
    loss_sum = torch.zeros((), dtype=torch.float64, device=ev.device)
    correct = torch.zeros((), dtype=torch.float64, device=ev.device)
    lv_sum = torch.zeros((), dtype=torch.float64, device=ev.device)
    seen = steps = 0
    for it in range(math.ceil(n / batch_size)):
        idx = order[it * batch_size : (it + 1) * batch_size]
        coords = family.sample(samples, generator=gen)  # drawn for every batch: the stream is fixed
        if ev.bn_modules and idx.numel() < 2:  # BatchNorm cannot normalise a single sample
            advance(1)
            continue
        xb, yb = x[idx].to(ev.device, ev.dtype), y[idx].to(ev.device)
        opt.zero_grad(set_to_none=True)
        data_loss = torch.zeros((), dtype=torch.float64, device=ev.device)
        for s in range(samples):  # each sample: its point written into the flat binding, forward, backward
            with torch.no_grad():
                coefs = family.write_flat(coords[s], binding.values)
            binding.grads.zero_()
            out = binding(xb)
            loss_s = ev.loss_fn(out, yb).mean()
            loss_s.backward()
            # the mean over the samples (one sample: its gradient vector becomes the vertex's, no copy)
            family.pull_flat([c / samples for c in coefs], binding.grads, steal=samples == 1)
            with torch.no_grad():
                data_loss += loss_s.detach()
                correct += (out.argmax(-1) == yb).sum()
        if lam:
            lv_sum += family.volume_step(eps, lam)  # the volume term's gradient, added to the data term's
        opt.step()
        loss_sum += data_loss.detach() * (idx.numel() / samples)
        seen += idx.numel()
        steps += 1
        advance(1)
    total, right = float(loss_sum), float(correct) / samples
    if not math.isfinite(total):
        raise UserError(f"simplex training diverged (loss {total}): lower the learning rate or lambda")
    return {
        "loss": total / max(seen, 1),
        "error": 1.0 - right / max(seen, 1),
        "log_volume_term": float(lv_sum) / max(steps, 1) if lam else None,
    }


def train_simplex(
    model: nn.Module,
    modes: Sequence[Any],
    data: Any,
    vertices: int = 2,
    epochs: int = 10,
    lr: float = 0.01,
    lam: float = 1e-3,
    samples: int = 5,
    wd: float = 5e-4,
    momentum: float = 0.9,
    batch_size: int = 128,
    eps: float = 1e-4,
    schedule: str = "cosine",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    device=None,
    dtype=None,
    loss=None,
    progress: bool | None = None,
) -> SimplexRun:
    """Grow a simplex (one mode) or a complex (several modes) by SPRO (see the module docstring).

    ``modes``: trained networks of ``model``'s architecture (modules, or states / points; their buffers are
    carried); ``vertices``: how many vertices to add (one stage each, ``epochs`` epochs per stage); ``lam``:
    the volume weight lambda; ``samples``: simplex points per minibatch; ``wd``: L2 on the trainable vertex
    (the reference's SGD weight decay); ``schedule``: ``"cosine"`` per stage or ``"constant"``.
    ``checkpoint``: a .safetensors path written after every epoch; a rerun with the same settings resumes
    after the last finished epoch, with the same result; ``stop_after``: end this call after that many epochs
    in all (to split a long run). ``model`` is not modified.
    """
    if vertices < 1:
        raise UserError(f"vertices (how many to add) must be at least 1, got {vertices}")
    if epochs < 1 or samples < 1 or batch_size < 1:
        raise UserError(f"epochs, samples and batch_size must be at least 1; got {epochs}, {samples}, {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"lr must be a positive number, got {lr}")
    for name, v in (("lam", lam), ("eps", eps), ("wd", wd), ("momentum", momentum)):
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"{name} must be a non-negative number, got {v}")
    if schedule not in ("cosine", "constant"):
        raise UserError(f"unknown schedule '{schedule}': use cosine or constant")
    if len(modes) < 1:
        raise UserError("SPRO needs at least one trained mode to grow a simplex from")
    space = sp.WeightSpace(model)
    states = [space.split_state(m, f"mode {i}") for i, m in enumerate(modes)]
    bufs = [b for _, b in states]
    buffers = bufs if all(bufs) else None
    (xtr, ytr), _ = train_test(data)
    ev = Evaluator(model, (xtr[:2], ytr[:2]), bn="train", device=device, dtype=dtype, loss=loss, mode="loop")
    family = Simplex([p for p, _ in states], simplices=[(i,) for i in range(len(states))], buffers=buffers)
    family = family.to(device=ev.device, dtype=ev.dtype)
    config = {
        "modes": len(states),
        "vertices": vertices,
        "epochs": epochs,
        "lr": lr,
        "lam": lam,
        "samples": samples,
        "wd": wd,
        "momentum": momentum,
        "batch_size": batch_size,
        "eps": eps,
        "schedule": schedule,
        "seed": seed,
    }

    stage0, epoch0 = 0, 0
    history: list[dict[str, float]] = []
    momenta: dict[int, Tensor] = {}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        saved, meta = load_simplex(ckpt)
        if meta.get("config") != config:
            diff = [k for k, v in config.items() if meta.get("config", {}).get(k) != v]
            raise UserError(
                f"{ckpt} holds a simplex trained with other settings ({', '.join(diff)}): "
                f"use the same settings to resume, or another checkpoint path"
            )
        space.check(saved.vertex(0), what=f"simplex in {ckpt}")
        family = saved.to(device=ev.device, dtype=ev.dtype)
        stage0, epoch0, history = int(meta["stage"]), int(meta["epoch"]), list(meta.get("history", []))
        momenta = saved.momentum
    total = vertices * epochs
    limit = total if stop_after is None else min(total, int(stop_after))
    done = (stage0 - 1) * epochs + epoch0 if stage0 else 0
    iters = math.ceil(xtr.shape[0] / batch_size)
    stage, epoch = stage0, epoch0
    with bar("growing simplex", max(0, limit - done) * iters, enabled=progress) as advance:
        while True:
            if stage == 0 or epoch >= epochs:  # the next stage: a new vertex at the centroid, the others frozen
                if stage >= vertices or stage * epochs >= limit:
                    break
                family = family.add_vertex().to(device=ev.device, dtype=ev.dtype)
                stage, epoch, momenta = stage + 1, 0, {}
            if (stage - 1) * epochs + epoch >= limit:
                break
            params = [family.anchor(j) for j, t in enumerate(family.trainable) if t]
            # weight decay on the trainable vertex, inside the SGD step (the reference's), = 0.5 wd |w|^2
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
            for j, buf in momenta.items():
                opt.state[family.anchor(j)]["momentum_buffer"] = buf.to(ev.device, ev.dtype).clone()
            while epoch < epochs and (stage - 1) * epochs + epoch < limit:
                t0 = time.perf_counter()
                lr_e = cosine_lr(lr, epoch, epochs) if schedule == "cosine" else lr
                stats = _simplex_epoch(
                    ev,
                    family,
                    opt,
                    xtr,
                    ytr,
                    (stage - 1) * epochs + epoch,
                    seed,
                    batch_size,
                    samples,
                    lam,
                    eps,
                    lr_e,
                    advance,
                )
                epoch += 1
                with torch.no_grad():
                    vol = family.log_volume()
                history.append(
                    {
                        "vertex": stage,
                        "epoch": epoch,
                        "lr": lr_e,
                        "train_loss": stats["loss"],
                        "train_error": stats["error"],
                        "log_volume": float(vol),
                        "seconds": time.perf_counter() - t0,
                    }
                )
                if ckpt is not None:
                    save_simplex(
                        family, ckpt, {"config": config, "stage": stage, "epoch": epoch, "history": history}, opt
                    )
            momenta = {}
    return SimplexRun(family.frozen(), history, ckpt, config)


# -- evaluation -------------------------------------------------------------------------------------


@dataclass
class SimplexEval:
    """Metrics at a simplex's vertices and at points drawn uniformly on it.

    ``coords`` [S, n] (the samples' barycentric coordinates), ``vertices`` (`Metrics` [n, M]), ``samples``
    (`Metrics` [S, M]), ``volume`` and ``log_volume`` (of the whole complex)."""

    coords: Tensor
    vertices: Metrics
    samples: Metrics
    volume: float
    log_volume: float

    def summary(self) -> dict[str, Any]:
        """Per metric: the vertices' values and the samples' mean, min and max."""
        out: dict[str, Any] = {
            "volume": self.volume,
            "log_volume": self.log_volume,
            "bn": self.samples.bn,
            "samples": int(self.coords.shape[0]),
        }
        for name in self.samples.names:
            v = self.samples[name]
            out[name] = {
                "vertices": self.vertices[name].tolist(),
                "mean": float(v.mean()),
                "min": float(v.min()),
                "max": float(v.max()),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "coords": self.coords.tolist(),
            "vertices": self.vertices.to_dict(None),
            "samples": self.samples.to_dict(None),
        }


def evaluate_simplex(
    family: Simplex,
    evaluator: Evaluator,
    n_samples: int = 32,
    seed: int = 0,
    by: str = "uniform",
    progress: bool | None = None,
) -> SimplexEval:
    """The evaluator's metrics at every vertex and at ``n_samples`` points drawn uniformly on the simplex
    (`Simplex.sample`, seeded), with the evaluator's BN policy (``recompute``: fresh statistics per point)."""
    if n_samples < 1:
        raise UserError(f"n_samples must be at least 1, got {n_samples}")
    coords = family.sample(n_samples, seed=seed, by=by)
    with torch.no_grad():
        at_vertices = evaluator.evaluate_family(
            family, torch.eye(family.n_vertices, dtype=torch.float64), progress=False
        )
        at_samples = evaluator.evaluate_family(family, coords, progress=progress, description="simplex samples")
        return SimplexEval(coords, at_vertices, at_samples, float(family.volume()), float(family.log_volume()))


# -- ESPRO --------------------------------------------------------------------------------------------


@dataclass
class ESPROResult:
    """`espro` output: the runs (one simplex per mode), each member's own metrics, the ensemble of all
    members (`ensemble_metrics`), the ensemble as simplices are added (``curve``), the training budget."""

    runs: list[SimplexRun]
    members: list[dict[str, float]]
    ensemble: dict[str, float]
    curve: list[dict[str, float]]
    budget: dict[str, Any]  # epochs (float, or None when a mode's is unknown), mode_epochs (a list), counts
    bn: str
    probs: list[Tensor] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ensemble": self.ensemble,
            "curve": self.curve,
            "members": self.members,
            "budget": self.budget,
            "bn": self.bn,
            "runs": [r.to_dict() for r in self.runs],
        }


def espro(
    model: nn.Module,
    modes: Sequence[Any],
    data: Any,
    vertices: int = 2,
    members: int = 8,
    epochs: int = 10,
    mode_epochs: float | Sequence[float] = 0.0,
    bn: str | None = None,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    device=None,
    dtype=None,
    progress: bool | None = None,
    **spro: Any,
) -> ESPROResult:
    """ESPRO: grow a simplex of ``vertices`` added vertices around each mode (`train_simplex`, seed
    ``seed + i`` for mode i, other settings ``**spro``), draw ``members`` points uniformly from each
    (seeded), and ensemble their softmax outputs on the test data.

    ``bn``: the members' BN policy (default: ``recompute`` for BatchNorm models, else ``running``);
    ``mode_epochs``: epochs spent training each mode (one number for all, or one per mode), for the budget:
    ``budget["epochs"]`` = the modes' epochs + modes x vertices x epochs; ``checkpoint_dir``: one resumable
    ``simplex-NN.safetensors`` per mode.
    """
    from .evaluate import default_bn

    (xtr, ytr), test = train_test(data)
    if test is None:
        raise UserError("espro needs test data to evaluate the ensemble: pass a DataSplit or {'train', 'test'}")
    if members < 1:
        raise UserError(f"members (points per simplex) must be at least 1, got {members}")
    bn = bn or default_bn(model)
    ev = Evaluator(
        model, {"train": (xtr, ytr), "test": test}, metrics=("loss", "accuracy"), bn=bn, device=device, dtype=dtype
    )
    runs, member_rows, probs, curve = [], [], [], []
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    for i, mode in enumerate(modes):
        ckpt = folder / f"simplex-{i:02d}.safetensors" if folder is not None else None
        run = train_simplex(
            model,
            [mode],
            data,
            vertices=vertices,
            epochs=epochs,
            seed=seed + i,
            checkpoint=ckpt,
            device=device,
            dtype=dtype,
            progress=progress,
            **spro,
        )
        runs.append(run)
        fam = run.family.to(device=ev.device, dtype=ev.dtype)
        coords = fam.sample(members, seed=seed + i)
        for c in coords:
            with torch.no_grad():
                point = fam(c)
                pr = predict_proba(ev, point, "test", fam.buffers_at(c) if bn == "running" else None)
            single = ensemble_metrics([pr], test[1])
            member_rows.append(
                {"simplex": i, "accuracy": single["accuracy"], "nll": single["nll"], "coords": c.tolist()}
            )
            probs.append(pr)
        curve.append({"simplices": i + 1, **ensemble_metrics(probs, test[1])})
    simplex_epochs = sum(r.epochs for r in runs)
    per_mode = (
        [float(mode_epochs)] * len(modes) if isinstance(mode_epochs, (int, float)) else [float(e) for e in mode_epochs]
    )
    if len(per_mode) != len(modes):
        raise UserError(f"mode_epochs has {len(per_mode)} entries for {len(modes)} modes")
    budget = {
        "epochs": float(sum(per_mode) + simplex_epochs),
        "mode_epochs": per_mode,
        "simplex_epochs": float(simplex_epochs),
        "sample_passes": float(sum(r.epochs * int(r.config["samples"]) for r in runs)),
        "modes": len(modes),
        "members": len(probs),
    }
    return ESPROResult(runs, member_rows, curve[-1], curve, budget, bn, probs)


__all__ = [
    "ESPROResult",
    "SIMPLEX_FORMAT",
    "SimplexEval",
    "SimplexRun",
    "cosine_lr",
    "espro",
    "evaluate_simplex",
    "load_simplex",
    "save_simplex",
    "train_simplex",
]

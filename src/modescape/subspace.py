"""Training in random subspaces, the intrinsic dimension, the radial experiment, and wedges.

**Random subspaces** (Li et al. 2018, "Measuring the intrinsic dimension of objective landscapes"): train only
z in theta = theta_0 + P z, with theta_0 the initialisation and P a fixed random D x d projection
(`modescape.families.subspace`: dense Gaussian with unit columns, sparse, or Fastfood; chosen by size).
`train_subspace` runs `modescape.point_sgd.sgd_epoch` on the point theta_0 + P z with z the only parameter, so
the gradient with respect to z is P^T grad by the chain rule; with P = I it is plain training.
`intrinsic_dimension` trains at several d and reports d_int90: the smallest d whose test accuracy reaches
90% of full training's (Li et al.'s definition; full training with the same settings unless given).

**Radial experiment** (Fort and Jastrzebski 2019, "Large scale structure of neural network loss
landscapes"): move theta_0 a distance r along a random unit direction, train in a d-dimensional random
subspace from there, and record the loss it reaches for each r (`radial`).

**Wedges** (Fort and Jastrzebski 2019, Sec. 4): n independently trained optima are joined to one shared
*connector* point trained so that every segment optimum-connector has low loss (a star of low-loss paths):
`wedge` trains it as a complex whose simplices are the segments {optimum_i, connector}
(`modescape.simplex.train_simplex` with one added vertex and no volume term: t ~ U[0, 1] on a segment drawn
uniformly per sample), then measures every pair's path before (the straight segment o_i o_j) and after (the
polygonal path o_i -> connector -> o_j) with `modescape.paths.evaluate_path`, and sweeps the plane through
three optima (before) and the plane through two optima and the connector (after) with
`modescape.landscape.sweep`.

>>> ids = intrinsic_dimension(model, init, split, dims=[10, 100, 1000], epochs=5)
>>> ids.d_int90, ids.to_dict()["rows"]
>>> w = wedge(model, [a, b, c], split, epochs=5)
>>> w.summary()  # barriers of every pair before and after the connector
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import io
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator, default_bn
from .families.curves import PolyChain
from .families.lines import Line, PlaneThrough
from .families.subspace import AffineSubspace, make_projection
from .point_sgd import sgd_epoch
from .progress import bar
from .train import TrainConfig, learning_rate
from .zoo import train_test

SUBSPACE_FORMAT = "modescape-subspace/1"
OPTIMIZERS = ("sgd", "adam")


# -- training in a subspace -------------------------------------------------------------------------


@dataclass
class SubspaceRun:
    """`train_subspace` output: the family theta_0 + P z, the trained z, history, checkpoint, settings, and
    the final metrics (train and test loss and accuracy, with ``bn``)."""

    family: AffineSubspace
    z: Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | str] = field(default_factory=dict)

    def point(self) -> sp.Point:
        """theta_0 + P z as a point (detached)."""
        with torch.no_grad():
            return {k: v.detach() for k, v in self.family.layout.unflatten(self.family.at(self.z)).items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "history": self.history,
            "metrics": self.metrics,
            "projection": self.family.projection.describe(),
            "checkpoint": self.checkpoint,
        }


def _save_run(path: Path, z: Tensor, opt: torch.optim.Optimizer, meta: Mapping[str, Any]) -> None:
    tensors = {"z": z.detach()}
    numbers = {}
    for key, val in opt.state.get(z, {}).items():
        if torch.is_tensor(val):
            tensors[f"opt/{key}"] = val
        else:
            numbers[key] = val
    io.save_tensors(path, tensors, {"format": SUBSPACE_FORMAT, "meta": io.json_dumps({**meta, "opt": numbers})})


def _load_run(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise UserError(f"{path} is not a readable subspace checkpoint ({e}): delete it or pick another") from None
    if header.get("format") != SUBSPACE_FORMAT:
        raise UserError(f"{path} is not a modescape subspace run (format {header.get('format')!r})")
    return io.load_tensors(path), json.loads(header["meta"])


def evaluate_point(
    model: nn.Module,
    data: Any,
    point: Mapping[str, Tensor],
    bn: str | None = None,
    buffers: Mapping[str, Tensor] | None = None,
    device=None,
    dtype=None,
) -> dict[str, float | str]:
    """Train and test loss and accuracy of ``point`` (BN policy ``bn``, default `default_bn`), plus ``bn``."""
    (xtr, ytr), test = train_test(data)
    sources = {"train": (xtr, ytr), **({"test": test} if test is not None else {})}
    ev = Evaluator(
        model,
        sources,
        metrics=("loss", "accuracy"),
        bn=bn or default_bn(model),
        device=device,
        dtype=dtype,
        mode="loop",
    )
    row = ev([point], buffers=None if buffers is None else [buffers]).row(0)
    return {**row, "bn": ev.bn}


def train_subspace(
    model: nn.Module,
    start: Any,
    data: Any,
    dim: int,
    projection: str = "auto",
    epochs: int = 10,
    lr: float = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    wd: float = 0.0,
    batch_size: int = 128,
    schedule: str = "constant",
    seed: int = 0,
    projection_seed: int | None = None,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    evaluate: bool = True,
    device=None,
    dtype=None,
    loss=None,
    progress: bool | None = None,
) -> SubspaceRun:
    """Train z in theta_0 + P z from z = 0: ``start`` is theta_0 (a module, state or point: usually the
    initialisation), ``dim`` = d, ``projection`` in `PROJECTIONS` (``identity`` needs d = D: plain
    training), seeded by ``projection_seed`` (default ``seed``).

    One epoch is `modescape.point_sgd.sgd_epoch` on the point theta_0 + P z: the data order of
    `modescape.point_sgd.epoch_order`, the loss plus 0.5 wd |theta|^2, ``optimizer`` ``"sgd"`` (with
    ``momentum``) or ``"adam"`` on z, learning rate by `modescape.train.learning_rate` (``schedule``
    ``constant`` | ``step`` | ``cosine``). ``checkpoint``: a .safetensors path written after every epoch (z and
    the optimiser state; the projection is rebuilt from its seed); a rerun resumes after the last epoch with
    the same result; ``stop_after``: end this call after that epoch. ``evaluate``: measure the final point
    (``SubspaceRun.metrics``). ``model`` is not modified.
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{optimizer}': use sgd or adam")
    for name, v in (("lr", lr), ("wd", wd), ("momentum", momentum)):
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"{name} must be a non-negative number, got {v}")
    tconfig = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        wd=wd,
        optimizer=optimizer,
        momentum=momentum,
        schedule=schedule,
        seed=seed,
    )
    tconfig.check()
    space = sp.WeightSpace(model)
    origin, buffers = space.split_state(start, "start point theta_0")
    (xtr, ytr), _ = train_test(data)
    ev = Evaluator(model, (xtr[:2], ytr[:2]), bn="train", device=device, dtype=dtype, loss=loss, mode="loop")
    pseed = seed if projection_seed is None else int(projection_seed)
    proj = make_projection(
        projection,
        space.numel,
        dim if projection != "identity" else space.numel,
        pseed,
        dtype=ev.dtype,
        device=ev.device,
    )
    family = AffineSubspace(sp.to(origin, ev.device, ev.dtype), proj, buffers or None)
    z = torch.zeros(proj.d, device=ev.device, dtype=ev.dtype, requires_grad=True)
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD([z], lr=lr, momentum=momentum, weight_decay=0.0)
    else:
        opt = torch.optim.Adam([z], lr=lr)
    config = {
        "dim": proj.d,
        "projection": proj.kind,
        "projection_seed": pseed,
        "epochs": epochs,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "wd": wd,
        "batch_size": batch_size,
        "schedule": schedule,
        "seed": seed,
        "origin_hash": io.tensor_hash(origin),
    }
    start_epoch, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        tensors, meta = _load_run(ckpt)
        if meta.get("config") != config:
            diff = [k for k, v in config.items() if meta.get("config", {}).get(k) != v]
            raise UserError(
                f"{ckpt} holds a subspace run with other settings ({', '.join(diff)}): use the same "
                f"settings to resume, or another checkpoint path"
            )
        with torch.no_grad():
            z.copy_(tensors["z"].to(z))
        state = {k.split("/", 1)[1]: v.to(ev.device) for k, v in tensors.items() if k.startswith("opt/")}
        state.update(meta.get("opt", {}))
        if state:
            opt.load_state_dict({"state": {0: state}, "param_groups": opt.state_dict()["param_groups"]})
        start_epoch, history = int(meta["epoch"]), list(meta.get("history", []))

    class Step:  # theta_0 + P z written into the evaluator's flat binding; z's gradient P^T g (`sgd_epoch`)
        def write(self, gen: torch.Generator, out: Tensor) -> None:
            family.write_flat(z, out)

        def pull(self, state: None, grad: Tensor) -> None:
            family.pull_flat(z, grad)

    iters = math.ceil(xtr.shape[0] / batch_size)
    stop = epochs if stop_after is None else max(start_epoch, min(epochs, int(stop_after)))
    with bar(f"subspace d={proj.d}", (stop - start_epoch) * iters, enabled=progress) as advance:
        for epoch in range(start_epoch, stop):
            t0 = time.perf_counter()
            lr_at = functools.partial(learning_rate, tconfig, epoch)  # (step, steps) -> this epoch's rate
            stats = sgd_epoch(
                ev, [z], opt, None, xtr, ytr, epoch, seed, batch_size, wd, lr_at, advance, flat_step=Step()
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": stats["loss"],
                    "train_error": stats["error"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            if ckpt is not None:
                _save_run(ckpt, z, opt, {"config": config, "epoch": epoch + 1, "history": history})
    run = SubspaceRun(family, z.detach(), history, ckpt, config)
    if evaluate and stop == epochs:
        run.metrics = evaluate_point(
            model, data, run.point(), buffers=buffers or None, device=ev.device, dtype=ev.dtype
        )
    return run


# -- the intrinsic dimension ------------------------------------------------------------------------


@dataclass
class IntrinsicDimension:
    """Accuracy against subspace dimension (Li et al. 2018).

    ``rows``: one dict per d (``dim``, ``projection``, train/test loss and accuracy, ``seconds``);
    ``full``: full training's metrics; ``threshold`` (0.9) and ``metric`` (``test_accuracy``) define
    d_int90: the smallest d whose metric reaches threshold x full (None when none does)."""

    rows: list[dict[str, Any]]
    full: dict[str, Any]
    threshold: float = 0.9
    metric: str = "test_accuracy"

    @property
    def dims(self) -> list[int]:
        return [int(r["dim"]) for r in self.rows]

    @property
    def target(self) -> float:
        return self.threshold * float(self.full[self.metric])

    @property
    def d_int90(self) -> int | None:
        hits = [int(r["dim"]) for r in self.rows if float(r[self.metric]) >= self.target]
        return min(hits) if hits else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "full": self.full,
            "threshold": self.threshold,
            "metric": self.metric,
            "target": self.target,
            "d_int90": self.d_int90,
        }


def intrinsic_dimension(
    model: nn.Module,
    start: Any,
    data: Any,
    dims: Sequence[int],
    projection: str = "auto",
    full: Mapping[str, Any] | None = None,
    threshold: float = 0.9,
    metric: str = "test_accuracy",
    out: str | Path | None = None,
    progress: bool | None = None,
    **train: Any,
) -> IntrinsicDimension:
    """Train in a random subspace of each dimension in ``dims`` from ``start`` (`train_subspace`, settings
    ``**train``) and find d_int90. ``full``: full training's metrics (a dict with ``metric``); default:
    train with P = I under the same settings. ``out``: a folder for resumable per-run checkpoints
    (``subspace-d{d}.safetensors``, ``full.safetensors``)."""
    if not dims:
        raise UserError("intrinsic_dimension needs at least one subspace dimension")
    if not 0 < threshold <= 1:
        raise UserError(f"threshold must be in (0, 1], got {threshold}")
    folder = Path(out) if out is not None else None

    def ckpt(name: str) -> Path | None:
        return folder / f"{name}.safetensors" if folder is not None else None

    if full is None:
        D = sp.WeightSpace(model).numel
        run = train_subspace(model, start, data, D, "identity", checkpoint=ckpt("full"), progress=progress, **train)
        full = {
            **run.metrics,
            "dim": D,
            "projection": "identity",
            "seconds": float(sum(h["seconds"] for h in run.history)),
        }
    if metric not in full:
        raise UserError(f"full training's metrics have no '{metric}'; have {sorted(full)}")
    rows = []
    for d in sorted(int(x) for x in dims):
        run = train_subspace(
            model, start, data, d, projection, checkpoint=ckpt(f"subspace-d{d}"), progress=progress, **train
        )
        rows.append(
            {
                "dim": d,
                "projection": run.config["projection"],
                **run.metrics,
                "seconds": float(sum(h["seconds"] for h in run.history)),
            }
        )
    return IntrinsicDimension(rows, dict(full), threshold, metric)


# -- the radial experiment --------------------------------------------------------------------------


@dataclass
class RadialResult:
    """`radial` output: one row per distance r (``r``, ``start_norm`` = |theta_0 + r u|, ``start_loss``, the
    final train/test loss and accuracy), the subspace dimension and the direction's seed."""

    rows: list[dict[str, Any]]
    dim: int
    direction_seed: int

    @property
    def radii(self) -> list[float]:
        return [float(r["r"]) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "dim": self.dim, "direction_seed": self.direction_seed}


def radial(
    model: nn.Module,
    start: Any,
    data: Any,
    radii: Sequence[float],
    dim: int,
    direction_seed: int = 0,
    out: str | Path | None = None,
    progress: bool | None = None,
    **train: Any,
) -> RadialResult:
    """For each r in ``radii``: theta_0' = theta_0 + r u (u a seeded Gaussian direction of unit norm over
    all parameters), train a ``dim``-dimensional random subspace from theta_0' (`train_subspace`,
    ``**train``; the same projection seed for every r) and record the loss reached."""
    from .directions import random_direction

    space = sp.WeightSpace(model)
    origin, buffers = space.split_state(start, "start point theta_0")
    u = random_direction(origin, normalization="none", ignore="none", seed=direction_seed)
    unorm = float(sp.norm(sp.to(u, dtype=torch.float64)))
    u = sp.scale(u, 1.0 / unorm)
    folder = Path(out) if out is not None else None
    rows = []
    for r in radii:
        moved = {**sp.axpy(float(r), u, origin), **(buffers or {})}
        before = evaluate_point(
            model,
            data,
            sp.axpy(float(r), u, origin),
            buffers=buffers or None,
            device=train.get("device"),
            dtype=train.get("dtype"),
        )
        ck = folder / f"radial-r{float(r):g}.safetensors" if folder is not None else None
        run = train_subspace(model, moved, data, dim, checkpoint=ck, progress=progress, **train)
        norm = float(sp.norm(sp.to(sp.axpy(float(r), u, origin), dtype=torch.float64)))
        rows.append(
            {
                "r": float(r),
                "start_norm": norm,
                "start_loss": before["train_loss"],
                **run.metrics,
                "seconds": float(sum(h["seconds"] for h in run.history)),
            }
        )
    return RadialResult(rows, int(dim), int(direction_seed))


# -- wedges -----------------------------------------------------------------------------------------


@dataclass
class WedgeResult:
    """`wedge` output.

    ``connector``: the trained shared point; ``before``: {"i-j": `PathResult` of the segment o_i o_j};
    ``after``: {"i-j": the path o_i -> connector -> o_j}; ``spokes``: {"i": the segment o_i -> connector};
    ``planes``: {"before": Dataset on the plane through optima 0, 1, 2 (when there are three),
    "after": Dataset on the plane through optima 0, 1 and the connector}; ``run``: the connector's training.
    """

    connector: sp.Point
    before: dict[str, Any]
    after: dict[str, Any]
    spokes: dict[str, Any]
    planes: dict[str, Any]
    run: Any
    metric: str = "test_error"

    def summary(self) -> dict[str, Any]:
        """Per pair: the max of ``metric`` and both barriers, before and after; per spoke: its max."""

        def row(res):
            s = res.summary()[self.metric]
            return {"max": s["max"], "barrier_linear": s.get("barrier_linear"), "barrier_mean": s.get("barrier_mean")}

        return {
            "metric": self.metric,
            "before": {k: row(v) for k, v in self.before.items()},
            "after": {k: row(v) for k, v in self.after.items()},
            "spokes": {k: self.spokes[k].summary()[self.metric]["max"] for k in self.spokes},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "history": self.run.history,
            "config": self.run.config,
            "before": {k: v.to_dict() for k, v in self.before.items()},
            "after": {k: v.to_dict() for k, v in self.after.items()},
            "spokes": {k: v.to_dict() for k, v in self.spokes.items()},
        }


def _plane(a, b, c, evaluator: Evaluator, n_points: int, margin: float, labels: Sequence[str], progress):
    from .landscape import auto_range, sweep

    plane = PlaneThrough(a, b, c)
    mc = plane.model_coords.numpy()
    xs = auto_range(mc[:, 0], n_points, margin)
    ys = auto_range(mc[:, 1], n_points, margin)
    return sweep(
        plane,
        evaluator,
        {"x": xs, "y": ys},
        progress=progress,
        attrs={"models": {"labels": list(labels), "coords": mc.tolist()}},
    )


def wedge(
    model: nn.Module,
    optima: Sequence[Any],
    data: Any,
    epochs: int = 10,
    lr: float = 0.01,
    samples: int = 1,
    wd: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
    n_points: int = 31,
    plane_points: int = 21,
    margin: float = 0.2,
    bn: str | None = None,
    metric: str = "test_error",
    checkpoint: str | Path | None = None,
    device=None,
    dtype=None,
    progress: bool | None = None,
    **spro: Any,
) -> WedgeResult:
    """The wedge test (see the module docstring): train one connector shared by all ``optima`` (at least
    two), then measure every pair's path before and after, every spoke, and the planes before and after
    (``plane_points`` x ``plane_points``; 0 skips them). ``bn``: the evaluation's BN policy (default
    `default_bn`); the evaluator measures train and test loss and error."""
    from .paths import evaluate_path
    from .simplex import train_simplex

    if len(optima) < 2:
        raise UserError(f"the wedge test joins at least two optima; got {len(optima)}")
    run = train_simplex(
        model,
        optima,
        data,
        vertices=1,
        epochs=epochs,
        lr=lr,
        lam=0.0,
        samples=samples,
        wd=wd,
        batch_size=batch_size,
        seed=seed,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        progress=progress,
        **spro,
    )
    fam = run.family
    m = len(optima)
    pts = fam.vertices()
    conn = pts[m]
    (xtr, ytr), test = train_test(data)
    sources = {"train": (xtr, ytr), **({"test": test} if test is not None else {})}
    ev = Evaluator(model, sources, metrics=("loss", "error"), bn=bn or default_bn(model), device=device, dtype=dtype)
    if metric not in ev.names:
        raise UserError(f"metric '{metric}' is not measured; use one of {list(ev.names)}")
    before, after, spokes = {}, {}, {}
    with torch.no_grad():
        for i in range(m):
            spokes[str(i)] = evaluate_path(Line(pts[i], conn), ev, n_points, name=f"spoke {i}", progress=False)
            for j in range(i + 1, m):
                before[f"{i}-{j}"] = evaluate_path(
                    Line(pts[i], pts[j]), ev, n_points, name=f"segment {i}-{j}", progress=False
                )
                after[f"{i}-{j}"] = evaluate_path(
                    PolyChain([pts[i], conn, pts[j]]),
                    ev,
                    2 * n_points - 1,
                    name=f"via connector {i}-{j}",
                    progress=False,
                )
        planes = {}
        if plane_points > 1:
            evp = Evaluator(
                model,
                {k: v for k, v in sources.items() if k == metric.split("_")[0]},
                metrics=(metric.split("_", 1)[1],),
                bn=ev.bn,
                bn_data=(xtr, ytr),
                device=device,
                dtype=dtype,
            )
            if m >= 3:
                planes["before"] = _plane(pts[0], pts[1], pts[2], evp, plane_points, margin, ["A", "B", "C"], progress)
            planes["after"] = _plane(pts[0], pts[1], conn, evp, plane_points, margin, ["A", "B", "connector"], progress)
    return WedgeResult(conn, before, after, spokes, planes, run, metric)


__all__ = [
    "IntrinsicDimension",
    "OPTIMIZERS",
    "RadialResult",
    "SUBSPACE_FORMAT",
    "SubspaceRun",
    "WedgeResult",
    "evaluate_point",
    "intrinsic_dimension",
    "radial",
    "train_subspace",
    "wedge",
]

"""Paths between points and what is measured along them: the one home of path evaluation.

A path is any 1-d family t -> point: the straight segment between two models (Goodfellow et al. 2015),
a trained Bezier curve or polygonal chain (Garipov et al. 2018), the swap path of two units (Brea et al.
2019), the line from a model to an aligned one, REPAIRed or not (Ainsworth et al. 2022; Jordan et al.
2022). `evaluate_path` measures a path at T values of t through the `Evaluator` (its metrics, its BN
policy; a family between models carries their buffers) and returns a `PathResult`: the metrics, the arc
length and the barriers of `modescape.barrier`, both conventions, each by name. ``interpolate``,
``connect``, ``path``, ``align`` and ``swap`` all go through here.

```python
>>> res = evaluate_path((model_a, model_b), Evaluator(model_a, {"train": tr, "test": te}, bn="recompute"))
>>> res.barriers()["test_loss"]["barrier_mean"], res.summary()["train_loss"]["max"]
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import space as sp
from .barrier import barrier
from .errors import UserError
from .evaluate import Evaluator, Metrics
from .families.base import Family, LinearFamily
from .families.lines import Line


def segment(a: nn.Module | Mapping[str, Tensor], b: nn.Module | Mapping[str, Tensor], space: sp.WeightSpace) -> Line:
    """The straight segment (1 - t) a + t b between two models or states (parameters, optionally with
    buffers), carrying both models' buffers when both have them (else none: the evaluator's)."""
    pa, ba = space.split_state(a, "endpoint A")
    pb, bb = space.split_state(b, "endpoint B")
    return Line(pa, pb, buffers=[ba, bb] if ba and bb else None)


def barrier_metric(name: str) -> str | None:
    """The name a metric's barrier is reported under: losses and errors as themselves, an accuracy as the
    error ``1 - accuracy`` (a barrier is a rise), anything else not at all."""
    if name.endswith("accuracy"):
        return name[: -len("accuracy")] + "error"
    if name.endswith("loss") or name.endswith("error"):
        return name
    return None


@dataclass
class PathResult:
    """Metrics along a path: ``t`` [T], ``metrics`` [T, M], ``dl`` [T] (dl[i] = |w(t_i) - w(t_{i-1})|).

    ``ends``: the metrics at t = 0 and t = 1 when ``t`` does not hold them (barriers and the ``start`` /
    ``end`` of the summary use them); ``dataset``: the stored result, when the path was evaluated into a
    result store.
    """

    t: Tensor
    metrics: Metrics
    dl: Tensor
    name: str = "path"
    ends: Metrics | None = None
    dataset: Any = field(default=None, repr=False)

    @property
    def bn(self) -> str:
        return self.metrics.bn

    @property
    def precision(self) -> str:
        """The evaluator's precision (``fp32``, ``bf16``)."""
        return self.metrics.precision

    @property
    def length(self) -> float:
        return float(self.dl.sum())

    def values(self, metric: str) -> Tensor:
        return self.metrics[metric]

    def on_unit(self, metric: str) -> tuple[Tensor, Tensor]:
        """``(t, values)`` of ``metric`` on [0, 1], ends included, in order of t."""
        t, v = self.t.double(), self.metrics[metric].double()
        inside = (t >= 0) & (t <= 1)
        t, v = t[inside], v[inside]
        if self.ends is not None:
            t = torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), t])
            v = torch.cat([self.ends[metric].double(), v])
        order = torch.argsort(t, stable=True)
        return t[order], v[order]

    def barriers(self) -> dict[str, dict[str, float]]:
        """``{metric: {"barrier_linear", "barrier_mean"}}`` on [0, 1] for every loss and error (an
        accuracy as its error); see `modescape.barrier`."""
        out: dict[str, dict[str, float]] = {}
        for name in self.metrics.names:
            key = barrier_metric(name)
            if key is None or (key != name and key in self.metrics.names):
                continue
            t, v = self.on_unit(name)
            out[key] = barrier(1.0 - v if key != name else v, t)
        return out

    def summary(self) -> dict[str, Any]:
        """Per metric: start (t = 0), end (t = 1), min, max, mean, int (arc-length weighted mean) over
        the evaluated t, and for losses and errors barrier_linear and barrier_mean; plus ``length``,
        ``points`` and the BN policy."""
        out: dict[str, Any] = {"length": self.length, "points": int(self.t.numel()), "bn": self.bn}
        bars = self.barriers()
        for name in self.metrics.names:
            v = self.metrics[name].double()
            seg = 0.5 * (v[1:] + v[:-1])
            dl = self.dl[1:].double()
            integral = float((seg * dl).sum() / dl.sum()) if float(dl.sum()) > 0 else float(v.mean())
            _, unit = self.on_unit(name)
            out[name] = {
                "start": float(unit[0]),
                "end": float(unit[-1]),
                "min": float(v.min()),
                "max": float(v.max()),
                "mean": float(v.mean()),
                "int": integral,
                **bars.get(name, {}),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bn": self.bn,
            "precision": self.precision,
            "t": self.t.tolist(),
            "dl": self.dl.tolist(),
            "metrics": {n: self.metrics[n].tolist() for n in self.metrics.names},
            "barriers": self.barriers(),
            "summary": self.summary(),
        }

    def to_xarray(self) -> Any:  # an xarray.Dataset (xarray imported on use)
        """The metrics as an ``xarray.Dataset`` over ``t`` (the stored one when there is one)."""
        if self.dataset is not None:
            return self.dataset
        import xarray as xr

        return xr.Dataset(
            {n: ("t", self.metrics[n].numpy()) for n in self.metrics.names},
            coords={"t": self.t.numpy()},
            attrs={"bn": self.bn, "precision": self.precision, "name": self.name},
        )


def as_path(path: Any, space: sp.WeightSpace) -> tuple[Family, str]:
    """A 1-d family from a family or a pair (a, b) of models / states; and its default name."""
    if isinstance(path, Family):
        if path.dim != 1:
            raise UserError(f"a path is a 1-d family; {type(path).__name__} has {path.dim} coordinates")
        return path, getattr(path, "kind", None) or ("segment" if isinstance(path, Line) else "path")
    if isinstance(path, (tuple, list)) and len(path) == 2:
        return segment(path[0], path[1], space), "segment"
    raise UserError("a path is a 1-d family (a curve, a line) or a pair (a, b) of models or points")


def _arc_lengths(family: Family, ts: Tensor, space: sp.WeightSpace) -> Tensor:
    """dl [T]: |w(t_i) - w(t_{i-1})| (dl[0] = 0), a chunk of points at a time."""
    dls, prev = [torch.zeros(1, dtype=torch.float64)], None
    with torch.no_grad():
        for i in range(0, ts.numel(), 64):
            chunk = ts[i : i + 64]
            flat = (
                family.flat(chunk) if isinstance(family, LinearFamily) else space.layout.flatten_stacked(family(chunk))
            )
            seq = flat if prev is None else torch.cat([prev, flat])
            dls.append((seq[1:] - seq[:-1]).double().norm(dim=1).cpu())
            prev = flat[-1:]
    return torch.cat(dls)[: ts.numel()]


def evaluate_path(
    path: Any,
    evaluator: Evaluator,
    n_points: int = 61,
    t: Any = None,
    name: str | None = None,
    store: str | os.PathLike | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> PathResult:
    """Evaluate a path at ``n_points`` equally spaced t in [0, 1], or at the values ``t`` (any range).

    ``path``: a 1-d family (a `Curve`, a `Line`, a `SwapPath`, a REPAIRed line) or a pair ``(a, b)`` of
    models or states for the straight segment. The evaluator's metrics and BN policy apply at every point
    (``bn="recompute"``: fresh statistics at each point; ``running``: the buffers the family carries).
    When ``t`` lacks 0 or 1 the ends are evaluated too (`PathResult.ends`). ``store``: a ``.zarr`` path
    makes the evaluation resumable and labelled (`modescape.landscape.sweep`, linear families only).
    """
    family, default_name = as_path(path, evaluator.space)
    label = name or default_name
    if t is None:
        if n_points < 2:
            raise UserError(f"a path needs at least 2 points; got n_points={n_points}")
        ts = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    else:
        ts = torch.as_tensor(np.asarray(t, dtype=np.float64)).reshape(-1)
        if ts.numel() < 2:
            raise UserError(f"a path needs at least 2 values of t; got {ts.numel()}")
    dl = _arc_lengths(family, ts, evaluator.space)
    dataset = None
    with torch.no_grad():
        if store is not None:
            if not isinstance(family, LinearFamily):
                raise UserError("only a linear family's path can be evaluated into a result store")
            from .landscape import sweep

            dataset = sweep(family, evaluator, {"t": ts.numpy()}, store=store, attrs=attrs, progress=progress)
            values = torch.from_numpy(np.stack([dataset[n].values for n in evaluator.names], axis=1))
            m = Metrics(
                values,
                evaluator.names,
                evaluator.bn,
                dataset.attrs.get("eval_mode", ""),
                dataset.attrs.get("precision", "fp32"),
            )
        else:
            m = evaluator.evaluate_family(family, ts, progress=progress, description=f"evaluating {label}")
        has_ends = bool((ts == 0).any()) and bool((ts == 1).any())
        ends = (
            None
            if has_ends
            else evaluator.evaluate_family(family, torch.tensor([0.0, 1.0], dtype=torch.float64), progress=False)
        )
    return PathResult(ts, m, dl, label, ends, dataset)


__all__ = ["PathResult", "as_path", "barrier_metric", "evaluate_path", "segment"]

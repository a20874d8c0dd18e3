"""Alignment end to end: match B to A, then measure the straight line A -> B before and after.

`interpolation(model, a, b, data)` evaluates (1 - t) A + t B at T >= 25 evenly spaced t through the
`Evaluator` (train and test loss and accuracy) and reports the barrier of each metric
(`modescape.barrier`, the one definition; for accuracy, the barrier of the error 1 - accuracy).
`align(model, a, b, data, method=...)` runs one matching method, permutes B, and measures the line
before alignment, after, and after with REPAIR; `plot_curves` draws them on one figure.

States ``a``, ``b`` are dicts of parameters plus (for BatchNorm models) buffers. The BN policy of
every curve is recorded: ``recompute`` (fresh statistics at every point: the plain BN reset) by
default for BN models; ``running`` interpolates the endpoints' running statistics instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .. import space as sp
from ..barrier import barrier
from ..errors import UserError
from ..evaluate import Evaluator
from .match import activation_matching, ste_matching, weight_matching
from .repair import Repairer
from .spec import Perms, PermutationSpec, apply, infer_spec

METHODS = ("weights", "activations", "ste")


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers of a model as one dict of detached copies."""
    return {k: v.detach().clone() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}


def has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class Curve:
    """Metrics along a line: ``t`` [T], ``values`` {metric: [T]}, ``barriers`` {metric: barrier dict}."""

    t: Tensor
    values: dict[str, Tensor]
    barriers: dict[str, dict[str, float]]
    bn: str
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t.tolist(), "values": {k: v.tolist() for k, v in self.values.items()},
                "barriers": self.barriers, "bn": self.bn, "repaired": self.repaired}


def _barriers(t: Tensor, values: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    out = {}
    for name, v in values.items():
        if name.endswith("accuracy"):
            out[name[: -len("accuracy")] + "error"] = barrier(1.0 - v, t)
        elif name.endswith("loss") or name.endswith("error"):
            out[name] = barrier(v, t)
    return out


def interpolation(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], data: Any,
                  n_points: int = 25, bn: str | None = None, repair_data: Any = None,
                  spec: PermutationSpec | None = None, evaluator: Evaluator | None = None,
                  repair_batches: int = 10, progress: bool | None = None) -> Curve:
    """Metrics of (1 - t) a + t b at ``n_points`` evenly spaced t in [0, 1] (REPAIRed with ``repair_data``).

    ``data``: ``{"train": ..., "test": ...}`` (or one source) for the Evaluator; ``bn``: the policy,
    default ``recompute`` for BN models, ``running`` otherwise (with ``running`` the endpoints'
    buffers are interpolated too).
    """
    if n_points < 2:
        raise UserError(f"n_points must be >= 2; got {n_points}")
    bn = bn or ("recompute" if has_bn(model) else "running")
    ev = evaluator or Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn, progress=progress)
    if ev.bn != bn:
        raise UserError(f"the evaluator uses bn='{ev.bn}', but bn='{bn}' was asked for")
    names = ev.space.names
    t = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    pa, pb = {n: a[n] for n in names}, {n: b[n] for n in names}
    if repair_data is not None:
        rep = Repairer(model, a, b, repair_data, spec=spec, max_batches=repair_batches)
        points = sp.stack([rep(float(s)) for s in t])
    else:
        first = next(iter(pa.values()))
        points = sp.lerp(pa, pb, t.to(device=first.device, dtype=first.dtype))
    buffers = None
    if bn == "running" and ev.buffers:
        ba = {k: a.get(k, v) for k, v in ev.buffers.items()}
        bb = {k: b.get(k, v) for k, v in ev.buffers.items()}
        buffers = [{k: (ba[k] if not ba[k].is_floating_point() else ba[k] + float(s) * (bb[k] - ba[k]))
                    for k in ba} for s in t]
    m = ev(points, buffers=buffers, description="interpolating")
    values = {n: m[n] for n in m.names}
    return Curve(t, values, _barriers(t, values), bn, repaired=repair_data is not None)


@dataclass
class AlignResult:
    """What `align` found: ``perms`` for B, ``b_aligned`` (state), and the curves by name."""

    perms: Perms
    b_aligned: dict[str, Tensor]
    curves: dict[str, Curve] = field(default_factory=dict)
    method: str = "weights"
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, **self.info,
                "barriers": {name: c.barriers for name, c in self.curves.items()},
                "bn": {name: c.bn for name, c in self.curves.items()}}


def match(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], method: str = "weights",
          data: Any = None, spec: PermutationSpec | None = None, seed: int = 0, **kwargs) -> Perms:
    """Permutations for B by ``method``: ``weights`` | ``activations`` (needs ``data``) | ``ste`` (needs (X, y))."""
    spec = spec or infer_spec(model)
    params = [n for n, _ in model.named_parameters()]
    if method == "weights":
        return weight_matching(spec, {n: a[n] for n in params}, {n: b[n] for n in params}, seed=seed, **kwargs)
    if data is None:
        raise UserError(f"method '{method}' needs data")
    if method == "activations":
        return activation_matching(model, a, b, data, spec=spec, **kwargs)
    if method == "ste":
        return ste_matching(model, a, b, data, spec=spec, seed=seed, **kwargs)
    raise UserError(f"unknown alignment method '{method}': use one of {', '.join(METHODS)}")


def align(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], data: Mapping[str, Any],
          method: str = "weights", repair: bool = False, n_points: int = 25, bn: str | None = None,
          spec: PermutationSpec | None = None, match_data: Any = None, seed: int = 0, curves: bool = True,
          progress: bool | None = None, **match_kwargs) -> AlignResult:
    """Align B to A and measure the line before and after (and with REPAIR when ``repair``).

    ``data``: ``{"train": (X, y), "test": (X, y)}`` for the curves; ``match_data`` (default
    ``data["train"]``) for activation / STE matching and REPAIR statistics.
    """
    spec = spec or infer_spec(model)
    match_data = match_data if match_data is not None else (data.get("train") if isinstance(data, Mapping) else data)
    perms = match(model, a, b, method, data=match_data, spec=spec, seed=seed, **match_kwargs)
    b_aligned = apply(spec, b, perms)
    result = AlignResult(perms, b_aligned, method=method)
    if curves:
        bn = bn or ("recompute" if has_bn(model) else "running")
        ev = Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn, progress=progress)
        result.curves["before"] = interpolation(model, a, b, data, n_points, bn, evaluator=ev, spec=spec)
        result.curves["after"] = interpolation(model, a, b_aligned, data, n_points, bn, evaluator=ev, spec=spec)
        if repair:
            result.curves["after+repair"] = interpolation(model, a, b_aligned, data, n_points, bn, evaluator=ev,
                                                          spec=spec, repair_data=match_data)
    return result


def plot_curves(curves: Mapping[str, Curve], path: str | None = None, title: str | None = None,
                log_loss: bool = False):
    """Loss and accuracy of every curve (train dashed, test solid) on one figure; saved to ``path``.

    ``log_loss``: a logarithmic loss axis (aligned curves are often 100x flatter than the naive one).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, c) in enumerate(curves.items()):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split, style in (("train", "--"), ("test", "-")):
                key = f"{split}_{metric}"
                if key in c.values:
                    ax.plot(c.t, c.values[key], style, color=colors[k % len(colors)],
                            label=f"{name} ({split})")
    axes[0].set_ylabel("loss")
    if log_loss:
        axes[0].set_yscale("log")
    axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("t  (A at 0, B at 1)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


__all__ = ["AlignResult", "Curve", "METHODS", "align", "has_bn", "interpolation", "match", "plot_curves",
           "state_of"]

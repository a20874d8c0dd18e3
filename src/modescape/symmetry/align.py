"""Alignment end to end: match B to A, then measure the straight line A -> B before and after.

`interpolation(model, a, b, data)` evaluates (1 - t) A + t B at ``n_points`` evenly spaced t through
`modescape.paths.evaluate_path` (train and test loss and accuracy) and returns its `PathResult`, whose
``barriers()`` are the one barrier definition (`modescape.barrier`; an accuracy's barrier is that of the
error 1 - accuracy). With ``repair_data`` the line is REPAIRed (Jordan et al. 2022) point by point.
`align(model, a, b, data, method=...)` runs one matching method, permutes B, and measures the line before
alignment, after, and after with REPAIR; `modescape.plots.plot_alignment` draws them.

States ``a``, ``b`` are dicts of parameters plus (for BatchNorm models) buffers. The BN policy of every
line is recorded: by default `default_bn` (``recompute``, fresh statistics at every point, the plain BN
reset, for BN models); ``running`` interpolates the endpoints' running statistics with the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import UserError
from ..evaluate import Evaluator, default_bn
from ..paths import PathResult, evaluate_path, segment
from .infer import example_input, infer_spec
from .match import activation_matching, ste_matching, weight_matching
from .repair import RepairedLine, Repairer
from .spec import Perms, PermutationSpec, apply

METHODS = ("weights", "activations", "ste")


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers of a model as one dict of detached copies."""
    return {k: v.detach().clone() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}


def _spec(model: nn.Module, spec: PermutationSpec | None, data: Any) -> PermutationSpec:
    """The given spec, or one inferred from the model's graph (input shape from the data when at hand)."""
    if spec is not None:
        return spec
    return infer_spec(model, data=data) if data is not None else infer_spec(model)


def interpolation(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    data: Any,
    n_points: int = 25,
    bn: str | None = None,
    repair_data: Any = None,
    spec: PermutationSpec | None = None,
    evaluator: Evaluator | None = None,
    repair_batches: int = 10,
    progress: bool | None = None,
    name: str | None = None,
) -> PathResult:
    """The line (1 - t) a + t b at ``n_points`` evenly spaced t in [0, 1] (REPAIRed with ``repair_data``).

    ``data``: ``{"train": ..., "test": ...}`` (or one source) for the Evaluator; ``bn``: the policy,
    default `default_bn(model)`.
    """
    bn = bn or default_bn(model)
    ev = evaluator or Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn, progress=progress)
    if ev.bn != bn:
        raise UserError(f"the evaluator uses bn='{ev.bn}', but bn='{bn}' was asked for")
    line = segment(a, b, ev.space)
    if repair_data is not None:
        rep = Repairer(model, a, b, repair_data, spec=_spec(model, spec, repair_data), max_batches=repair_batches)
        buffers = [line.buffer_anchor(0), line.buffer_anchor(1)] if line.carries_buffers else None
        path: Any = RepairedLine(rep, buffers)
    else:
        path = line
    return evaluate_path(
        path, ev, n_points, name=name or ("repaired" if repair_data is not None else "line"), progress=progress
    )


@dataclass
class AlignResult:
    """What `align` found: ``perms`` for B, ``b_aligned`` (state), and the lines by name (`PathResult`)."""

    perms: Perms
    b_aligned: dict[str, Tensor]
    curves: dict[str, PathResult] = field(default_factory=dict)
    method: str = "weights"
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            **self.info,
            "barriers": {name: c.barriers() for name, c in self.curves.items()},
            "bn": {name: c.bn for name, c in self.curves.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "perms": {p: v.tolist() for p, v in self.perms.items()},
            "curves": {k: c.to_dict() for k, c in self.curves.items()},
        }


def match(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    method: str = "weights",
    data: Any = None,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    **kwargs,
) -> Perms:
    """Permutations for B by ``method``: ``weights`` | ``activations`` (needs ``data``) | ``ste`` (needs (X, y))."""
    if method not in METHODS:
        raise UserError(f"unknown alignment method '{method}': use one of {', '.join(METHODS)}")
    spec = _spec(model, spec, data)
    params = [n for n, _ in model.named_parameters()]
    if method == "weights":
        return weight_matching(spec, {n: a[n] for n in params}, {n: b[n] for n in params}, seed=seed, **kwargs)
    if data is None:
        raise UserError(f"method '{method}' needs data")
    if method == "activations":
        return activation_matching(model, a, b, data, spec=spec, **kwargs)
    return ste_matching(model, a, b, data, spec=spec, seed=seed, **kwargs)


def align(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    data: Mapping[str, Any],
    method: str = "weights",
    repair: bool = False,
    n_points: int = 25,
    bn: str | None = None,
    spec: PermutationSpec | None = None,
    match_data: Any = None,
    seed: int = 0,
    curves: bool = True,
    progress: bool | None = None,
    **match_kwargs,
) -> AlignResult:
    """Align B to A and measure the line before and after (and with REPAIR when ``repair``).

    ``data``: ``{"train": (X, y), "test": (X, y)}`` for the lines; ``match_data`` (default
    ``data["train"]``) for activation / STE matching and REPAIR statistics. The permutation spec is
    inferred from the model's graph, with the input shape taken from the data, unless ``spec`` is given.
    """
    match_data = match_data if match_data is not None else (data.get("train") if isinstance(data, Mapping) else data)
    spec = _spec(model, spec, match_data if match_data is not None else data)
    perms = match(model, a, b, method, data=match_data, spec=spec, seed=seed, **match_kwargs)
    b_aligned = apply(spec, b, perms)
    result = AlignResult(perms, b_aligned, method=method)
    if curves:
        bn = bn or default_bn(model)
        ev = Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn, progress=progress)
        result.curves["before"] = interpolation(model, a, b, data, n_points, bn, evaluator=ev, name="before")
        result.curves["after"] = interpolation(model, a, b_aligned, data, n_points, bn, evaluator=ev, name="after")
        if repair:
            result.curves["after+repair"] = interpolation(
                model,
                a,
                b_aligned,
                data,
                n_points,
                bn,
                evaluator=ev,
                spec=spec,
                repair_data=match_data,
                name="after+repair",
            )
    return result


__all__ = ["AlignResult", "METHODS", "align", "example_input", "interpolation", "match", "state_of"]

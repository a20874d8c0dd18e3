"""REPAIR (Jordan et al. 2022): fix the variance collapse of interpolated networks.

Interpolating two aligned networks shrinks the spread of their hidden units' values: the units of
(1 - t) A + t B have smaller standard deviations than either endpoint's, and the collapse compounds
with depth. REPAIR rescales every unit of the interpolated network so that its mean and standard
deviation over data are the interpolation of the endpoints' statistics:

    goal_mean = (1 - t) mean_A + t mean_B,      goal_std = (1 - t) std_A + t std_B

and folds the correction into the producing layer: W <- W * goal_std / std, b <- (b - mean) *
goal_std / std + goal_mean (statistics over samples and spatial positions, per output channel).
Layers are corrected in graph order, each measured after the ones before it are repaired.

Which layers: every Linear / Conv output on a permuted channel that is *not* fed straight into a
BatchNorm. Layers followed by BatchNorm get the plain BN reset instead (fresh running statistics for
the interpolated point: the Evaluator's ``bn="recompute"`` policy, which REPAIR reduces to there);
while measuring, BatchNorm layers use batch statistics. A layer without a bias gets only its scale
corrected.

`RepairedLine` is the REPAIRed line as a (non-linear) 1-d family, so that `modescape.paths.evaluate_path`
measures it like any other path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..evaluate import make_source
from ..families.base import Family
from .infer import infer_spec
from .probe import Probe, channel_rows
from .spec import PermutationSpec

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight [C_out, ...]: the correction scales axis 0


def repair_layers(model: nn.Module, spec: PermutationSpec) -> list[tuple[str, str]]:
    """[(fx node name, module name)] of the layers REPAIR corrects, in graph order: Linear and Conv layers
    (whose weight's axis 0 is the output channel) on a permuted channel, wherever their output's channel
    axis is (``linear``: axis 1; ``proj``: the last axis of a sequence model's [B, T, C] values)."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    wanted = {n for nodes in spec.nodes.values() for n, kind in nodes if kind in ("linear", "proj")}
    out = []
    for node in gm.graph.nodes:
        if node.name not in wanted or node.op != "call_module" or not isinstance(modules.get(node.target), _LAYERS):
            continue
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), nn.modules.batchnorm._BatchNorm)
        ):
            continue
        out.append((node.name, node.target))
    return out


def _stats(
    probe: Probe, state: Mapping[str, Tensor], batches: Sequence[Tensor], axes: Sequence[int]
) -> list[tuple[Tensor, Tensor]]:
    """Per probed value: (mean [C], std [C]) over all samples and positions, float64; ``axes``: each value's
    channel axis (1, or -1 for the [B, T, C] values of a sequence model: the spec's ``node_axes``)."""
    sums = None
    n = 0
    with torch.no_grad():
        for x in batches:
            outs = [channel_rows(o, ax).double() for o, ax in zip(probe(state, x, bn_train=True), axes, strict=True)]
            part = [(o.sum(1), (o * o).sum(1)) for o in outs]
            sums = part if sums is None else [(s + p, q + r) for (s, q), (p, r) in zip(sums, part, strict=True)]
            n += outs[0].shape[1]
    if sums is None:
        raise UserError("REPAIR needs at least one batch of data")
    out = []
    for s, q in sums:
        mean = s / n
        out.append((mean, (q / n - mean * mean).clamp_min(0).sqrt()))
    return out


class Repairer:
    """Endpoint statistics measured once; ``repairer(t) -> repaired point`` for any t in [0, 1].

    ``a``, ``b``: the endpoints' states (parameters, and buffers for BN models; ``b`` already
    aligned). ``data``: (X, y) tensors, a Dataset or a DataLoader; ``max_batches`` of ``batch_size``
    are used.
    """

    def __init__(
        self,
        model: nn.Module,
        a: Mapping[str, Tensor],
        b: Mapping[str, Tensor],
        data: Any,
        spec: PermutationSpec | None = None,
        batch_size: int = 500,
        max_batches: int | None = 10,
        eps: float = 1e-8,
    ):
        spec = spec or infer_spec(model, data=data)
        self.layers = repair_layers(model, spec)
        self.param_names = [n for n, _ in model.named_parameters()]
        self.a = {n: a[n] for n in self.param_names}
        self.b = {n: b[n] for n in self.param_names}
        self.buffers_a = {k: v for k, v in a.items() if k not in self.a}
        self.buffers_b = {k: v for k, v in b.items() if k not in self.b}
        dev = next(iter(a.values())).device
        src = make_source(data, "repair data", batch_size=batch_size, device=dev)
        self.batches = [x for k, (x, _) in enumerate(src) if max_batches is None or k < max_batches]
        self.eps = eps
        self.axes = [spec.node_axes.get(n, 1) for n, _ in self.layers]  # where each layer's channels are
        self.probe = Probe(model, [n for n, _ in self.layers]) if self.layers else None
        if self.probe is not None:
            self.stats_a = _stats(self.probe, a, self.batches, self.axes)
            self.stats_b = _stats(self.probe, b, self.batches, self.axes)

    def __call__(self, t: float) -> sp.Point:
        """The repaired point for (1 - t) a + t b."""
        point = {n: v.clone() for n, v in sp.lerp(self.a, self.b, float(t)).items()}
        if self.probe is None:
            return point
        for i, (_node, module) in enumerate(self.layers):
            mean_a, std_a = self.stats_a[i]
            mean_b, std_b = self.stats_b[i]
            goal_mean = (1 - t) * mean_a + t * mean_b
            goal_std = (1 - t) * std_a + t * std_b
            mean, std = self._measure(point, i)
            w, bname = f"{module}.weight", f"{module}.bias"
            scale = goal_std / (std + self.eps)
            shape = (-1,) + (1,) * (point[w].dim() - 1)
            point[w] = point[w] * scale.reshape(shape).to(point[w].dtype)
            if bname in point:
                point[bname] = ((point[bname].double() - mean) * scale + goal_mean).to(point[bname].dtype)
        return point

    def _measure(self, point: sp.Point, i: int) -> tuple[Tensor, Tensor]:
        sums: Tensor | None = None
        s2: Tensor | None = None
        n = 0
        assert self.probe is not None  # only measured when there are layers to repair
        with torch.no_grad():
            for x in self.batches:
                o = channel_rows(self.probe(point, x, bn_train=True)[i], self.axes[i]).double()
                sums = o.sum(1) if sums is None else sums + o.sum(1)
                s2 = (o * o).sum(1) if s2 is None else s2 + (o * o).sum(1)
                n += o.shape[1]
        if sums is None or s2 is None:
            raise UserError("REPAIR needs at least one batch of data")
        mean = sums / n
        return mean, (s2 / n - mean * mean).clamp_min(0).sqrt()


class RepairedLine(Family):
    """The REPAIRed line from a `Repairer`: ``t -> repairer(t)`` (``t`` in [0, 1]), a non-linear 1-d family.

    ``buffers``: the endpoints' (combined with ``(1 - t, t)`` under ``bn="running"``; REPAIR itself is
    meant for ``bn="recompute"`` on BatchNorm models).
    """

    dim = 1

    def __init__(self, repairer: Repairer, buffers: Sequence[Mapping[str, Tensor]] | None = None):
        super().__init__()
        self.repairer = repairer
        self.set_buffers(buffers)

    def forward(self, coords) -> sp.Point:
        c, single = self.as_coords(coords)
        ts = c[:, 0].tolist()
        for t in ts:
            if not 0.0 <= t <= 1.0:
                raise UserError(f"a REPAIRed line is defined for t in [0, 1]; got t = {t}")
        points = sp.stack([self.repairer(t) for t in ts])
        return {k: v[0] for k, v in points.items()} if single else points

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        t = coords[:, :1]
        return torch.cat([1.0 - t, t], dim=1)


def repair(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    t: float,
    data: Any,
    spec: PermutationSpec | None = None,
    **kwargs,
) -> sp.Point:
    """The REPAIRed interpolation (1 - t) a + t b (parameters; see the module docstring).

    For many t, build one `Repairer` and call it (endpoint statistics are measured once). BatchNorm
    statistics of the result are not set here: evaluate it with ``bn="recompute"``.
    """
    if not 0.0 <= float(t) <= 1.0:
        raise UserError(f"t must be in [0, 1]; got {t}")
    return Repairer(model, a, b, data, spec=spec, **kwargs)(float(t))


__all__ = ["RepairedLine", "Repairer", "repair", "repair_layers"]

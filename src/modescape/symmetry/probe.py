"""Probes: run a model functionally at a point and return the values of chosen fx nodes.

Activation matching and REPAIR need a model's intermediate values (post-activation units, layer
outputs) at arbitrary points of weight space. Rather than hooks on the user's modules, we trace a
private copy with ``torch.fx`` once and rewrite its output to the nodes we want; the result is an
ordinary module called with ``functional_call`` (parameters and buffers passed in, nothing mutated).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..errors import UserError
from ..evaluate import FunctionalModule


class Probe:
    """``probe(state, x) -> [Tensor per node]``: values of ``nodes`` for input ``x`` at ``state``.

    ``state``: parameters and buffers (missing ones default to the model's own).
    ``bn_train``: BatchNorm layers normalise with batch statistics (True) or the given running ones.
    """

    def __init__(self, model: nn.Module, nodes: Sequence[str]):
        from .infer import trace  # the tracer of infer_spec, so that node names agree

        work = copy.deepcopy(model).eval()
        gm = trace(work)
        by_name = {n.name: n for n in gm.graph.nodes}
        missing = [n for n in nodes if n not in by_name]
        if missing:
            raise UserError(f"the traced model has no node '{missing[0]}': the spec was inferred from another model")
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (tuple(by_name[n] for n in nodes),)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        self.fn = FunctionalModule(gm)
        self.nodes = list(nodes)
        self.defaults = {**dict(work.named_parameters()), **dict(work.named_buffers())}

    def __call__(self, state: Mapping[str, Tensor], x: Tensor, bn_train: bool = False) -> list[Tensor]:
        full = {**self.defaults, **state}
        full = {k: v for k, v in full.items() if k in self.defaults}
        return list(self.fn(full, {}, x, bn_train=bn_train))


def channel_rows(x: Tensor, axis: int = 1) -> Tensor:
    """[B, C, *S] -> [C, B * prod(S)]: each unit's values over samples and positions (``axis``: where
    the channels are, e.g. 2 for the [B, T, C] values of a sequence model)."""
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)

"""The Gauss-Newton family: the generalised Gauss-Newton matrix (GGN) and the empirical Fisher.

What: two positive semi-definite approximations of the Hessian of the mean loss, as `CurvatureOperator`
subclasses (so Lanczos, Hutch++, SLQ and `blockwise` take them as they take the Hessian):

    GGN                G v = sum_b (n_b / N) J_b^T Hl_b J_b v      (J_b: Jacobian of the outputs of batch b;
                                                                    Hl_b: Hessian of its mean loss in the outputs)
    empirical Fisher   F v = (1/N) sum_i g_i (g_i . v)             (g_i: gradient of sample i's loss)

Why apart from the Hessian: neither needs a second derivative of the network, a retained graph or a
choice of product method; each is one ``batch_product``, built from ``jvp`` and ``vjp`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .base import CurvatureOperator, jvp


class GGN(CurvatureOperator):
    """The generalised Gauss-Newton matrix ``G = sum_b (n_b / N) J_b^T Hl_b J_b`` (Schraudolph 2002;
    Martens 2020): the Hessian without the second derivatives of the network, positive semi-definite
    for a convex loss (cross-entropy). One product per batch: ``u = J v`` (``jvp`` of the outputs),
    ``Hl u`` (the loss's Hessian in the outputs, forward-over-reverse on the loss alone), then
    ``J^T Hl u`` (``vjp``)."""

    kind = "GGN"

    def batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        f = self.outputs_of(x)
        prim = tuple(self.point[n] for n in self.names)
        outputs, ju = jvp(f, (prim,), (tuple(vs),))
        loss_fn = self.evaluator.loss_fn

        def mean_loss(o):
            return loss_fn(o, y).mean()

        _, hju = jvp(torch.func.grad(mean_loss), (outputs.detach(),), (ju,))
        pullback = torch.func.vjp(f, prim)[1]
        return list(pullback(hju)[0])


class EmpiricalFisher(CurvatureOperator):
    """The empirical Fisher ``F = (1/N) sum_i g_i g_i^T``, g_i the gradient of sample i's loss (the
    uncentred second moment of the per-sample gradients; Kunstner et al. 2019 on what it is and is not).
    One product per batch without per-sample gradients: ``s = [g_i . v]`` (``jvp`` of the per-sample
    losses), then ``sum_i s_i g_i`` (``vjp`` with s), divided by the batch size."""

    kind = "empirical Fisher"

    def batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        ev, fixed, names = self.evaluator, self.point, self.names

        def per_sample(sel):
            return ev.loss_fn(ev.forward({**fixed, **dict(zip(names, sel, strict=True))}, self.buffers, x), y)

        prim = tuple(self.point[n] for n in self.names)
        losses, s = jvp(per_sample, (prim,), (tuple(vs),))
        if losses.dim() != 1:
            raise UserError(
                f"the empirical Fisher needs one loss per sample, but the loss returned shape {list(losses.shape)}: "
                f"give a loss with reduction='none' ([N] values)"
            )
        pullback = torch.func.vjp(per_sample, prim)[1]
        return [g / losses.shape[0] for g in pullback(s)[0]]


__all__ = ["EmpiricalFisher", "GGN"]

"""One epoch of minibatch SGD on a point of weight space: what curves, subspaces and fast geometric
ensembling train through (`sgd_epoch`), with the data order every trainer shares (`epoch_order`).

The point is a function of a few trainable tensors: a curve's bends at a sampled t, theta_0 + P z, FGE's
current weights. Two ways in: ``make_point`` returns the point as a differentiable dict of tensors, run
through the `Evaluator`'s functional forward (any BatchNorm tracking, FGE); a `FlatStep` writes the point
into the evaluator's `FlatBinding` and maps the flat gradient back onto its tensors (curves, subspaces:
no ``functional_call``, no split or concatenation over the D weights per step).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from . import distributed
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator
from .evaluate.sources import prepare


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class _HalfSquaredNorm(torch.autograd.Function):
    """0.5 ||v||^2 as one dot product; its backward is one multiply (``pow(2).sum()`` takes three passes)."""

    @staticmethod
    def forward(ctx, v: Tensor) -> Tensor:
        ctx.save_for_backward(v)
        return 0.5 * torch.dot(v.reshape(-1), v.reshape(-1))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (v,) = ctx.saved_tensors
        return v * grad


def half_squared_norm(v: Tensor) -> Tensor:
    """0.5 ||v||^2, differentiable (the L2 penalty of `sgd_epoch`)."""
    return _HalfSquaredNorm.apply(v)


class FlatStep(Protocol):
    """The fast path of `sgd_epoch` for a point that is a function of a few trainable tensors: ``write``
    draws what the step needs from the generator and writes the point into ``out`` [D] (no graph); ``pull``
    sets the trainable tensors' ``.grad`` from the gradient with respect to the point [D]."""

    def write(self, generator: torch.Generator, out: Tensor) -> Any: ...

    def pull(self, state: Any, grad: Tensor) -> None: ...


def sgd_epoch(
    ev: Evaluator,
    params: Sequence[Tensor],
    opt: torch.optim.Optimizer,
    make_point: Callable[[torch.Generator], tuple[sp.Point, Tensor]] | None,
    x: Tensor,
    y: Tensor,
    epoch: int,
    seed: int,
    batch_size: int,
    wd: float,
    lr_at: Callable[[int, int], float],
    advance: Callable,
    lrs: list[float] | None = None,
    buffers: dict[str, Tensor] | None = None,
    flat_step: FlatStep | None = None,
) -> dict[str, float]:
    """One epoch of minibatch SGD on a point made by ``make_point``; returns mean loss and error.

    ``make_point(generator) -> (point, flat)``: the point to train through (differentiable in
    ``params``) and its flat vector for the L2 penalty 0.5 wd ||flat||^2. BatchNorm normalises with the
    batch's statistics; with ``buffers``, it also tracks running statistics into them (in place, each
    layer's own momentum), as a train-mode ``nn.Module`` does. The data order and every random draw are
    pure functions of (seed, epoch), so resumed runs repeat exactly. Under torchrun every rank takes its
    slice of each minibatch; gradients are summed across ranks (tracked statistics stay per rank).

    ``flat_step`` (without ``buffers``): the same step through the evaluator's `FlatBinding` instead of
    ``make_point`` (the point written into one flat vector that the model's parameters view, the gradient
    read from one flat vector): the same values to float rounding, with no ``functional_call`` and no
    per-step split and concatenation over the D weights (a curve epoch on the 2-core CPU: 1.5x a plain epoch -> 1.3x).
    """
    rank, world = distributed.rank_world()
    n = x.shape[0]
    order = epoch_order(n, seed, epoch)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 7_919)
    iters = math.ceil(n / batch_size)
    # running sums stay on the device: no host synchronisation per step
    sums = torch.zeros(3, dtype=torch.float64, device=ev.device)  # loss sum, correct, seen
    sums_seen = 0
    track = ev.functional.tracking() if buffers is not None else contextlib.nullcontext()
    fast = (flat_step, ev.flat_binding()) if flat_step is not None and buffers is None else None
    if fast is None and make_point is None:
        raise ValueError("sgd_epoch needs make_point unless a flat_step runs without tracked buffers")
    with track:
        for it in range(iters):
            idx = order[it * batch_size : (it + 1) * batch_size]
            local = idx[rank::world]
            lr = lr_at(it, iters)
            for g in opt.param_groups:
                g["lr"] = lr
            if lrs is not None:
                lrs.append(lr)
            if fast is not None:
                with torch.no_grad():
                    state = fast[0].write(gen, fast[1].values)
            elif make_point is not None:
                point, flat = make_point(gen)
            if ev.bn_modules and idx.numel() < 2 * world:  # BatchNorm cannot normalise a single sample
                advance(1)  # (decided on the global batch, so that every rank skips it together)
                continue
            xb, yb = prepare(x[local], ev.device, ev.dtype), y[local].to(ev.device)  # token ids stay int
            if fast is not None:
                fast[1].grads.zero_()
                out = fast[1](xb)
            else:
                out = ev.forward(point, ev.buffers if buffers is None else buffers, xb, bn_train=True)
            per = ev.loss_fn(out, yb)
            loss = per.sum() / idx.numel()
            if wd and fast is None:  # (wd = 0: no pass over the weights)
                loss = loss + wd * half_squared_norm(flat) / world
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if fast is not None:  # the penalty's gradient wd theta / world, then the trainable tensors'
                grads, values = fast[1].grads, fast[1].values
                fast[0].pull(state, grads.add_(values, alpha=wd / world) if wd else grads)
            distributed.all_reduce_grads(params)
            opt.step()
            with torch.no_grad():
                sums[0] += per.sum()
                sums[1] += (out.argmax(-1) == yb).sum()
            sums_seen += yb.numel()
            advance(1)
    sums[2] = sums_seen
    distributed.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    if not math.isfinite(loss_sum):
        raise UserError(f"training diverged in epoch {epoch + 1} (loss {loss_sum}): lower the learning rate")
    return {"loss": loss_sum / max(seen, 1.0), "error": 1.0 - correct / max(seen, 1.0)}


__all__ = ["FlatStep", "epoch_order", "half_squared_norm", "sgd_epoch"]

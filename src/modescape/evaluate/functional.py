"""The functional module: a private copy of the user's model, run at explicit points.

Everything that runs a model at a point goes through this object, so how a forward pass treats
BatchNorm is decided in one place. It deep-copies the model once (the user's module is never touched),
puts the copy in eval mode and sets ``track_running_stats=False`` on its BatchNorm layers, so a forward
pass never updates a buffer behind the caller's back; parameters and buffers always come in through
``torch.func.functional_call``. A call says whether BatchNorm normalises with the batch's statistics
(``bn_train=True``) or with the buffers given. Two explicit exceptions update the buffers passed in, in
place, and only inside the `tracking` context: the running averages of a train-mode loop (each layer's
own momentum) and the cumulative averages of ``update_bn`` (``momentum=None``).

`map_points` runs a function of one point over K stacked points, one after another or under
``torch.func.vmap``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_modules(module: nn.Module) -> dict[str, BatchNorm]:
    """The BatchNorm layers of ``module`` by name, in module order."""
    return {n: m for n, m in module.named_modules() if isinstance(m, BatchNorm)}


class FunctionalModule:
    """``fm(params, buffers, x, bn_train=False) -> outputs``: pure and differentiable in ``params``.

    ``device``/``dtype``: where the private copy lives (default: where the model is); ``autocast``: a
    reduced float type for the forward (outputs come back in ``dtype``); ``channels_last``: the copy in
    channels_last memory format (conv nets on GPUs).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        first = next(iter(model.parameters()), None)
        self.device = (
            torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        )
        self.dtype = dtype if dtype is not None else (first.dtype if first is not None else torch.float32)
        self.module = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.bn_modules = batchnorm_modules(self.module)
        for m in self.bn_modules.values():
            m.track_running_stats = False
        self.autocast = autocast
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's stubs omit memory_format

    def set_bn_train(self, bn_train: bool) -> None:
        """BatchNorm layers normalise with batch statistics (True) or with the buffers given (False)."""
        for m in self.bn_modules.values():
            m.training = bn_train

    def autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def run(
        self,
        module: nn.Module,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        x: Tensor,
        bn_train: bool = False,
    ) -> Tensor:
        """``module`` (the copy or one of its parts) at ``params``/``buffers`` on ``x``."""
        self.set_bn_train(bn_train)
        if self.autocast is not None:
            with self.autocast_context():
                out = functional_call(module, ({**params}, {**buffers}), (x,), strict=False)
            return out.to(self.dtype)
        return functional_call(module, ({**params}, {**buffers}), (x,), strict=False)

    def __call__(
        self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, bn_train: bool = False
    ) -> Tensor:
        return self.run(self.module, params, buffers, x, bn_train)

    @contextlib.contextmanager
    def tracking(self, momentum: float | str | None = "own") -> Iterator[None]:
        """Inside: train-mode BatchNorm layers update the running statistics passed to the call, in place.

        ``momentum="own"``: each layer's own momentum, as a train-mode ``nn.Module`` does (FGE's snapshots
        under ``bn="running"``); ``None``: cumulative averages over the batches seen, as
        ``torch.optim.swa_utils.update_bn`` does (fresh statistics at a point).
        """
        saved = {name: (m.track_running_stats, m.momentum) for name, m in self.bn_modules.items()}
        try:
            for m in self.bn_modules.values():
                m.track_running_stats = True
                if not isinstance(momentum, str):  # "own": each layer's own
                    m.momentum = momentum
            yield
        finally:
            for name, m in self.bn_modules.items():
                m.track_running_stats, m.momentum = saved[name]


class FlatBinding:
    """A copy of a `FunctionalModule`'s module whose parameters are views of one flat vector ``values`` [D]
    (in the order of ``names``) and whose gradients land in views of ``grads`` [D].

    The fast path of training through a point (curves, subspaces): a step writes the point into ``values``
    in place, zeroes ``grads``, runs ``module(x)`` and calls ``backward``; the whole gradient with respect to
    the point is then ``grads``, with no ``functional_call``, no per-tensor split of the point and no
    concatenation of the per-tensor gradients (autograd adds each parameter's gradient into its view).
    BatchNorm layers normalise with the batch's statistics and track nothing (as ``bn_train=True`` without
    `FunctionalModule.tracking`)."""

    def __init__(self, fm: FunctionalModule, names: list[str]):
        self.fm = fm
        self.module = copy.deepcopy(fm.module)
        for m in batchnorm_modules(self.module).values():
            m.training = True
        params = dict(self.module.named_parameters())
        missing = [n for n in params if n not in set(names)]
        for n in missing:  # parameters outside the point stay fixed at the model's values
            params[n].requires_grad_(False)
        total = sum(params[n].numel() for n in names)
        ref = params[names[0]]
        self.names = list(names)
        self.values = torch.empty(total, device=ref.device, dtype=ref.dtype)
        self.grads = torch.zeros(total, device=ref.device, dtype=ref.dtype)
        offset = 0
        for n in names:
            p, k = params[n], params[n].numel()
            p.data = self.values[offset : offset + k].view_as(p)
            p.grad = self.grads[offset : offset + k].view_as(p)
            offset += k

    def __call__(self, x: Tensor) -> Tensor:
        """The module at ``values`` on ``x`` (under the functional module's autocast, outputs in its dtype)."""
        if self.fm.autocast is None:
            return self.module(x)
        with self.fm.autocast_context():
            out = self.module(x)
        return out.to(self.fm.dtype)


def map_points(
    fn: Callable, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, vectorised: bool, shared: bool
) -> Tensor | tuple[Tensor, ...]:
    """``fn(params_k, buffers_k, x)`` for each of K stacked points; outputs stacked on dim 0.

    ``shared``: the same (unstacked) buffers for every point. ``vectorised``: one ``vmap`` call
    (random layers draw differently per point), else a loop.
    """
    if vectorised:
        return vmap(fn, in_dims=(0, None if shared else 0, None), randomness="different")(params, buffers, x)
    k = next(iter(params.values())).shape[0]
    outs = []
    for i in range(k):
        p = {n: t[i] for n, t in params.items()}
        b = buffers if shared else {n: t[i] for n, t in buffers.items()}
        outs.append(fn(p, b, x))
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(z) for z in zip(*outs, strict=True))
    return torch.stack(outs)


__all__ = ["BatchNorm", "FlatBinding", "FunctionalModule", "batchnorm_modules", "map_points"]

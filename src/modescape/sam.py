"""Sharpness-aware minimisation: SAM (Foret et al. 2021) and adaptive SAM, ASAM (Kwon et al. 2021).

SAM minimises the worst loss in a ball around the weights, ``max_{||T^-1 e|| <= rho} L(w + e)``, with one
ascent step to approximate the inner maximum. Each optimiser step takes two forward-backward passes on
the same minibatch:

1. ``g = grad L(w)`` (the loss only: weight decay is not part of the ascent direction);
2. ``e = rho T^2 g / (||T g||_2 + 1e-12)``, the norm over *all* parameters; ``w <- w + e``;
3. ``g' = grad L(w + e)``;
4. ``w <- w`` (the saved weights, restored exactly), then the base optimiser's step with ``g'``: for SGD
   with momentum and weight decay the decay acts on ``w``, as in both references.

``T = I`` for SAM. For ASAM, ``T = diag(|w| + eta)`` on every parameter except biases, whose ``T`` is 1:
the rule of the authors' code (SamsungLabs/ASAM, ``'weight' in name``; Kwon et al. Sec. 4: "T_w^i =
|w_i| + eta" for weights, 1 for biases, eta = 0.01). davda54/sam's ``adaptive=True`` scales every
parameter, biases included, by ``|w|`` with no eta: ``SAM(..., adaptive=True, eta=0.0)`` with
``scaled=None`` (the default of a parameter group) is that rule.

BatchNorm: the second forward runs at ``w + e`` and must not move the running statistics twice per step.
davda54/sam sets every BatchNorm's momentum to 0 for it (``disable_running_stats``); `frozen_batchnorm`
sets ``track_running_stats=False`` instead, which normalises with the batch's statistics in the same way
and leaves every buffer untouched (``num_batches_tracked`` included, which momentum 0 would still count).

```python
>>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=5e-4)
>>> sam_step(model, opt, lambda: F.cross_entropy(model(x), y))
```
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .errors import UserError

EPS = 1e-12  # added to the norm of T g (davda54/sam)


def bias_mask(model: nn.Module) -> list[bool]:
    """``scaled`` for ASAM, in ``model.parameters()`` order: False for biases (a parameter named ``bias``),
    True for every other parameter (the ``'weight' in name`` rule of the authors' code)."""
    return [name.rsplit(".", 1)[-1] != "bias" for name, _ in model.named_parameters()]


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around a base optimiser (see the module docstring for the update).

    ``params``: parameters or parameter groups; ``base_optimizer``: the optimiser class that makes the
    actual step (``torch.optim.SGD``), built on the same groups with ``**kwargs``; ``rho`` >= 0: the
    radius; ``adaptive``: ASAM; ``eta``: ASAM's offset in ``T = |w| + eta``; ``scaled`` (a group key): a
    list of booleans, one per parameter of the group, saying which get the adaptive ``T`` (the others
    get 1, as biases in Kwon et al.); ``None``: all of them.

    Use `first_step` / `second_step` around the second backward pass, or `step` with a closure, or
    `sam_step`. ``state_dict`` is the base optimiser's (the ascent's saved weights last one step only).
    """

    def __init__(
        self,
        params,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.0,
        scaled: Sequence[bool] | None = None,
        **kwargs,
    ):
        if not rho >= 0.0:
            raise UserError(f"SAM's rho must be non-negative, got {rho}")
        if not eta >= 0.0:
            raise UserError(f"ASAM's eta must be non-negative, got {eta}")
        defaults = dict(
            rho=rho,
            adaptive=bool(adaptive),
            eta=float(eta),
            scaled=None if scaled is None else [bool(s) for s in scaled],
            **kwargs,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["scaled"] is not None and len(group["scaled"]) != len(group["params"]):
                raise UserError(
                    f"SAM: 'scaled' has {len(group['scaled'])} entries for {len(group['params'])} parameters"
                )
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @staticmethod
    def _scales(group) -> list[Tensor | None]:
        """T for each parameter of a group (None: the identity)."""
        if not group["adaptive"]:
            return [None] * len(group["params"])
        scaled = group["scaled"] or [True] * len(group["params"])
        return [(p.detach().abs() + group["eta"]) if s else None for p, s in zip(group["params"], scaled, strict=True)]

    @torch.no_grad()
    def grad_norm(self) -> Tensor:
        """||T g||_2 over every parameter with a gradient."""
        norms = []
        for group in self.param_groups:
            for p, t in zip(group["params"], self._scales(group), strict=True):
                if p.grad is not None:
                    norms.append((p.grad if t is None else t * p.grad).norm(2))
        if not norms:
            raise UserError("SAM: no parameter has a gradient; call backward() before first_step()")
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save w and move to w + e, e = rho T^2 g / (||T g|| + 1e-12)."""
        norm = self.grad_norm()
        for group in self.param_groups:
            factor = group["rho"] / (norm + EPS)
            for p, t in zip(group["params"], self._scales(group), strict=True):
                if p.grad is None:
                    continue
                e = p.grad * factor.to(p) if t is None else t * t * p.grad * factor.to(p)
                self.state[p]["old_p"] = p.detach().clone()
                p.add_(e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Back to the saved w, then the base optimiser's step with the gradient taken at w + e."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or "old_p" not in self.state[p]:
                    continue
                p.copy_(self.state[p].pop("old_p"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    # (override: torch's Optimizer.step is overloaded on whether a closure is given; SAM has one signature)
    def step(self, closure: Callable[[], Tensor] | None = None) -> None:  # type: ignore[override]
        """With gradients at w already computed: ``closure`` runs the second forward-backward at w + e."""
        if closure is None:
            raise UserError("SAM needs a closure that runs a full forward and backward pass (or use sam_step)")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers in train mode normalise with the batch's statistics but update no buffer
    (SAM's second forward; davda54/sam's ``disable_running_stats`` does the same with momentum 0)."""
    mods = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        for m in mods:
            m.track_running_stats = False
        yield
    finally:
        for m in mods:
            m.track_running_stats = True


def sam_step(model: nn.Module, optimizer: SAM, loss_fn: Callable[[], Tensor]) -> Tensor:
    """One SAM step on a minibatch: ``loss_fn()`` runs ``model`` on it and returns the mean loss.

    The first pass tracks BatchNorm statistics as usual, the second (at w + e) does not. Returns the
    first pass's loss (at w), detached.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.first_step(zero_grad=True)
    with frozen_batchnorm(model):
        loss_fn().backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach()


__all__ = ["SAM", "bias_mask", "frozen_batchnorm", "sam_step"]

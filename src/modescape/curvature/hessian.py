"""The Hessian operator: exact Hessian-vector products of the whole-dataset mean loss.

What: `Hessian`, a `CurvatureOperator` whose products are

    H v = sum_b (n_b / N) H_b v          (H_b: Hessian of batch b's mean loss; exact for unequal batches)

made one of three ways: through a *retained* gradient graph (``g = sum_b (n_b / N) grad L_b`` built
once with ``create_graph``, then each product is one backward pass ``grad(<g, v>)``; kept when its
measured memory fits the budget), or recomputed batch by batch by double backward
(``grad(<grad L_b, v>)``) or forward-over-reverse (``jvp(grad L_b)``). ``method="auto"`` times the
candidates once per evaluator and keeps the fastest (a convexity map over many points measures once).
`hvp` is the one-call form of a single product.

Why a module of its own: the retained graph, its memory probe and the timing are the Hessian's alone;
the GGN and the empirical Fisher (`gauss_newton`) have one way of making products.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..evaluate import Evaluator
from .base import CurvatureOperator, jvp

HVP_METHODS = ("auto", "double-backward", "forward-over-reverse")

# the HVP method measured per evaluator (so a convexity map over many points measures once)
_CHOSEN: weakref.WeakKeyDictionary[Evaluator, dict[tuple, str]] = weakref.WeakKeyDictionary()


class Hessian(CurvatureOperator):
    """The Hessian of the whole-dataset mean loss at ``point``, over the parameters ``params``.

    ``Hessian(model_or_evaluator, data=None, point=None, params="all", method="auto", ...)``;
    ``H.size`` = P (number of selected entries); ``H.matvec(v [P]) -> [P]`` (also ``H @ v``);
    ``H.hvp(v_point) -> point`` over the selected names; ``H.dense() -> [P, P]`` for small P.
    ``H.n_hvp`` counts products; ``H.method`` is the HVP method in use.
    """

    kind = "Hessian"

    def __init__(
        self,
        model: nn.Module | Evaluator,
        data: Any = None,
        point: Mapping[str, Tensor] | None = None,
        *,
        params: str | Sequence[str] | None = "all",
        method: str = "auto",
        bn: str | None = None,
        buffers: Mapping[str, Tensor] | None = None,
        source: str | None = None,
        loss=None,
        batch_size: int | None = None,
        device=None,
        dtype=None,
        retain: bool | str = "auto",
        retain_mb: float | None = None,
        distributed: bool | None = None,
    ):
        if method not in HVP_METHODS:
            raise UserError(f"unknown HVP method '{method}': use one of {', '.join(HVP_METHODS)}")
        super().__init__(
            model,
            data,
            point,
            params=params,
            bn=bn,
            buffers=buffers,
            source=source,
            loss=loss,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            distributed=distributed,
        )
        ev = self.evaluator
        self._leaves: list[Tensor] | None = None
        self._grads: list[Tensor] | None = None
        if retain not in (True, False, "auto"):
            raise UserError(f"retain must be True, False or 'auto'; got {retain!r}")
        if retain is not False and method in ("auto", "double-backward"):
            budget = _retain_budget(self.device, retain_mb) if retain == "auto" else float("inf")
            if self._retain(budget):
                if method == "auto":  # measured once per evaluator: the retained product or a recomputed jvp
                    cache = _CHOSEN.setdefault(ev, {})
                    key = ("retained", self.names, source)
                    if key not in cache:
                        cache[key] = self._measure_retained()
                    if cache[key] == "forward-over-reverse":
                        self.release()
                    method = cache[key]
                else:
                    method = "double-backward"
        plain_key = (self.names, source)
        if method == "auto":
            cache = _CHOSEN.setdefault(ev, {})
            if plain_key not in cache:
                cache[plain_key] = self._measure()
            method = cache[plain_key]
        self.method = method

    # -- the retained gradient graph ------------------------------------------------------------
    @property
    def retained(self) -> bool:
        """Whether the gradient's graph is kept, so that each product is one backward pass."""
        return self._grads is not None

    def _retain(self, budget: float) -> bool:
        """Build g = sum_b (n_b / N) grad L_b with ``create_graph`` and keep it, so that each product is
        one backward pass through g's graph (no forward pass, no first backward pass).

        The memory the graph holds is measured on a probe of a few samples (saved tensors, each storage
        once, parameters and buffers excluded) and extrapolated to the whole source; over ``budget``
        bytes nothing is kept. Unless batch norm uses batch statistics (``bn="train"``), whose values
        depend on the batches, a materialised source is then built as one batch: the graph of all data
        is held either way, and one batch makes each product fewer, larger operations."""
        ev = self.evaluator
        src = ev.sources[self.source] if self.source is not None else next(iter(ev.sources.values()))
        if not src.materialised:  # data too large to hold on the device: its graph is larger still
            return False
        params, leaves = self.with_leaves()
        fixed = {t.untyped_storage().data_ptr() for t in [*params.values(), *self.buffers.values()]}
        seen: set[int] = set()
        size = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal size
            ptr = t.untyped_storage().data_ptr()
            if ptr not in fixed and ptr not in seen:
                seen.add(ptr)
                size += t.untyped_storage().nbytes()
            return t

        def grads(x: Tensor, y: Tensor, w: float) -> list[Tensor]:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = ev.batch_loss(params, self.buffers, x, y)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            return [
                torch.zeros_like(leaf) if gi is None else (gi if w == 1.0 else gi * w)
                for gi, leaf in zip(g, leaves, strict=True)
            ]

        x0, y0 = next(iter(src))
        k = min(x0.shape[0], 16)
        if ev.bn != "train" or k == x0.shape[0]:  # (batch statistics of a slice: another function)
            grads(x0[:k], y0[:k], 1.0)
            if size * src.n / k > budget:
                return False
            seen.clear()
            size = 0
        batches: Iterable[tuple[float, Tensor, Tensor]]
        if ev.bn != "train" and src.batches is not None and len(src.batches) > 1:
            batches = [(1.0, torch.cat([x for x, _ in src.batches]), torch.cat([y for _, y in src.batches]))]
        else:
            batches = ev.weighted_batches(self.source)
        total: list[Tensor] | None = None
        for w, x, y in batches:
            g = grads(x, y, w)
            total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
            if size > budget:
                return False
        self._leaves, self._grads = leaves, total
        return True

    def release(self) -> None:
        """Drop the retained graph (products then recompute the forward and backward passes)."""
        self._leaves = self._grads = None

    def _hvp_retained(self, vs: list[Tensor], batched: bool = False) -> list[Tensor]:
        leaves, grads = self._leaves, self._grads
        assert leaves is not None and grads is not None  # called only while `retained`
        pairs = [(g, v) for g, v in zip(grads, vs, strict=True) if g.requires_grad]
        lead = tuple(vs[0].shape[:1]) if batched else ()

        def zeros(leaf: Tensor) -> Tensor:
            return torch.zeros(lead + tuple(leaf.shape), device=self.device, dtype=self.dtype)

        if not pairs:  # the gradient does not depend on the parameters: H = 0
            return [zeros(leaf) for leaf in leaves]
        hv = torch.autograd.grad(
            [g for g, _ in pairs],
            leaves,
            grad_outputs=[v for _, v in pairs],
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batched,
        )
        return [zeros(leaf) if h is None else h.detach() for leaf, h in zip(leaves, hv, strict=True)]

    def gradient(self) -> Tensor:
        """The mean-loss gradient over the selected parameters, [P] (free when the graph is retained)."""
        if self._grads is not None:
            return self.combine(torch.cat([g.detach().reshape(-1) for g in self._grads]))
        return super().gradient()

    # -- products -----------------------------------------------------------------------------
    def _hvp_double(self, vs: list[Tensor], batches) -> list[Tensor]:
        params, leaves = self.with_leaves()
        out = [torch.zeros_like(t) for t in vs]
        ev = self.evaluator
        for w, x, y in batches:
            loss = ev.batch_loss(params, self.buffers, x, y)
            g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            pairs = [(gi, v) for gi, v in zip(g, vs, strict=True) if gi is not None and gi.requires_grad]
            if not pairs:  # this batch's gradient does not depend on the parameters
                continue
            hv = torch.autograd.grad(
                [gi for gi, _ in pairs], leaves, grad_outputs=[v for _, v in pairs], allow_unused=True
            )
            for o, h in zip(out, hv, strict=True):
                if h is not None:
                    o.add_(h.detach(), alpha=w)
        return out

    def _hvp_jvp(self, vs: list[Tensor], batches) -> list[Tensor]:
        ev, fixed, names = self.evaluator, self.point, self.names
        prim = tuple(self.point[n] for n in names)
        out = [torch.zeros_like(t) for t in vs]
        for w, x, y in batches:

            def loss_of(sel, x=x, y=y):
                return ev.batch_loss({**fixed, **dict(zip(names, sel, strict=True))}, self.buffers, x, y)

            _, hv = jvp(torch.func.grad(loss_of), (prim,), (tuple(vs),))
            for o, h in zip(out, hv, strict=True):
                o.add_(h.detach(), alpha=w)
        return out

    def batch_product(self, vs: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        _, hv = jvp(torch.func.grad(self.loss_of(x, y)), (tuple(self.point[n] for n in self.names),), (tuple(vs),))
        return list(hv)

    def local_matvec(self, vs: list[Tensor]) -> list[Tensor]:
        if self._grads is not None:
            return self._hvp_retained(vs)
        batches = self.evaluator.weighted_batches(self.source)
        fn = self._hvp_jvp if self.method == "forward-over-reverse" else self._hvp_double
        return fn(vs, batches)

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v [P] (in the evaluator's dtype and device): [P]."""
        return super().matvec(v)

    __call__ = matvec

    def matmat(self, vs: Tensor, chunk: int = 64) -> Tensor:
        """H @ vs for vs [P, k]: [P, k], ``chunk`` columns at a time, each chunk one vectorised product
        (a batched backward pass through the retained graph, else ``vmap`` over forward-over-reverse
        products); counts k products."""
        if self._grads is not None and self.batched_ok:
            cols = vs.T.to(self.device, self.dtype)
            try:
                parts = []
                for i in range(0, cols.shape[0], chunk):
                    c = cols[i : i + chunk]
                    vs_b = [
                        t.reshape(c.shape[0], *s)
                        for t, s in zip(torch.split(c, self.numels, dim=1), self.shapes, strict=True)
                    ]
                    parts.append(torch.cat([h.reshape(c.shape[0], -1) for h in self._hvp_retained(vs_b, True)], 1))
            except RuntimeError:  # an operator without a batching rule for its double backward
                self.batched_ok = False
            else:
                self.n_hvp += vs.shape[1]
                return self.combine(torch.cat(parts).T.contiguous())
        return super().matmat(vs, chunk)  # vmap over forward-over-reverse products

    def _fastest(self, fns: Mapping[str, Callable[[], Any]], rounds: int, clear: float | None = None) -> str:
        """Time each of ``fns`` after a warm-up, interleaved over up to ``rounds`` rounds (fewer once one is
        ``clear`` times faster), keeping each one's fastest time (robust to a busy machine) in
        ``self.timings``; return the fastest name."""
        for fn in fns.values():
            fn()  # warm-up
        self.timings = {name: float("inf") for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                self.timings[name] = min(self.timings[name], time.perf_counter() - t0)
            fast, slow = sorted(self.timings.values())
            if clear is not None and slow > clear * fast:  # a clear winner: no need for more rounds
                break
        timings = self.timings
        return min(timings, key=lambda m: timings[m])

    def _probe_vector(self) -> list[Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        return self.split(torch.randn(self.size, generator=gen, dtype=torch.float64).to(self.device, self.dtype))

    def _measure(self, rounds: int = 3) -> str:
        """Both recomputed HVP methods on the first batch (up to ``rounds`` rounds, fewer when one is 1.5x
        faster); return the faster method."""
        first = next(iter(self.evaluator.weighted_batches(self.source)))
        vs = self._probe_vector()
        return self._fastest(
            {
                "double-backward": lambda: self._hvp_double(vs, [first]),
                "forward-over-reverse": lambda: self._hvp_jvp(vs, [first]),
            },
            rounds,
            clear=1.5,
        )

    def _measure_retained(self, rounds: int = 2) -> str:
        """A product through the retained graph against a recomputed forward-over-reverse product, whole
        source each; return the faster method ("double-backward" for the retained one)."""
        vs = self._probe_vector()
        return self._fastest(
            {
                "double-backward": lambda: self._hvp_retained(vs),
                "forward-over-reverse": lambda: self._hvp_jvp(vs, self.evaluator.weighted_batches(self.source)),
            },
            rounds,
        )


def _retain_budget(device: torch.device, retain_mb: float | None) -> float:
    """Bytes a retained gradient graph may hold: ``retain_mb``, else $MODESCAPE_HESSIAN_RETAIN_MB, else
    2 GiB on a CPU and half the free memory on a GPU."""
    if retain_mb is None and os.environ.get("MODESCAPE_HESSIAN_RETAIN_MB"):
        try:
            retain_mb = float(os.environ["MODESCAPE_HESSIAN_RETAIN_MB"])
        except ValueError:
            raise UserError("MODESCAPE_HESSIAN_RETAIN_MB must be a number of megabytes") from None
    if retain_mb is not None:
        return float(retain_mb) * 2**20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2
    return 2.0 * 2**30


def hvp(
    model: nn.Module | Evaluator,
    data: Any,
    point: Mapping[str, Tensor] | None,
    v: Mapping[str, Tensor] | Tensor,
    **kwargs,
) -> sp.Point | Tensor:
    """H v at ``point`` over ``data`` (None when ``model`` is an Evaluator); arguments in the order of
    `Hessian` (model, data, point).

    ``v`` a point (returns a point over the selected names) or a flat [P] vector (returns [P]).
    Keyword arguments as `Hessian` (``params``, ``method``, ``bn``, ...).
    """
    H = Hessian(model, data, point, **kwargs)
    return H.matvec(v) if isinstance(v, Tensor) else H.hvp(v)


__all__ = ["HVP_METHODS", "Hessian", "hvp"]

"""Curvature of the loss at a point: Hessian-vector products, eigenvalues, traces, spectral densities.

Everything here is matrix-free and built on one operator, `Hessian`: the Hessian of the mean loss over a
whole dataset, restricted to a chosen set of parameters, at an explicit point, evaluated through the
`Evaluator` (which owns the data, the batching and the batch-norm policy):

    H v = sum_b (n_b / N) H_b v          (H_b: Hessian of batch b's mean loss; exact for unequal batches)

Parameters: ``params="all"`` | ``"weights"`` | ``"biases"`` | ``"norms"`` (roles of `WeightSpace`,
comma-combinable) | a name prefix such as ``"fc0"`` or ``"stage2.0"`` | a list of prefixes. The others stay
fixed at the point, so a filter gives the diagonal block ``H[S, S]``.

HVP method: ``"double-backward"`` (grad of <grad, v>) or ``"forward-over-reverse"`` (``jvp`` of ``grad``);
``"auto"`` measures once per evaluator and keeps the faster. With ``retain`` (default ``"auto"``: when
its memory fits), the gradient's graph over the whole source is built once and kept, so a
double-backward product is a single backward pass through it.

Batch norm: the evaluator's policy. ``running`` (the default) is eval-mode BN with the point's buffers, so
H is the Hessian of the function the network computes at test time; ``recompute`` recomputes the
statistics at the point and then holds them fixed; ``train`` differentiates through the batch statistics.

On top of the operator (each also works on any symmetric ``matvec``, e.g. a dense matrix in tests):

* `eigenvalues`: Lanczos with full reorthogonalisation, stopped when every wanted Ritz pair's residual
  ``||H y - theta y|| = beta_m |s_m|`` is at most ``tol * max|theta|``; ``which`` = ``"largest"``
  (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"`` (largest |lambda|). ``method="power"`` runs
  power iteration with shifts and deflation instead, stopped on the same residual.
* `trace`: Hutchinson (Rademacher probes) and Hutch++ (exact trace on a sketched top subspace plus
  Hutchinson on the rest); both stop when the standard error of the mean is at most
  ``max(rtol |estimate|, atol)`` after ``min_samples`` probes (never on a noisy running mean).
* `density`: stochastic Lanczos quadrature: nodes and weights from several probes, smoothed with a
  Gaussian, plotted with `plot_density`.
* `blockwise`: any of these per layer or per block (groups of parameter-name prefixes).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import space as sp
from .errors import UserError
from .evaluate import Evaluator
from .progress import bar

HVP_METHODS = ("auto", "double-backward", "forward-over-reverse")
WHICH = ("largest", "smallest", "magnitude")
ROLE_WORDS = {"weights": "weight", "weight": "weight", "biases": "bias", "bias": "bias", "norms": "norm",
              "norm": "norm"}

Matvec = Callable[[Tensor], Tensor]

# the HVP method measured per evaluator (so a convexity map over many points measures once)
_CHOSEN: "weakref.WeakKeyDictionary[Evaluator, dict[tuple, str]]" = weakref.WeakKeyDictionary()


# -- parameter selection -------------------------------------------------------------------------

def select_params(space: sp.WeightSpace, params: str | Sequence[str] | None = "all") -> tuple[str, ...]:
    """Names of the parameters a filter keeps, in layout order.

    ``params``: ``"all"``; role words ``"weights"``, ``"biases"``, ``"norms"`` (comma-combinable,
    e.g. ``"weights,biases"``); or name prefixes (a string, comma-separated, or a list): a prefix keeps a
    parameter whose name equals it or starts with ``prefix + "."``.
    """
    if params is None or params == "all":
        return space.names
    items = [s.strip() for s in params.split(",")] if isinstance(params, str) else [str(s) for s in params]
    items = [s for s in items if s]
    if items and all(s in ROLE_WORDS for s in items):
        roles = {ROLE_WORDS[s] for s in items}
        names = tuple(n for n in space.names if space.roles[n] in roles)
    else:
        names = tuple(n for n in space.names if any(n == p or n.startswith(p + ".") for p in items))
    if not names:
        tops = sorted({n.split(".")[0] for n in space.names})
        raise UserError(f"parameter filter '{params}' selects no parameters: use all, weights, biases, norms "
                        f"or a name prefix such as {', '.join(tops[:6])}")
    return names


def param_groups(space: sp.WeightSpace, by: str | int | Mapping[str, Any] = "layer") -> dict[str, tuple[str, ...]]:
    """Groups of parameter names for per-layer / per-block curvature.

    ``by="layer"``: one group per module owning parameters (``fc0``, ``stage1.0.conv1``);
    ``"block"``: one per top-level child (``stage1``); an int ``d``: by the first ``d`` name components;
    a mapping ``{group: filter}``: each filter as in `select_params`.
    """
    if isinstance(by, Mapping):
        return {g: select_params(space, f) for g, f in by.items()}
    if by == "layer":
        key = lambda n: n.rsplit(".", 1)[0] if "." in n else n  # noqa: E731
    elif by == "block":
        key = lambda n: n.split(".")[0]  # noqa: E731
    elif isinstance(by, int) or (isinstance(by, str) and by.isdigit()):
        d = int(by)
        if d < 1:
            raise UserError(f"a grouping depth must be at least 1; got {d}")
        key = lambda n: ".".join(n.split(".")[:d]) if n.count(".") >= d else n.rsplit(".", 1)[0]  # noqa: E731
    else:
        raise UserError(f"unknown grouping '{by}': use layer, block, a depth (1, 2, ...) or a dict of filters")
    groups: dict[str, list[str]] = {}
    for n in space.names:
        groups.setdefault(key(n), []).append(n)
    return {g: tuple(v) for g, v in groups.items()}


# -- the operator ---------------------------------------------------------------------------------

def as_evaluator(model: nn.Module | Evaluator, data: Any = None, *, bn: str | None = None, loss=None,
                 batch_size: int | None = None, device=None, dtype=None) -> Evaluator:
    """An `Evaluator` from a model and data, or the given evaluator (then ``data`` must be None)."""
    if isinstance(model, Evaluator):
        if data is not None:
            raise UserError("pass data either to the Evaluator or here, not both")
        if bn is not None and bn != model.bn:
            raise UserError(f"the evaluator uses bn='{model.bn}'; build it with bn='{bn}' instead")
        return model
    if not isinstance(model, nn.Module):
        raise UserError(f"expected an nn.Module or an Evaluator; got {type(model).__name__}")
    if data is None:
        raise UserError("curvature needs data: pass (X, y), a Dataset, a DataLoader or an Evaluator")
    return Evaluator(model, data, metrics=("loss", "accuracy"), bn=bn or "running", loss=loss,
                     batch_size=batch_size, device=device, dtype=dtype, progress=False)


class Hessian:
    """The Hessian of the whole-dataset mean loss at ``point``, over the parameters ``params``.

    ``Hessian(model_or_evaluator, data=None, point=None, params="all", method="auto", ...)``;
    ``H.size`` = P (number of selected entries); ``H.matvec(v [P]) -> [P]`` (also ``H @ v``);
    ``H.hvp(v_point) -> point`` over the selected names; ``H.dense() -> [P, P]`` for small P.
    ``H.n_hvp`` counts products; ``H.method`` is the HVP method in use.
    """

    def __init__(self, model: nn.Module | Evaluator, data: Any = None, point: Mapping[str, Tensor] | None = None, *,
                 params: str | Sequence[str] | None = "all", method: str = "auto", bn: str | None = None,
                 buffers: Mapping[str, Tensor] | None = None, source: str | None = None, loss=None,
                 batch_size: int | None = None, device=None, dtype=None, retain: bool | str = "auto",
                 retain_mb: float | None = None):
        if method not in HVP_METHODS:
            raise UserError(f"unknown HVP method '{method}': use one of {', '.join(HVP_METHODS)}")
        ev = as_evaluator(model, data, bn=bn, loss=loss, batch_size=batch_size, device=device, dtype=dtype)
        self.evaluator = ev
        self.space = ev.space
        point = ev.point0 if point is None else point
        ev.space.check(point, what="point")
        self.point: sp.Point = {n: point[n].detach().to(device=ev.device, dtype=ev.dtype) for n in ev.space.names}
        self.buffers = ev.point_buffers(self.point) if buffers is None else sp.to(dict(buffers), ev.device, ev.dtype)
        self.source = source
        self.names = select_params(ev.space, params)
        self.shapes = [tuple(self.space.shapes[n]) for n in self.names]
        self.numels = [math.prod(s) for s in self.shapes]
        self.size = int(sum(self.numels))
        self.device, self.dtype = ev.device, ev.dtype
        self.n_hvp = 0
        self.timings: dict[str, float] = {}
        self._leaves: list[Tensor] | None = None
        self._grads: list[Tensor] | None = None
        self._batched_ok = True
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
        key = (self.names, source)
        if method == "auto":
            cache = _CHOSEN.setdefault(ev, {})
            if key not in cache:
                cache[key] = self._measure()
            method = cache[key]
        self.method = method

    # -- vectors ------------------------------------------------------------------------------
    def split(self, v: Tensor) -> list[Tensor]:
        """[P] -> the selected tensors."""
        if v.shape != (self.size,):
            raise UserError(f"vector has shape {list(v.shape)}; this Hessian acts on vectors of size {self.size}")
        return [t.reshape(s) for t, s in zip(torch.split(v, self.numels), self.shapes)]

    def flat(self, point: Mapping[str, Tensor]) -> Tensor:
        """The selected entries of a point as one vector [P]."""
        return torch.cat([point[n].reshape(-1).to(self.device, self.dtype) for n in self.names])

    def to_point(self, v: Tensor, full: bool = True) -> sp.Point:
        """[P] -> a point over the selected names, or (``full``) the whole layout with zeros elsewhere."""
        parts = dict(zip(self.names, self.split(v)))
        if not full:
            return parts
        return {n: parts[n] if n in parts else torch.zeros_like(self.point[n]) for n in self.space.names}

    def _with_leaves(self) -> tuple[sp.Point, list[Tensor]]:
        """The point with fresh leaf tensors (requiring grad) for the selected names: (params, leaves)."""
        leaves = [self.point[n].detach().requires_grad_(True) for n in self.names]
        return {**self.point, **dict(zip(self.names, leaves))}, leaves

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
        params, leaves = self._with_leaves()
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
            return [torch.zeros_like(leaf) if gi is None else (gi if w == 1.0 else gi * w) for gi, leaf in zip(g, leaves)]

        x0, y0 = next(iter(src))
        k = min(x0.shape[0], 16)
        if ev.bn != "train" or k == x0.shape[0]:  # (batch statistics of a slice: another function)
            grads(x0[:k], y0[:k], 1.0)
            if size * src.n / k > budget:
                return False
            seen.clear()
            size = 0
        if ev.bn != "train" and len(src.batches) > 1:
            batches = [(1.0, torch.cat([x for x, _ in src.batches]), torch.cat([y for _, y in src.batches]))]
        else:
            batches = ev.weighted_batches(self.source)
        total: list[Tensor] | None = None
        for w, x, y in batches:
            g = grads(x, y, w)
            total = g if total is None else [a + b for a, b in zip(total, g)]
            if size > budget:
                return False
        self._leaves, self._grads = leaves, total
        return True

    def release(self) -> None:
        """Drop the retained graph (products then recompute the forward and backward passes)."""
        self._leaves = self._grads = None

    def _hvp_retained(self, vs: list[Tensor], batched: bool = False) -> list[Tensor]:
        pairs = [(g, v) for g, v in zip(self._grads, vs) if g.requires_grad]
        lead = tuple(vs[0].shape[:1]) if batched else ()

        def zeros(leaf: Tensor) -> Tensor:
            return torch.zeros(lead + tuple(leaf.shape), device=self.device, dtype=self.dtype)

        if not pairs:  # the gradient does not depend on the parameters: H = 0
            return [zeros(leaf) for leaf in self._leaves]
        hv = torch.autograd.grad([g for g, _ in pairs], self._leaves, grad_outputs=[v for _, v in pairs],
                                 retain_graph=True, allow_unused=True, is_grads_batched=batched)
        return [zeros(leaf) if h is None else h.detach() for leaf, h in zip(self._leaves, hv)]

    def gradient(self) -> Tensor:
        """The mean-loss gradient over the selected parameters, [P] (free when the graph is retained)."""
        if self._grads is not None:
            return torch.cat([g.detach().reshape(-1) for g in self._grads])
        params, leaves = self._with_leaves()
        out = [torch.zeros_like(t) for t in leaves]
        for w, x, y in self.evaluator.weighted_batches(self.source):
            loss = self.evaluator.batch_loss(params, self.buffers, x, y)
            for o, g in zip(out, torch.autograd.grad(loss, leaves, allow_unused=True)):
                if g is not None:
                    o.add_(g, alpha=w)
        return torch.cat([o.reshape(-1) for o in out])

    # -- products -----------------------------------------------------------------------------
    def _hvp_double(self, vs: list[Tensor], batches) -> list[Tensor]:
        params, leaves = self._with_leaves()
        out = [torch.zeros_like(t) for t in vs]
        ev = self.evaluator
        for w, x, y in batches:
            loss = ev.batch_loss(params, self.buffers, x, y)
            g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            pairs = [(gi, v) for gi, v in zip(g, vs) if gi is not None and gi.requires_grad]
            if not pairs:  # this batch's gradient does not depend on the parameters
                continue
            hv = torch.autograd.grad([gi for gi, _ in pairs], leaves, grad_outputs=[v for _, v in pairs],
                                     allow_unused=True)
            for o, h in zip(out, hv):
                if h is not None:
                    o.add_(h.detach(), alpha=w)
        return out

    def _hvp_jvp(self, vs: list[Tensor], batches) -> list[Tensor]:
        ev, fixed, names = self.evaluator, self.point, self.names
        prim = tuple(self.point[n] for n in names)
        out = [torch.zeros_like(t) for t in vs]
        for w, x, y in batches:
            def loss_of(sel, x=x, y=y):
                return ev.batch_loss({**fixed, **dict(zip(names, sel))}, self.buffers, x, y)
            _, hv = torch.func.jvp(torch.func.grad(loss_of), (prim,), (tuple(vs),))
            for o, h in zip(out, hv):
                o.add_(h.detach(), alpha=w)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v [P] (in the evaluator's dtype and device): [P]."""
        vs = [t.to(self.device, self.dtype) for t in self.split(v)]
        if self._grads is not None:
            out = self._hvp_retained(vs)
        else:
            batches = self.evaluator.weighted_batches(self.source)
            fn = self._hvp_jvp if self.method == "forward-over-reverse" else self._hvp_double
            out = fn(vs, batches)
        self.n_hvp += 1
        return torch.cat([o.reshape(-1) for o in out])

    __call__ = matvec

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    def hvp(self, v: Mapping[str, Tensor]) -> sp.Point:
        """H v for a point ``v`` (its selected tensors are used): a point over the selected names."""
        return self.to_point(self.matvec(self.flat(v)), full=False)

    def matmat(self, vs: Tensor, chunk: int = 64) -> Tensor:
        """H @ vs for vs [P, k]: [P, k], ``chunk`` columns at a time, each chunk one vectorised product
        (a batched backward pass through the retained graph, else ``vmap`` over forward-over-reverse
        products); counts k products."""
        if self._grads is not None and self._batched_ok:
            cols = vs.T.to(self.device, self.dtype)
            try:
                parts = []
                for i in range(0, cols.shape[0], chunk):
                    c = cols[i:i + chunk]
                    vs_b = [t.reshape(c.shape[0], *s) for t, s in zip(torch.split(c, self.numels, dim=1), self.shapes)]
                    parts.append(torch.cat([h.reshape(c.shape[0], -1) for h in self._hvp_retained(vs_b, True)], 1))
            except RuntimeError:  # an operator without a batching rule for its double backward
                self._batched_ok = False
            else:
                self.n_hvp += vs.shape[1]
                return torch.cat(parts).T
        ev, fixed, names = self.evaluator, self.point, self.names
        prim = tuple(self.point[n] for n in names)
        out = torch.zeros(vs.shape[1], self.size, device=self.device, dtype=self.dtype)
        cols = vs.T.to(self.device, self.dtype)
        for w, x, y in ev.weighted_batches(self.source):
            def loss_of(sel, x=x, y=y):
                return ev.batch_loss({**fixed, **dict(zip(names, sel))}, self.buffers, x, y)

            def one(v):
                _, hv = torch.func.jvp(torch.func.grad(loss_of), (prim,), (tuple(self.split(v)),))
                return torch.cat([h.reshape(-1) for h in hv])
            for i in range(0, cols.shape[0], chunk):
                out[i:i + chunk] += w * torch.func.vmap(one)(cols[i:i + chunk]).detach()
        self.n_hvp += vs.shape[1]
        return out.T

    def dense(self) -> Tensor:
        """The dense [P, P] matrix (P products, vectorised; for small models and tests)."""
        if self.size > 20000:
            raise UserError(f"a dense Hessian of {self.size} parameters is too large: use a parameter filter")
        return self.matmat(torch.eye(self.size, device=self.device, dtype=self.dtype))

    def _fastest(self, fns: Mapping[str, Callable[[], Any]], rounds: int, clear: float | None = None) -> str:
        """Time each of ``fns`` after a warm-up, interleaved over up to ``rounds`` rounds (fewer once one is
        ``clear`` times faster), keeping each one's fastest time (robust to a busy machine) in
        ``self.timings``; return the fastest name."""
        for fn in fns.values():
            fn()  # warm-up
        self.timings = {name: float("inf") for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                self._sync()
                t0 = time.perf_counter()
                fn()
                self._sync()
                self.timings[name] = min(self.timings[name], time.perf_counter() - t0)
            fast, slow = sorted(self.timings.values())
            if clear is not None and slow > clear * fast:  # a clear winner: no need for more rounds
                break
        return min(self.timings, key=self.timings.get)

    def _probe_vector(self) -> list[Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        return self.split(torch.randn(self.size, generator=gen, dtype=torch.float64).to(self.device, self.dtype))

    def _measure(self, rounds: int = 3) -> str:
        """Both recomputed HVP methods on the first batch (up to ``rounds`` rounds, fewer when one is 1.5x
        faster); return the faster method."""
        first = next(iter(self.evaluator.weighted_batches(self.source)))
        vs = self._probe_vector()
        return self._fastest({"double-backward": lambda: self._hvp_double(vs, [first]),
                              "forward-over-reverse": lambda: self._hvp_jvp(vs, [first])}, rounds, clear=1.5)

    def _measure_retained(self, rounds: int = 2) -> str:
        """A product through the retained graph against a recomputed forward-over-reverse product, whole
        source each; return the faster method ("double-backward" for the retained one)."""
        vs = self._probe_vector()
        return self._fastest({"double-backward": lambda: self._hvp_retained(vs),
                              "forward-over-reverse": lambda: self._hvp_jvp(vs, self.evaluator.weighted_batches(
                                  self.source))}, rounds)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _retain_budget(device: torch.device, retain_mb: float | None) -> float:
    """Bytes a retained gradient graph may hold: ``retain_mb``, else $MODESCAPE_HESSIAN_RETAIN_MB, else
    2 GiB on a CPU and half the free memory on a GPU."""
    if retain_mb is None and os.environ.get("MODESCAPE_HESSIAN_RETAIN_MB"):
        try:
            retain_mb = float(os.environ["MODESCAPE_HESSIAN_RETAIN_MB"])
        except ValueError:
            raise UserError("MODESCAPE_HESSIAN_RETAIN_MB must be a number of megabytes") from None
    if retain_mb is not None:
        return float(retain_mb) * 2 ** 20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2
    return 2.0 * 2 ** 30


def hvp(model: nn.Module | Evaluator, point: Mapping[str, Tensor] | None, data: Any, v: Mapping[str, Tensor] | Tensor,
        **kwargs) -> sp.Point | Tensor:
    """H v at ``point`` over ``data`` (None when ``model`` is an Evaluator).

    ``v`` a point (returns a point over the selected names) or a flat [P] vector (returns [P]).
    Keyword arguments as `Hessian` (``params``, ``method``, ``bn``, ...).
    """
    H = Hessian(model, data, point, **kwargs)
    return H.matvec(v) if isinstance(v, Tensor) else H.hvp(v)


def _operator(model, data, point, kwargs) -> Hessian:
    if isinstance(model, Hessian):
        if data is not None or point is not None or kwargs:
            raise UserError("a Hessian operator already fixes its data, point and parameters")
        return model
    return Hessian(model, data, point, **kwargs)


# -- eigenvalues ----------------------------------------------------------------------------------

@dataclass
class EigenResult:
    """Eigenpairs: ``values`` [k] (float64, CPU, in the order asked for), ``vectors`` [k, P] (unit norm),
    ``residuals`` [k] (``||H y - theta y||``), ``converged`` [k], products used, and the method."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    converged: Tensor
    n_hvp: int
    iterations: int
    which: str
    method: str
    names: tuple[str, ...] = ()
    operator: Any = field(default=None, repr=False)

    def points(self, full: bool = True) -> list[sp.Point]:
        """The eigenvectors as points (whole layout with zeros outside the selected parameters)."""
        if not isinstance(self.operator, Hessian):
            raise UserError("eigenvectors of a plain matvec have no point layout")
        return [self.operator.to_point(v, full) for v in self.vectors]

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values.tolist(), "residuals": self.residuals.tolist(),
                "converged": [bool(c) for c in self.converged], "n_hvp": self.n_hvp,
                "iterations": self.iterations, "which": self.which, "method": self.method}


def _wanted(theta: Tensor, which: str, k: int) -> Tensor:
    if which == "ends":  # internal: the smallest and the largest together
        return torch.tensor([0, theta.shape[0] - 1])[:k]
    if which == "largest":
        order = torch.argsort(theta, descending=True)
    elif which == "smallest":
        order = torch.argsort(theta)
    else:
        order = torch.argsort(theta.abs(), descending=True)
    return order[:k]


def _tridiag(alphas: list[float], betas: list[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        b = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(b, 1) + torch.diag(b, -1)
    return t


def _random_unit(size: int, gen: torch.Generator, like: Tensor, against: Tensor | None = None) -> Tensor:
    v = torch.randn(size, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
    if against is not None and against.shape[0]:
        for _ in range(2):
            v = v - against.T @ (against @ v)
    return v / v.norm()


def lanczos(matvec: Matvec, size: int, *, k: int = 1, which: str = "largest", tol: float = 1e-4,
            max_iter: int | None = None, v0: Tensor | None = None, seed: int = 0, device=None,
            dtype=torch.float64, stop: bool = True, progress: bool | None = None,
            callback: Callable[[int, Tensor, Tensor], None] | None = None):
    """Lanczos with full reorthogonalisation.

    Returns ``(theta [m], S [m, m], V [m, P], beta, m)`` where ``theta, S = eigh(T_m)``
    (float64, CPU), V the orthonormal Krylov basis, beta the last off-diagonal. With ``stop``, it ends as
    soon as the ``k`` wanted Ritz pairs have residuals ``beta |S[m-1, i]| <= tol * max|theta|``; without,
    it runs ``max_iter`` steps (SLQ). An invariant subspace found before ``k`` values exist restarts
    from a random vector orthogonal to the basis. ``callback(step, ritz_values, residuals)`` is called
    after every step with the wanted Ritz values and their residuals (for diagnostics and benchmarks).
    """
    if which not in WHICH + ("ends",):
        raise UserError(f"unknown which '{which}': use largest (algebraic), smallest (algebraic) or magnitude")
    if k < 1 or k > size:
        raise UserError(f"k must be between 1 and the number of parameters ({size}); got {k}")
    m_max = min(size, max_iter if max_iter is not None else max(2 * k + 30, 100))
    m_max = max(m_max, k)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    like = torch.empty(0, device=device, dtype=dtype) if v0 is None else v0
    V = torch.zeros(m_max, size, device=like.device, dtype=like.dtype)
    V[0] = _random_unit(size, gen, like) if v0 is None else v0 / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    theta = S = None
    beta = 0.0
    with bar("lanczos", m_max, enabled=progress if progress is not None else (None if size > 10000 else False)) as adv:
        for j in range(m_max):
            w = matvec(V[j])
            alpha = float(torch.dot(w, V[j]))
            alphas.append(alpha)
            basis = V[: j + 1]
            for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
                w = w - basis.T @ (basis @ w)
            beta = float(w.norm())
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                raise UserError("a Hessian-vector product is not finite (NaN or inf): the loss or its curvature "
                                "overflows at this point; check the checkpoint's loss")
            theta, S = torch.linalg.eigh(_tridiag(alphas, betas))
            scale = float(theta.abs().max()) or 1.0
            adv(1)
            idx = _wanted(theta, which, min(k, theta.shape[0]))
            res = beta * S[-1, idx].abs()
            if callback is not None:
                callback(j + 1, theta[idx], res)
            if j + 1 == m_max:
                break
            if stop and j + 1 >= k and bool((res <= tol * scale).all()):
                break
            if beta <= 1e-12 * scale:  # invariant subspace: exact Ritz values
                if stop and j + 1 >= k:
                    break
                V[j + 1] = _random_unit(size, gen, like, basis)
                betas.append(0.0)
                beta = 0.0
                continue
            betas.append(beta)
            V[j + 1] = w / beta
    m = len(alphas)
    return theta, S, V[:m], beta, m


def _ritz(theta, S, V, beta, which, k, tol):
    idx = _wanted(theta, which, min(k, theta.shape[0]))
    values = theta[idx]
    vectors = S[:, idx].T.to(V.device, V.dtype) @ V
    residuals = beta * S[-1, idx].abs()
    scale = float(theta.abs().max()) or 1.0
    return values, vectors, residuals, residuals <= tol * scale


def _power(matvec: Matvec, size: int, *, k: int, which: str, tol: float, max_iter: int, seed: int, like: Tensor,
           v0: Tensor | None = None):
    """Power iteration with deflation; shifted for ``largest`` / ``smallest`` (see `eigenvalues`).

    Each eigenpair is iterated until ``||H y - theta y|| <= tol * |theta|`` or ``max_iter`` products.
    Returns values, vectors, residuals, converged, products used.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    found_v: list[Tensor] = []
    found_l: list[float] = []
    n = 0

    def deflated(v: Tensor) -> Tensor:
        out = matvec(v)
        for lam, u in zip(found_l, found_v):
            out = out - lam * torch.dot(u, v) * u
        return out

    def iterate(op: Matvec) -> tuple[float, Tensor, float, bool]:
        nonlocal n, v0
        v = _random_unit(size, gen, like)
        if v0 is not None:  # the given start serves the first pair only
            v, v0 = v0 / v0.norm(), None
        lam, res = 0.0, float("inf")
        for _ in range(max_iter):
            hv = op(v)
            n += 1
            lam = float(torch.dot(v, hv))
            res = float((hv - lam * v).norm())
            if res <= tol * abs(lam):
                return lam, v, res, True
            nrm = hv.norm()
            if float(nrm) == 0.0:
                return 0.0, v, 0.0, True
            v = hv / nrm
        return lam, v, res, False

    vals, vecs, ress, convs = [], [], [], []
    for _ in range(k):
        lam, v, res, ok = iterate(deflated)
        if which != "magnitude" and ((which == "largest" and lam < 0) or (which == "smallest" and lam > 0)):
            # the dominant eigenvalue is at the other end: shift it to zero and iterate again
            shift = lam
            lam2, v, res, ok = iterate(lambda u: deflated(u) - shift * u)
            lam = lam2 + shift
            hv = deflated(v)
            n += 1
            res = float((hv - lam * v).norm())
            ok = res <= tol * max(abs(lam), abs(shift))
        vals.append(lam)
        vecs.append(v)
        ress.append(res)
        convs.append(ok)
        found_l.append(lam)
        found_v.append(v)
    return (torch.tensor(vals, dtype=torch.float64), torch.stack(vecs), torch.tensor(ress, dtype=torch.float64),
            torch.tensor(convs), n)


def eigenvalues(model: nn.Module | Evaluator | Hessian, data: Any = None, point: Mapping[str, Tensor] | None = None,
                *, k: int = 5, which: str = "largest", tol: float = 1e-4, method: str = "lanczos",
                max_iter: int | None = None, seed: int = 0, start: str = "gradient", progress: bool | None = None,
                callback: Callable[[int, Tensor, Tensor], None] | None = None, **hessian_kwargs) -> EigenResult:
    """Top-k eigenpairs of the Hessian at ``point`` (default: the model's / evaluator's own point).

    ``model``: an ``nn.Module`` (with ``data``), an `Evaluator` (``data=None``), or a `Hessian`.
    ``which``: ``"largest"`` (algebraic), ``"smallest"`` (algebraic), ``"magnitude"`` (largest |lambda|).
    ``method``: ``"lanczos"`` (full reorthogonalisation; stops when all k Ritz residuals are at most
    ``tol * max|theta|``; ``max_iter`` Krylov steps at most, default max(2k+30, 100)) or ``"power"``
    (power iteration with deflation, stops at residual ``tol * |lambda|``; ``max_iter`` products per pair,
    default 1000). For ``largest`` / ``smallest``, power iteration first finds the dominant eigenvalue; if
    it lies at the other end of the spectrum, it iterates on ``H - lambda I`` (reference implementations
    return the dominant eigenvalue and call it the largest).
    ``start``: the first vector. ``"gradient"`` (default): ``r / ||r|| + g / ||g||`` normalised, for a
    seeded Gaussian r and the mean-loss gradient g, which lies mostly in the top eigenspace (Gur-Ari et
    al. 2018), so the top pairs converge in fewer products while every eigenvector keeps r's share (r
    alone where g is zero); ``"random"``: r alone.
    Other keywords go to `Hessian` (``params``, ``bn``, ``method`` as ``hvp_method``, ...).
    """
    if which not in WHICH:
        raise UserError(f"unknown which '{which}': use largest (algebraic), smallest (algebraic) or magnitude")
    if "hvp_method" in hessian_kwargs:
        hessian_kwargs["method"] = hessian_kwargs.pop("hvp_method")
    if method not in ("lanczos", "power"):
        raise UserError(f"unknown eigenvalue method '{method}': use lanczos or power")
    H = _operator(model, data, point, hessian_kwargs)
    like = torch.empty(0, device=H.device, dtype=H.dtype)
    first = H.n_hvp
    v0 = start_vector(H, start, seed)
    if method == "lanczos":
        theta, S, V, beta, m = lanczos(H.matvec, H.size, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed,
                                       v0=v0, device=H.device, dtype=H.dtype, progress=progress, callback=callback)
        values, vectors, res, conv = _ritz(theta, S, V, beta, which, k, tol)
        iters = m
    else:
        if k > H.size:
            raise UserError(f"k must be at most the number of parameters ({H.size}); got {k}")
        values, vectors, res, conv, iters = _power(H.matvec, H.size, k=k, which=which, tol=tol,
                                                   max_iter=max_iter or 1000, seed=seed, like=like, v0=v0)
    if H is not model:
        H.release()
    return EigenResult(values.double().cpu(), vectors, res.double().cpu(), conv.cpu(), H.n_hvp - first, iters, which,
                       method, H.names, H)


def start_vector(H: Hessian, start: str = "gradient", seed: int = 0) -> Tensor:
    """The first Krylov / power vector (see `eigenvalues`): unit norm, [P]."""
    if start not in ("gradient", "random"):
        raise UserError(f"unknown start '{start}': use gradient or random")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = _random_unit(H.size, gen, torch.empty(0, device=H.device, dtype=H.dtype))
    if start == "random":
        return r
    g = H.gradient()
    norm = float(g.norm())
    if not math.isfinite(norm) or norm == 0.0:
        return r
    v = r + g / norm
    return v / v.norm()


def extreme_eigenvalues(model: nn.Module | Evaluator | Hessian, data: Any = None,
                        point: Mapping[str, Tensor] | None = None, *, tol: float = 1e-3, max_iter: int | None = None,
                        seed: int = 0, start: str = "gradient", **hessian_kwargs) -> tuple[float, float, int]:
    """``(lambda_min, lambda_max, n_hvp)`` from one Lanczos run (both ends converge together).

    The run stops when both extreme Ritz residuals are at most ``tol * max|theta|``; for the convexity
    ratio ``|lambda_min / lambda_max|`` of a landscape this costs about half of two separate runs.
    """
    H = _operator(model, data, point, hessian_kwargs)
    first = H.n_hvp
    theta, _, _, _, _ = lanczos(H.matvec, H.size, k=min(2, H.size), which="ends", tol=tol, max_iter=max_iter, seed=seed,
                                v0=start_vector(H, start, seed), device=H.device, dtype=H.dtype)
    if H is not model:
        H.release()
    return float(theta.min()), float(theta.max()), H.n_hvp - first


# -- trace ----------------------------------------------------------------------------------------

@dataclass
class TraceResult:
    """A stochastic trace estimate with its standard error.

    ``estimate`` = low-rank part (Hutch++ only) + mean of the probe samples; ``stderr`` = sample standard
    deviation / sqrt(n) of the probe samples; ``converged``: the stopping rule was met (not max_samples).
    """

    estimate: float
    stderr: float
    n_samples: int
    n_hvp: int
    method: str
    converged: bool
    low_rank: float = 0.0
    samples: Tensor = field(default_factory=lambda: torch.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "stderr": self.stderr, "n_samples": self.n_samples, "n_hvp": self.n_hvp,
                "method": self.method, "converged": self.converged, "low_rank": self.low_rank}


def _rademacher(size: int, gen: torch.Generator, like: Tensor) -> Tensor:
    return (torch.randint(0, 2, (size,), generator=gen) * 2 - 1).to(like.device, like.dtype)


def trace_of(matvec: Matvec, size: int, *, method: str = "hutchinson", rtol: float = 1e-2, atol: float = 0.0,
             min_samples: int = 10, max_samples: int = 1000, sketch: int = 10, seed: int = 0,
             probes: Tensor | None = None, device=None, dtype=torch.float64, progress: bool | None = None,
             matmat: Callable[[Tensor], Tensor] | None = None, block: int = 1) -> TraceResult:
    """Hutchinson / Hutch++ trace of a symmetric operator given by ``matvec`` (see `trace`).

    With ``matmat`` ([P, b] -> [P, b]) and ``block > 1``, the Hutch++ sketch and ``block`` probes at a
    time go through one vectorised product (the stopping rule is checked after each block).
    """
    if block > 1 and matmat is None:
        raise UserError("block > 1 needs a matmat (vectorised products)")

    def apply(Z: Tensor) -> Tensor:  # [P, b] -> [P, b]
        if block > 1:
            return torch.cat([matmat(Z[:, i:i + block]) for i in range(0, Z.shape[1], block)], dim=1)
        return torch.stack([matvec(Z[:, i]) for i in range(Z.shape[1])], dim=1)

    if method not in ("hutchinson", "hutch++"):
        raise UserError(f"unknown trace method '{method}': use hutchinson or hutch++")
    if min_samples < 2:
        raise UserError("min_samples must be at least 2 (a standard error needs two samples)")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    like = torch.empty(0, device=device, dtype=dtype) if probes is None else probes
    n_hvp = 0
    low_rank = 0.0
    Q = None
    if method == "hutch++":
        s = min(int(sketch), size)
        Y = apply(torch.stack([_rademacher(size, gen, like) for _ in range(s)], dim=1))  # [P, s]
        Q, _ = torch.linalg.qr(Y.double())
        Q = Q.to(like.device, like.dtype)
        HQ = apply(Q)
        low_rank = float((Q * HQ).sum())
        n_hvp += 2 * s
        if s == size:  # the sketch spans the whole space: the trace is exact
            return TraceResult(low_rank, 0.0, 0, n_hvp, method, True, low_rank)
    samples: list[float] = []
    converged = False
    limit = probes.shape[0] if probes is not None else max_samples
    with bar(f"trace ({method})", limit, enabled=progress if progress is not None else (None if size > 10000 else False)) as adv:
        step = block if block > 1 else 1
        for i in range(0, limit, step):
            b = min(step, limit - i)
            Z = probes[i:i + b].T if probes is not None else torch.stack([_rademacher(size, gen, like) for _ in range(b)], 1)
            Z = Z.to(like.device, like.dtype)
            if Q is not None:
                Z = Z - Q @ (Q.T @ Z)
            samples.extend((Z * apply(Z)).sum(0).tolist())
            n_hvp += b
            adv(b)
            n = len(samples)
            if probes is None and n >= min_samples:
                t = torch.tensor(samples, dtype=torch.float64)
                se = float(t.std(correction=1)) / math.sqrt(n)
                if se <= max(rtol * abs(low_rank + float(t.mean())), atol):
                    converged = True
                    break
    t = torch.tensor(samples, dtype=torch.float64)
    se = float(t.std(correction=1)) / math.sqrt(len(samples)) if len(samples) > 1 else float("nan")
    return TraceResult(low_rank + float(t.mean()), se, len(samples), n_hvp, method,
                       converged or probes is not None, low_rank, t)


def trace(model: nn.Module | Evaluator | Hessian, data: Any = None, point: Mapping[str, Tensor] | None = None, *,
          method: str = "hutchinson", rtol: float = 1e-2, atol: float = 0.0, min_samples: int = 10,
          max_samples: int = 1000, sketch: int = 10, seed: int = 0, probes: Tensor | None = None,
          block: int = 1, progress: bool | None = None, **hessian_kwargs) -> TraceResult:
    """Trace of the Hessian by Hutchinson or Hutch++, stopped on its standard error.

    Hutchinson: ``tr H ~ mean_i z_i^T H z_i`` with Rademacher ``z_i``. Hutch++ (Meyer et al. 2021):
    ``Q = orth(H S)`` for a Rademacher sketch S [P, sketch]; ``tr H = tr(Q^T H Q) + E[g^T H g]`` with
    ``g = (I - Q Q^T) z``: exact on the top subspace, Hutchinson on the rest (2*sketch extra products).
    Stops when ``stderr <= max(rtol * |estimate|, atol)`` once ``min_samples`` probes are in, or at
    ``max_samples``. ``probes`` [n, P]: use these probe vectors instead (no stopping rule).
    ``block > 1``: the sketch and ``block`` probes at a time as one vectorised product (`Hessian.matmat`;
    faster for small models and on GPUs, ``block`` times the activation memory).
    """
    if "hvp_method" in hessian_kwargs:
        hessian_kwargs["method"] = hessian_kwargs.pop("hvp_method")
    H = _operator(model, data, point, hessian_kwargs)
    out = trace_of(H.matvec, H.size, method=method, rtol=rtol, atol=atol, min_samples=min_samples,
                   max_samples=max_samples, sketch=sketch, seed=seed, probes=probes, device=H.device,
                   dtype=H.dtype, progress=progress, matmat=H.matmat, block=block)
    if H is not model:
        H.release()
    return out


# -- spectral density -----------------------------------------------------------------------------

@dataclass
class Density:
    """A stochastic Lanczos quadrature estimate of the spectral density.

    ``nodes``, ``weights``: [n_probes, m] Ritz values and squared first components (each row sums to 1);
    ``grid`` [G] and ``values`` [G]: the Gaussian-smoothed density
    ``phi(t) = (1/n_probes) sum_l sum_j w_lj N(t; theta_lj, sigma^2)`` (integrates to 1); ``size`` = P.
    """

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    values: Tensor
    sigma: float
    size: int

    def moment(self, p: int) -> float:
        """Estimate of ``tr(H^p) / P``: ``(1/n_probes) sum_l sum_j w_lj theta_lj^p``."""
        return float((self.weights * self.nodes ** p).sum(1).mean())

    def probe_moments(self, p: int) -> Tensor:
        """Per-probe quadrature ``sum_j w_lj theta_lj^p`` = ``v_l^T H^p v_l / ||v_l||^2`` exactly for
        ``2 m - 1 >= p``: [n_probes]."""
        return (self.weights * self.nodes ** p).sum(1)

    @property
    def trace(self) -> float:
        return self.size * self.moment(1)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "grid": self.grid.tolist(),
                "density": self.values.tolist(), "sigma": self.sigma, "size": self.size}


def smooth_density(nodes: Tensor, weights: Tensor, sigma: float | None = None, grid: int = 1000,
                   pad: float = 0.05) -> tuple[Tensor, Tensor, float]:
    """Gaussian-smoothed density on a grid from quadrature nodes/weights [L, m]. ``sigma`` default:
    1% of the spectral range. Returns (grid [G], density [G], sigma)."""
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    if sigma is None:
        sigma = 0.01 * width
    t = torch.linspace(lo - pad * width - 3 * sigma, hi + pad * width + 3 * sigma, grid, dtype=torch.float64)
    z = (t[None, None, :] - nodes[..., None]) / sigma
    dens = (weights[..., None] * torch.exp(-0.5 * z ** 2)).sum(1).mean(0) / (sigma * math.sqrt(2 * math.pi))
    return t, dens, float(sigma)


def density(model: nn.Module | Evaluator | Hessian, data: Any = None, point: Mapping[str, Tensor] | None = None, *,
            n_probes: int = 5, steps: int = 80, sigma: float | None = None, grid: int = 1000, seed: int = 0,
            probes: Tensor | None = None, progress: bool | None = None, **hessian_kwargs) -> Density:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019; Lin et al. 2016).

    For each of ``n_probes`` Rademacher probes v (or the rows of ``probes`` [n, P]): ``steps`` Lanczos
    steps with full reorthogonalisation from v / ||v|| give T = S diag(theta) S^T; the quadrature has
    nodes theta_j and weights S[0, j]^2. See `Density` for the smoothing.
    """
    if "hvp_method" in hessian_kwargs:
        hessian_kwargs["method"] = hessian_kwargs.pop("hvp_method")
    H = _operator(model, data, point, hessian_kwargs)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    like = torch.empty(0, device=H.device, dtype=H.dtype)
    vs = probes if probes is not None else torch.stack([_rademacher(H.size, gen, like) for _ in range(n_probes)])
    m = min(steps, H.size)
    nodes, weights = [], []
    for i in range(vs.shape[0]):
        theta, S, _, _, mm = lanczos(H.matvec, H.size, k=1, tol=0.0, max_iter=m, v0=vs[i].to(H.device, H.dtype),
                                     seed=seed + i, device=H.device, dtype=H.dtype, stop=False, progress=progress)
        w = S[0] ** 2
        # a probe whose Krylov space closed early gives fewer nodes: pad with zero weight
        pad = m - theta.shape[0]
        nodes.append(torch.cat([theta, torch.zeros(pad, dtype=torch.float64)]))
        weights.append(torch.cat([w, torch.zeros(pad, dtype=torch.float64)]))
    if H is not model:
        H.release()
    nodes_t, weights_t = torch.stack(nodes), torch.stack(weights)
    g, d, s = smooth_density(nodes_t, weights_t, sigma, grid)
    return Density(nodes_t, weights_t, g, d, s, H.size)


def plot_density(dens: Density, path: str | None = None, ax=None, log: bool = True, title: str | None = None):
    """Plot a `Density` (matplotlib; log scale by default, as Hessian spectra are heavy-tailed).
    Saves to ``path`` when given; returns the axes."""
    import matplotlib
    if ax is None and path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4))
    y = dens.values.clamp_min(1e-12) if log else dens.values
    ax.plot(dens.grid.numpy(), y.numpy(), lw=1.2)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-8, float(y.max()) * 1e-10))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (SLQ, sigma=%.2g)" % dens.sigma)
    ax.set_title(title or f"Hessian spectral density ({dens.nodes.shape[0]} probes, {dens.nodes.shape[1]} steps)")
    if own and path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
    return ax


# -- per layer / per block ------------------------------------------------------------------------

def blockwise(fn: Callable[..., Any], model: nn.Module | Evaluator, data: Any = None,
              point: Mapping[str, Tensor] | None = None, *, by: str | int | Mapping[str, Any] = "layer",
              bn: str | None = None, progress: bool | None = None, **kwargs) -> dict[str, Any]:
    """Run ``fn`` (`eigenvalues`, `trace` or `density`) on each diagonal block ``H[S_g, S_g]``.

    ``by``: see `param_groups`. One evaluator is shared by all groups. Returns ``{group: result}``.
    """
    ev = as_evaluator(model, data, bn=bn)
    groups = param_groups(ev.space, by)
    out = {}
    with bar(f"{getattr(fn, '__name__', 'curvature')} per {by if isinstance(by, (str, int)) else 'group'}",
             len(groups), enabled=progress) as adv:
        for g, names in groups.items():
            out[g] = fn(ev, None, point, params=list(names), **kwargs)
            adv(1)
    return out


__all__ = ["Hessian", "hvp", "eigenvalues", "extreme_eigenvalues", "trace", "density", "plot_density", "blockwise",
           "EigenResult", "TraceResult", "Density", "lanczos", "trace_of", "select_params", "param_groups",
           "smooth_density", "as_evaluator"]

"""User-level curvature: eigenvalues, traces, spectral densities and per-block versions of the Hessian,
the GGN or the empirical Fisher.

Each function here takes a model (with data), an `Evaluator` or a ready operator (`Hessian`, `GGN`,
`EmpiricalFisher`), builds the operator (`operators`; ``curvature="hessian" | "ggn" | "fisher"``),
runs one of the matvec-only algorithms (`krylov`) on it, releases what it built, and
returns a small result (`EigenResult`, `TraceResult`, `Density`) with ``to_dict()`` for the CLI and the
store. This is the layer the CLI, `sharpness`, `landscape` and `symmetry` call; the algorithms below it
know nothing of models, and the operator nothing of eigenvalues.

`TraceResult` is defined next to `trace_of` in `krylov` (which returns it) and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..evaluate import Evaluator
from ..progress import bar
from .krylov import WHICH, TraceResult, lanczos, power_iteration, rademacher, random_unit, ritz, trace_of
from .operators import CurvatureOperator, as_evaluator, curvature_operator, param_groups


def _operator(model, data, point, kwargs) -> CurvatureOperator:
    """The given operator (`Hessian`, `GGN`, `EmpiricalFisher`) as it is, or one built from the model (or
    evaluator), data and point: ``curvature="hessian"`` (default), ``"ggn"`` or ``"fisher"``."""
    kind = kwargs.pop("curvature", "hessian")
    if isinstance(model, CurvatureOperator):
        if data is not None or point is not None or kwargs:
            raise UserError(f"a {model.kind} operator already fixes its data, point and parameters")
        return model
    return curvature_operator(kind, model, data, point, **kwargs)


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
        if not isinstance(self.operator, CurvatureOperator):
            raise UserError("eigenvectors of a plain matvec have no point layout")
        return [self.operator.to_point(v, full) for v in self.vectors]

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "converged": [bool(c) for c in self.converged],
            "n_hvp": self.n_hvp,
            "iterations": self.iterations,
            "which": self.which,
            "method": self.method,
        }


def eigenvalues(
    model: nn.Module | Evaluator | CurvatureOperator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    method: str = "lanczos",
    max_iter: int | None = None,
    seed: int = 0,
    start: str = "gradient",
    progress: bool | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    **hessian_kwargs,
) -> EigenResult:
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
    ``curvature``: ``"hessian"`` (default), ``"ggn"`` or ``"fisher"`` (the operator built; see
    `curvature_operator`). Other keywords go to it (``params``, ``bn``, ``method`` as ``hvp_method``,
    ``distributed``, ...).
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
        lz = lanczos(
            H.matvec,
            H.size,
            k=k,
            which=which,
            tol=tol,
            max_iter=max_iter,
            seed=seed,
            v0=v0,
            device=H.device,
            dtype=H.dtype,
            progress=progress,
            callback=callback,
        )
        values, vectors, res, conv = ritz(lz, which, k, tol)
        iters = lz.steps
    else:
        if k > H.size:
            raise UserError(f"k must be at most the number of parameters ({H.size}); got {k}")
        values, vectors, res, conv, iters = power_iteration(
            H.matvec, H.size, k=k, which=which, tol=tol, max_iter=max_iter or 1000, seed=seed, like=like, v0=v0
        )
    if H is not model:
        H.release()
    return EigenResult(
        values.double().cpu(),
        vectors,
        res.double().cpu(),
        conv.cpu(),
        H.n_hvp - first,
        iters,
        which,
        method,
        H.names,
        H,
    )


def start_vector(H: CurvatureOperator, start: str = "gradient", seed: int = 0) -> Tensor:
    """The first Krylov / power vector (see `eigenvalues`): unit norm, [P]."""
    if start not in ("gradient", "random"):
        raise UserError(f"unknown start '{start}': use gradient or random")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = random_unit(H.size, gen, torch.empty(0, device=H.device, dtype=H.dtype))
    if start == "random":
        return r
    g = H.gradient()
    norm = float(g.norm())
    if not math.isfinite(norm) or norm == 0.0:
        return r
    v = r + g / norm
    return v / v.norm()


def extreme_eigenvalues(
    model: nn.Module | Evaluator | CurvatureOperator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    start: str = "gradient",
    **hessian_kwargs,
) -> tuple[float, float, int]:
    """``(lambda_min, lambda_max, n_hvp)`` from one Lanczos run (both ends converge together).

    The run stops when both extreme Ritz residuals are at most ``tol * max|theta|``; for the convexity
    ratio ``|lambda_min / lambda_max|`` of a landscape this costs about half of two separate runs.
    """
    H = _operator(model, data, point, hessian_kwargs)
    first = H.n_hvp
    theta = lanczos(
        H.matvec,
        H.size,
        k=min(2, H.size),
        which="ends",
        tol=tol,
        max_iter=max_iter,
        seed=seed,
        v0=start_vector(H, start, seed),
        device=H.device,
        dtype=H.dtype,
    ).theta
    if H is not model:
        H.release()
    return float(theta.min()), float(theta.max()), H.n_hvp - first


# -- trace ----------------------------------------------------------------------------------------


def trace(
    model: nn.Module | Evaluator | CurvatureOperator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    method: str = "hutchinson",
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_samples: int = 10,
    max_samples: int = 1000,
    sketch: int = 10,
    seed: int = 0,
    probes: Tensor | None = None,
    block: int = 1,
    progress: bool | None = None,
    **hessian_kwargs,
) -> TraceResult:
    """Trace of the Hessian (or ``curvature="ggn" | "fisher"``) by Hutchinson or Hutch++, stopped on its
    standard error.

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
    out = trace_of(
        H.matvec,
        H.size,
        method=method,
        rtol=rtol,
        atol=atol,
        min_samples=min_samples,
        max_samples=max_samples,
        sketch=sketch,
        seed=seed,
        probes=probes,
        device=H.device,
        dtype=H.dtype,
        progress=progress,
        matmat=H.matmat,
        block=block,
    )
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
        return float((self.weights * self.nodes**p).sum(1).mean())

    def probe_moments(self, p: int) -> Tensor:
        """Per-probe quadrature ``sum_j w_lj theta_lj^p`` = ``v_l^T H^p v_l / ||v_l||^2`` exactly for
        ``2 m - 1 >= p``: [n_probes]."""
        return (self.weights * self.nodes**p).sum(1)

    @property
    def trace(self) -> float:
        return self.size * self.moment(1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "grid": self.grid.tolist(),
            "density": self.values.tolist(),
            "sigma": self.sigma,
            "size": self.size,
        }


def smooth_density(
    nodes: Tensor, weights: Tensor, sigma: float | None = None, grid: int = 1000, pad: float = 0.05
) -> tuple[Tensor, Tensor, float]:
    """Gaussian-smoothed density on a grid from quadrature nodes/weights [L, m]. ``sigma`` default:
    1% of the spectral range. Returns (grid [G], density [G], sigma)."""
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    if sigma is None:
        sigma = 0.01 * width
    t = torch.linspace(lo - pad * width - 3 * sigma, hi + pad * width + 3 * sigma, grid, dtype=torch.float64)
    z = (t[None, None, :] - nodes[..., None]) / sigma
    dens = (weights[..., None] * torch.exp(-0.5 * z**2)).sum(1).mean(0) / (sigma * math.sqrt(2 * math.pi))
    return t, dens, float(sigma)


def density(
    model: nn.Module | Evaluator | CurvatureOperator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    n_probes: int = 5,
    steps: int = 80,
    sigma: float | None = None,
    grid: int = 1000,
    seed: int = 0,
    probes: Tensor | None = None,
    progress: bool | None = None,
    **hessian_kwargs,
) -> Density:
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
    vs = probes if probes is not None else torch.stack([rademacher(H.size, gen, like) for _ in range(n_probes)])
    m = min(steps, H.size)
    nodes, weights = [], []
    for i in range(vs.shape[0]):
        lz = lanczos(
            H.matvec,
            H.size,
            k=1,
            tol=0.0,
            max_iter=m,
            v0=vs[i].to(H.device, H.dtype),
            seed=seed + i,
            device=H.device,
            dtype=H.dtype,
            stop=False,
            progress=progress,
        )
        theta, w = lz.theta, lz.S[0] ** 2
        # a probe whose Krylov space closed early gives fewer nodes: pad with zero weight
        pad = m - theta.shape[0]
        nodes.append(torch.cat([theta, torch.zeros(pad, dtype=torch.float64)]))
        weights.append(torch.cat([w, torch.zeros(pad, dtype=torch.float64)]))
    if H is not model:
        H.release()
    nodes_t, weights_t = torch.stack(nodes), torch.stack(weights)
    g, d, s = smooth_density(nodes_t, weights_t, sigma, grid)
    return Density(nodes_t, weights_t, g, d, s, H.size)


# -- per layer / per block ------------------------------------------------------------------------


def blockwise(
    fn: Callable[..., Any],
    model: nn.Module | Evaluator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    by: str | int | Mapping[str, Any] = "layer",
    bn: str | None = None,
    progress: bool | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Run ``fn`` (`eigenvalues`, `trace` or `density`) on each diagonal block ``H[S_g, S_g]``.

    ``by``: see `param_groups`. One evaluator is shared by all groups. Returns ``{group: result}``.
    """
    ev = as_evaluator(model, data, bn=bn)
    groups = param_groups(ev.space, by)
    out = {}
    with bar(
        f"{getattr(fn, '__name__', 'curvature')} per {by if isinstance(by, (str, int)) else 'group'}",
        len(groups),
        enabled=progress,
    ) as adv:
        for g, names in groups.items():
            out[g] = fn(ev, None, point, params=list(names), **kwargs)
            adv(1)
    return out


__all__ = [
    "EigenResult",
    "eigenvalues",
    "start_vector",
    "extreme_eigenvalues",
    "TraceResult",
    "trace",
    "Density",
    "smooth_density",
    "density",
    "blockwise",
]

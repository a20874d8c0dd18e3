"""Sharpness and flatness measures of a minimum, as used to predict generalisation.

All measures perturb the parameters of a point (``params`` filter as in `curvature.select_params`) and
measure the loss (or accuracy) over a whole dataset through the `Evaluator`, with its BN policy. With
``c`` a per-entry scale, ``delta = c * u`` and ``L`` the mean loss over the data:

* worst-case sharpness (Foret et al. 2021; Andriushchenko et al. 2023):
  ``S_max = max_{||u||_p <= rho} L(w + c*u) - L(w)``, p in {2, inf}, maximised by projected gradient
  ascent (normalised-gradient steps for L2, sign steps for Linf; the best iterate is kept);
* average-case sharpness: ``S_avg = E_{u ~ Uniform(B_p(rho))} L(w + c*u) - L(w)`` (Monte Carlo, with its
  standard error);
* ``c = 1`` for the plain measures, ``c = |w|`` for the adaptive ones (invariant to Dinh et al.'s
  layer rescalings, because ``T(w + |w| u) = Tw + |Tw| u`` for a positive diagonal T);
* Keskar et al. (2017) epsilon-sharpness: the box ``|delta_i| <= eps (|w_i| + 1)`` (Linf with
  ``c = |w| + 1``), reported as ``100 * (max L(w + delta) - L(w)) / (1 + L(w))``;
* magnitude-aware PAC-Bayes sigma (Jiang et al. 2020): the largest sigma such that
  ``u_i ~ N(0, sigma^2 w_i^2 + eps^2)`` lowers the accuracy by ``target`` (0.1), found by bisection on
  [0, upper]; the flatness measure is ``1 / sigma^2``;
* filter-normalised 1D sharpness (Li et al. 2018): along filter-normalised Gaussian directions d
  (`directions.random_direction`), ``max_{|a| <= r} L(w + a d) - L(w)`` and the curvature ``d^T H d``.

`measure_all` computes a named set (the ones in `MEASURES`) and returns a flat dict of floats.
Formulas and defaults are documented in docs/curvature.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import curvature as cv
from . import directions as dirs
from . import space as sp
from .errors import UserError
from .evaluate import Evaluator

NORMS = ("l2", "linf")


@dataclass
class Target:
    """What a measure perturbs: the evaluator, the point, and the names of the perturbed parameters."""

    ev: Evaluator
    point: sp.Point
    names: tuple[str, ...]
    source: str | None = None


def target(
    model: nn.Module | Evaluator | Target,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    params: str | Sequence[str] | None = "all",
    bn: str | None = None,
    source: str | None = None,
) -> Target:
    """Resolve ``(model or evaluator, data, point, params)`` once for several measures."""
    if isinstance(model, Target):
        return model
    ev = cv.as_evaluator(model, data, bn=bn)
    point = ev.point0 if point is None else point
    ev.space.check(point, what="point")
    p = {n: point[n].detach().to(ev.device, ev.dtype) for n in ev.space.names}
    return Target(ev, p, cv.select_params(ev.space, params), source)


def _column(ev: Evaluator, metric: str, source: str | None) -> int:
    key = source if source is not None else next(iter(ev.sources))
    name = f"{key}_{metric}" if key else metric
    if name not in ev.names:
        raise UserError(f"the evaluator does not compute '{metric}': build it with metrics including '{metric}'")
    return ev.names.index(name)


def evaluate(t: Target, points: Sequence[Mapping[str, Tensor]], metric: str = "loss") -> Tensor:
    """``metric`` at each point over the target's source: [K] float64."""
    m = t.ev(list(points), progress=False)
    return m.values[:, _column(t.ev, metric, t.source)]


def loss_and_grad(t: Target, point: Mapping[str, Tensor]) -> tuple[float, sp.Point]:
    """Whole-dataset mean loss at ``point`` and its gradient over the target's names (batch by batch)."""
    params = dict(point)
    leaves = [params[n].detach().requires_grad_(True) for n in t.names]
    params.update(zip(t.names, leaves, strict=True))
    buffers = t.ev.point_buffers({n: v.detach() for n, v in point.items()})
    total = 0.0
    grads = [torch.zeros_like(x) for x in leaves]
    for w, loss in t.ev.batch_losses(params, buffers, t.source):
        g = torch.autograd.grad(loss, leaves)
        total += w * float(loss.detach())
        for acc, gi in zip(grads, g, strict=True):
            acc.add_(gi, alpha=w)
    return total, dict(zip(t.names, grads, strict=True))


def scales(t: Target, kind: str) -> sp.Point:
    """Per-entry scale c: ``"plain"`` 1, ``"adaptive"`` |w|, ``"keskar"`` |w| + 1 (selected names only)."""
    if kind == "plain":
        return {n: torch.ones_like(t.point[n]) for n in t.names}
    if kind == "adaptive":
        return {n: t.point[n].abs() for n in t.names}
    if kind == "keskar":
        return {n: t.point[n].abs() + 1 for n in t.names}
    raise UserError(f"unknown scale '{kind}': use plain, adaptive or keskar")


def _perturb(t: Target, c: Mapping[str, Tensor], u: Mapping[str, Tensor]) -> sp.Point:
    return {n: (t.point[n] + c[n] * u[n] if n in u else t.point[n]) for n in t.point}


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm '{norm}': use l2 or linf")


# -- worst case ------------------------------------------------------------------------------------


def worst_case(
    t: Target,
    rho: float,
    norm: str = "l2",
    scale: str = "plain",
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """``max_{||u||_p <= rho} L(w + c*u) - L(w)`` by projected gradient ascent.

    Starts at a seeded uniform point of the ball of radius rho/10 (so it also leaves an exact critical
    point, where the gradient is zero). Steps in u: L2 ``u += alpha g_u / ||g_u||`` then projection on
    the ball; Linf ``u += alpha sign(g_u)`` then clipping, with ``g_u = c * grad L(w + c*u)`` and
    ``alpha = step_size or 2.5 rho / steps``. The largest loss over the iterates is kept.
    Returns ``{"value", "base", "max_loss"}``.
    """
    _check_norm(norm)
    if rho < 0 or steps < 1:
        raise UserError("rho must be >= 0 and steps >= 1")
    c = scales(t, scale)
    alpha = step_size if step_size is not None else 2.5 * rho / steps
    base = float(evaluate(t, [t.point])[0])
    u = uniform_ball(t, rho / 10, norm, 1, seed)[0]
    best, g = loss_and_grad(t, _perturb(t, c, u))
    best = max(best, base)
    for i in range(steps):
        gu = {n: c[n] * g[n] for n in t.names}
        if norm == "linf":
            u = {n: (u[n] + alpha * gu[n].sign()).clamp(-rho, rho) for n in t.names}
        else:
            gn = float(sp.norm(gu))
            if gn == 0.0:
                break
            u = sp.axpy(alpha / gn, gu, u)
            un = float(sp.norm(u))
            if un > rho:
                u = sp.scale(u, rho / un)
        p = _perturb(t, c, u)
        if i + 1 < steps:
            val, g = loss_and_grad(t, p)
        else:
            val = float(evaluate(t, [p])[0])
        best = max(best, val)
    return {"value": best - base, "base": base, "max_loss": best}


def keskar(t: Target, epsilon: float = 1e-3, steps: int = 10, seed: int = 0) -> dict[str, float]:
    """Keskar et al.'s epsilon-sharpness in percent:
    ``100 (max_{|d_i| <= eps(|w_i|+1)} L(w+d) - L(w)) / (1 + L(w))``."""
    r = worst_case(t, epsilon, "linf", "keskar", steps, seed=seed)
    return {
        "value": 100.0 * (r["max_loss"] - r["base"]) / (1.0 + r["base"]),
        "base": r["base"],
        "max_loss": r["max_loss"],
    }


# -- average case ----------------------------------------------------------------------------------


def uniform_ball(t: Target, rho: float, norm: str, n: int, seed: int) -> list[sp.Point]:
    """``n`` draws of u uniform in the ball ``||u||_p <= rho`` over the target's names (CPU generator)."""
    _check_norm(norm)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    d = sum(t.point[k].numel() for k in t.names)
    out = []
    for _ in range(n):
        if norm == "linf":
            u = {k: (torch.rand(t.point[k].shape, generator=gen, dtype=torch.float64) * 2 - 1) * rho for k in t.names}
        else:
            g = {k: torch.randn(t.point[k].shape, generator=gen, dtype=torch.float64) for k in t.names}
            r = rho * float(torch.rand((), generator=gen, dtype=torch.float64)) ** (1.0 / d)
            u = sp.scale(g, r / float(sp.norm(g)))
        out.append({k: v.to(t.point[k].device, t.point[k].dtype) for k, v in u.items()})
    return out


def average_case(
    t: Target, rho: float, norm: str = "l2", scale: str = "plain", samples: int = 16, seed: int = 0
) -> dict[str, float]:
    """``E_{u ~ Uniform(B_p(rho))} L(w + c*u) - L(w)``: Monte Carlo mean and standard error."""
    c = scales(t, scale)
    base = float(evaluate(t, [t.point])[0])
    pts = [_perturb(t, c, u) for u in uniform_ball(t, rho, norm, samples, seed)]
    diffs = evaluate(t, pts) - base
    se = float(diffs.std(correction=1)) / math.sqrt(samples) if samples > 1 else float("nan")
    return {"value": float(diffs.mean()), "stderr": se, "base": base}


# -- PAC-Bayes -------------------------------------------------------------------------------------


def pac_bayes_sigma(
    t: Target,
    magnitude: bool = True,
    eps: float = 1e-3,
    target_drop: float = 0.1,
    metric: str = "accuracy",
    tol: float = 1e-2,
    depth: int = 15,
    samples: int = 10,
    upper: float = 2.0,
    seed: int = 0,
) -> dict[str, float]:
    """The PAC-Bayes sigma of Jiang et al. (2020), by bisection on [0, upper].

    Noise ``u_i = s_i xi_i`` with ``xi ~ N(0, 1)`` and ``s_i = sqrt(sigma^2 w_i^2 + eps^2)`` (magnitude-aware)
    or ``s_i = sigma``. The drift ``|mean_j metric(w + u_j) - metric(w)|`` over ``samples`` draws is compared
    with ``target_drop``: bisection stops when it is within ``tol`` (or after ``depth`` halvings). The same
    draws xi are reused for every sigma (common random numbers), so the drift is a smooth function of sigma.
    Returns ``{"sigma", "flatness" (1/sigma^2), "drift", "base"}``.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    xis = [
        {
            k: torch.randn(t.point[k].shape, generator=gen, dtype=torch.float64).to(t.point[k].device, t.point[k].dtype)
            for k in t.names
        }
        for _ in range(samples)
    ]
    base = float(evaluate(t, [t.point], metric)[0])
    lo, hi = 0.0, float(upper)
    sigma, drift = hi, float("nan")
    for _ in range(depth):
        sigma = 0.5 * (lo + hi)
        if magnitude:
            s = {k: torch.sqrt(sigma**2 * t.point[k] ** 2 + eps**2) for k in t.names}
        else:
            s = {k: torch.full_like(t.point[k], sigma) for k in t.names}
        pts = [{k: (t.point[k] + s[k] * xi[k] if k in xi else t.point[k]) for k in t.point} for xi in xis]
        drift = abs(float(evaluate(t, pts, metric).mean()) - base)
        if abs(drift - target_drop) < tol:
            break
        if drift > target_drop:
            hi = sigma
        else:
            lo = sigma
    return {"sigma": sigma, "flatness": 1.0 / sigma**2, "drift": drift, "base": base}


# -- filter-normalised 1D --------------------------------------------------------------------------


def filter_sharpness(
    t: Target,
    radius: float = 1.0,
    n_points: int = 21,
    n_directions: int = 1,
    seed: int = 0,
    ignore: str = "biasbn",
    curvature: bool = True,
) -> dict[str, float]:
    """Along filter-normalised Gaussian directions d (seeds ``seed + j``): the rise
    ``max_{a in linspace(-r, r, n_points)} L(w + a d) - L(w)`` and the curvature ``d^T H d``
    (second derivative of ``a -> L(w + a d)`` at 0), each averaged over directions. Only the target's
    parameters move (d is zero elsewhere)."""
    alphas = torch.linspace(-radius, radius, n_points, dtype=torch.float64)
    base = float(evaluate(t, [t.point])[0])
    rises, curvs = [], []
    H = cv.Hessian(t.ev, None, t.point, params=list(t.names), source=t.source) if curvature else None
    keep = set(t.names)
    for j in range(n_directions):
        d = dirs.random_direction(t.point, normalization="filter", ignore=ignore, seed=seed + j, space=t.ev.space)
        d = {k: (v if k in keep else torch.zeros_like(v)) for k, v in d.items()}
        pts = [{k: t.point[k] + float(a) * d[k] for k in t.point} for a in alphas]
        rises.append(float(evaluate(t, pts).max()) - base)
        if H is not None:
            fd = H.flat(d)
            curvs.append(float(torch.dot(fd, H.matvec(fd))))
    out = {"value": sum(rises) / len(rises), "base": base}
    if curvs:
        out["curvature"] = sum(curvs) / len(curvs)
    return out


# -- the named set ---------------------------------------------------------------------------------

DEFAULTS: dict[str, dict[str, Any]] = {
    "lambda_max": {"tol": 1e-3},
    "trace": {"rtol": 0.05, "max_samples": 200},
    "keskar": {"epsilon": 1e-3, "steps": 10},
    "worst_l2": {"rho": 0.1, "norm": "l2", "scale": "plain", "steps": 10},
    "worst_linf": {"rho": 1e-3, "norm": "linf", "scale": "plain", "steps": 10},
    "adaptive_worst_l2": {"rho": 0.5, "norm": "l2", "scale": "adaptive", "steps": 10},
    "adaptive_worst_linf": {"rho": 0.01, "norm": "linf", "scale": "adaptive", "steps": 10},
    "avg_l2": {"rho": 1.0, "norm": "l2", "scale": "plain", "samples": 16},
    "avg_linf": {"rho": 0.01, "norm": "linf", "scale": "plain", "samples": 16},
    "adaptive_avg_l2": {"rho": 2.0, "norm": "l2", "scale": "adaptive", "samples": 16},
    "adaptive_avg_linf": {"rho": 0.1, "norm": "linf", "scale": "adaptive", "samples": 16},
    "pacbayes_mag": {"magnitude": True},
    "filter_1d": {"radius": 1.0, "n_points": 21, "n_directions": 2},
}
MEASURES = tuple(DEFAULTS)


def _run_measure(name: str, t: Target, opts: dict[str, Any], seed: int) -> dict[str, float]:
    if name == "lambda_max":
        r = cv.eigenvalues(
            t.ev, None, t.point, k=1, which="largest", params=list(t.names), source=t.source, seed=seed, **opts
        )
        return {"value": float(r.values[0])}
    if name == "trace":
        tr = cv.trace(t.ev, None, t.point, params=list(t.names), source=t.source, seed=seed, **opts)
        return {"value": tr.estimate, "stderr": tr.stderr}
    if name == "keskar":
        return keskar(t, seed=seed, **opts)
    if name.startswith(("worst", "adaptive_worst")):
        return worst_case(t, seed=seed, **opts)
    if name.startswith(("avg", "adaptive_avg")):
        return average_case(t, seed=seed, **opts)
    if name == "pacbayes_mag":
        pb = pac_bayes_sigma(t, seed=seed, **opts)
        return {"value": pb["flatness"], "sigma": pb["sigma"], "drift": pb["drift"]}
    if name == "filter_1d":
        return filter_sharpness(t, seed=seed, **opts)
    raise UserError(f"unknown measure '{name}': use any of {', '.join(MEASURES)}")


def measure_all(
    model: nn.Module | Evaluator | Target,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    measures: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    params: str | Sequence[str] | None = "all",
    bn: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, float]:
    """Compute named measures (default: all of `MEASURES`) at a point.

    ``options`` overrides defaults per measure, e.g. ``{"worst_l2": {"rho": 0.05}}``. Returns a flat
    dict: ``name`` -> value, plus ``name.stderr`` / ``name.sigma`` / ``filter_1d.curvature`` where
    measured, and ``loss`` (the base loss).
    """
    from .progress import bar

    t = target(model, data, point, params=params, bn=bn)
    names = list(measures) if measures is not None else list(MEASURES)
    for n in names:
        if n not in DEFAULTS:
            raise UserError(f"unknown measure '{n}': use any of {', '.join(MEASURES)}")
    out: dict[str, float] = {}
    with bar("sharpness measures", len(names), enabled=progress) as adv:
        for n in names:
            opts = {**DEFAULTS[n], **dict((options or {}).get(n, {}))}
            r = _run_measure(n, t, opts, seed)
            out[n] = r["value"]
            for k, v in r.items():
                if k == "base":
                    out.setdefault("loss", v)
                elif k not in ("value", "max_loss"):
                    out[f"{n}.{k}"] = v
            adv(1, info=n)
    return out


def rescale_layers(point: Mapping[str, Tensor], first: str, second: str, alpha: float) -> sp.Point:
    """Dinh et al. (2017): multiply module ``first``'s weight and bias by ``alpha`` and module ``second``'s
    weight by ``1/alpha``. With a positively homogeneous activation (ReLU) between them and no
    normalisation, the network computes the same function."""
    out = dict(point)
    for k in point:
        if k in (f"{first}.weight", f"{first}.bias"):
            out[k] = point[k] * alpha
        elif k == f"{second}.weight":
            out[k] = point[k] / alpha
    if f"{first}.weight" not in point or f"{second}.weight" not in point:
        raise UserError(f"rescale_layers needs parameters '{first}.weight' and '{second}.weight'")
    return out


__all__ = [
    "Target",
    "target",
    "worst_case",
    "average_case",
    "keskar",
    "pac_bayes_sigma",
    "filter_sharpness",
    "measure_all",
    "MEASURES",
    "DEFAULTS",
    "rescale_layers",
    "loss_and_grad",
    "uniform_ball",
    "evaluate",
]

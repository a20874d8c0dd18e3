"""Krylov and stochastic routines on a symmetric matvec: Lanczos, power iteration, Hutchinson / Hutch++.

Everything here needs only ``matvec(v [P]) -> [P]`` (and optionally a vectorised ``matmat``) of a
symmetric operator, never the model: the same code runs on the `Hessian` operator and on a dense matrix
in tests, and it can be checked against known spectra without autograd. It deliberately does not import
the operator module.

* `lanczos`: Lanczos with full reorthogonalisation, stopped on the wanted Ritz pairs' residuals
  ``||H y - theta y|| = beta_m |s_m|``; returns a `LanczosResult`, from which `ritz` extracts eigenpairs.
* `power_iteration`: power iteration with deflation and a shift for the far end of the spectrum.
* `trace_of`: Hutchinson and Hutch++ traces, stopped on the standard error of the mean (`TraceResult`).
* `rademacher`, `random_unit`: the seeded random vectors all of these start from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..progress import bar

WHICH = ("largest", "smallest", "magnitude")

Matvec = Callable[[Tensor], Tensor]


# -- random vectors ------------------------------------------------------------------------------


def rademacher(size: int, gen: torch.Generator, like: Tensor) -> Tensor:
    """A Rademacher (+-1) vector [P] drawn from ``gen``, on ``like``'s device and dtype."""
    return (torch.randint(0, 2, (size,), generator=gen) * 2 - 1).to(like.device, like.dtype)


def random_unit(size: int, gen: torch.Generator, like: Tensor, against: Tensor | None = None) -> Tensor:
    """A unit Gaussian vector [P] drawn from ``gen`` (float64, then ``like``'s device and dtype), made
    orthogonal to the orthonormal rows of ``against`` [m, P] when given."""
    v = torch.randn(size, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
    if against is not None and against.shape[0]:
        for _ in range(2):
            v = v - against.T @ (against @ v)
    return v / v.norm()


# -- Lanczos and power iteration ----------------------------------------------------------------


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


@dataclass
class LanczosResult:
    """What a `lanczos` run leaves: ``theta [m], S [m, m] = eigh(T_m)`` (float64, CPU), ``V [m, P]`` the
    orthonormal Krylov basis, ``beta`` the last off-diagonal (so the Ritz pair ``(theta_i, V^T S[:, i])``
    has residual ``beta |S[m-1, i]|``) and ``steps`` = m, the number of Lanczos steps taken."""

    theta: Tensor
    S: Tensor
    V: Tensor
    beta: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """Ritz values, eigenvectors of T, beta and steps as plain lists and floats (not the basis V)."""
        return {"theta": self.theta.tolist(), "S": self.S.tolist(), "beta": float(self.beta), "steps": int(self.steps)}


def lanczos(
    matvec: Matvec,
    size: int,
    *,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    v0: Tensor | None = None,
    seed: int = 0,
    device=None,
    dtype=torch.float64,
    stop: bool = True,
    progress: bool | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> LanczosResult:
    """Lanczos with full reorthogonalisation.

    Returns a `LanczosResult`: ``theta [m], S [m, m] = eigh(T_m)`` (float64, CPU), ``V [m, P]`` the
    orthonormal Krylov basis, ``beta`` the last off-diagonal, ``steps`` = m. With ``stop``, it ends as
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
    V[0] = random_unit(size, gen, like) if v0 is None else v0 / v0.norm()
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
                raise UserError(
                    "a Hessian-vector product is not finite (NaN or inf): the loss or its curvature "
                    "overflows at this point; check the checkpoint's loss"
                )
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
                V[j + 1] = random_unit(size, gen, like, basis)
                betas.append(0.0)
                beta = 0.0
                continue
            betas.append(beta)
            V[j + 1] = w / beta
    m = len(alphas)
    assert theta is not None and S is not None  # the loop runs at least once
    return LanczosResult(theta, S, V[:m], beta, m)


def ritz(lz: LanczosResult, which: str, k: int, tol: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``k`` wanted Ritz pairs of a Lanczos run: values [k], vectors [k, P] (on V's device and dtype),
    residuals ``beta |S[m-1, i]|`` [k] and whether each is at most ``tol * max|theta|`` [k]."""
    theta, S, V, beta = lz.theta, lz.S, lz.V, lz.beta
    idx = _wanted(theta, which, min(k, theta.shape[0]))
    values = theta[idx]
    vectors = S[:, idx].T.to(V.device, V.dtype) @ V
    residuals = beta * S[-1, idx].abs()
    scale = float(theta.abs().max()) or 1.0
    return values, vectors, residuals, residuals <= tol * scale


def power_iteration(
    matvec: Matvec,
    size: int,
    *,
    k: int,
    which: str,
    tol: float,
    max_iter: int,
    seed: int,
    like: Tensor,
    v0: Tensor | None = None,
):
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
        for lam, u in zip(found_l, found_v, strict=True):
            out = out - lam * torch.dot(u, v) * u
        return out

    def iterate(op: Matvec) -> tuple[float, Tensor, float, bool]:
        nonlocal n, v0
        v = random_unit(size, gen, like)
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

            def shifted(u: Tensor, shift: float = shift) -> Tensor:
                return deflated(u) - shift * u

            lam2, v, res, ok = iterate(shifted)
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
    return (
        torch.tensor(vals, dtype=torch.float64),
        torch.stack(vecs),
        torch.tensor(ress, dtype=torch.float64),
        torch.tensor(convs),
        n,
    )


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
        return {
            "estimate": self.estimate,
            "stderr": self.stderr,
            "n_samples": self.n_samples,
            "n_hvp": self.n_hvp,
            "method": self.method,
            "converged": self.converged,
            "low_rank": self.low_rank,
        }


def trace_of(
    matvec: Matvec,
    size: int,
    *,
    method: str = "hutchinson",
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_samples: int = 10,
    max_samples: int = 1000,
    sketch: int = 10,
    seed: int = 0,
    probes: Tensor | None = None,
    device=None,
    dtype=torch.float64,
    progress: bool | None = None,
    matmat: Callable[[Tensor], Tensor] | None = None,
    block: int = 1,
) -> TraceResult:
    """Hutchinson / Hutch++ trace of a symmetric operator given by ``matvec`` (see `trace`).

    With ``matmat`` ([P, b] -> [P, b]) and ``block > 1``, the Hutch++ sketch and ``block`` probes at a
    time go through one vectorised product (the stopping rule is checked after each block).
    """
    if block > 1 and matmat is None:
        raise UserError("block > 1 needs a matmat (vectorised products)")

    def apply(Z: Tensor) -> Tensor:  # [P, b] -> [P, b]
        if block > 1:
            assert matmat is not None  # checked above
            return torch.cat([matmat(Z[:, i : i + block]) for i in range(0, Z.shape[1], block)], dim=1)
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
        Y = apply(torch.stack([rademacher(size, gen, like) for _ in range(s)], dim=1))  # [P, s]
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
    with bar(
        f"trace ({method})", limit, enabled=progress if progress is not None else (None if size > 10000 else False)
    ) as adv:
        step = block if block > 1 else 1
        for i in range(0, limit, step):
            b = min(step, limit - i)
            Z = (
                probes[i : i + b].T
                if probes is not None
                else torch.stack([rademacher(size, gen, like) for _ in range(b)], 1)
            )
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
    return TraceResult(
        low_rank + float(t.mean()), se, len(samples), n_hvp, method, converged or probes is not None, low_rank, t
    )


__all__ = [
    "LanczosResult",
    "lanczos",
    "ritz",
    "power_iteration",
    "TraceResult",
    "trace_of",
    "rademacher",
    "random_unit",
    "WHICH",
    "Matvec",
]

"""Directions in weight space: the vectors that span the lines and planes of a loss landscape.

Three kinds, all returned as points (``dict[str, Tensor]`` with the model's parameter layout):

* **random** (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): a Gaussian vector per
  tensor, rescaled so that its size matches the weights it perturbs. With ``normalization``:

  - ``"filter"``: for every tensor with dim > 1, each slice i along dim 0 (a filter of a conv, a row of
    a linear layer) becomes ``d_i * ||w_i|| / (||d_i|| + 1e-10)``;
  - ``"layer"``: each tensor becomes ``d * ||w|| / (||d|| + 1e-10)``;
  - ``"model"``: the whole vector becomes ``d * ||w|| / (||d|| + 1e-10)`` (norms over all kept tensors);
  - ``"none"``: the raw Gaussian;
  - ``"head"``: for the tensors of attention layers, each *head* instead of each row: the entries of
    one head (its ``head_dim`` rows of a query / key / value projection, its ``head_dim`` columns of the
    output projection, along the axis the spec's ``:heads`` permutation names) become
    ``d_h * ||w_h|| / (||d_h|| + 1e-10)``; every other tensor as ``"filter"``. ``heads`` maps tensor
    names to (axis, entries per head): `modescape.symmetry.spec.head_blocks` of the model's permutation
    spec, found from the model when one is given (docs/transformers.md).

  In a transformer, a "filter" (a slice along dim 0) is a row: of q / k / v, the weights making one
  coordinate of one head; of the output projection, one coordinate of the residual stream; of a token
  or position embedding, one token's or one position's vector; of the MLP's first layer, one hidden unit.
  (GPT-2's ``Conv1D`` stores ``[in, out]``, so there a row is an input coordinate.)

  ``ignore="biasbn"`` (the default) sets the direction to zero on every tensor with dim <= 1, as the
  reference does: biases, normalisation-layer parameters, and any other vector or scalar parameter such as
  ``PReLU.weight`` (the rule is by shape, not by role); with ``ignore="none"`` they get their own
  Gaussian, normalised with a 1-D tensor as one group (never copied from the weights, unlike the
  reference code's ``d.copy_(w)``). Buffers (BatchNorm running statistics) are not coordinates of
  weight space and are never perturbed: how they are treated at each point is the Evaluator's BN
  policy.

  Seeding: the Gaussian is drawn with a ``torch.Generator`` on the CPU, tensor by tensor in layout
  order, and the normalisation is computed in float64 on the CPU; the result is then cast and moved
  to the weights' device. So a seed gives bit-identical directions on CPU and GPU.

* **Hessian eigenvectors** (`hessian_directions`): the Lanczos eigenvectors of the loss Hessian at a
  point (`modescape.curvature.eigenvalues`), unit norm in weight space and used exactly as they are: no
  per-tensor rescaling, which would bend them away from the eigenvector; the plane they span shows the
  sharpest (or chosen) directions of curvature, its axes labelled with the eigenvalues.

* **PCA of a trajectory** (Li et al. section 7): the top principal components of
  ``(checkpoint_t - final)`` over a run's checkpoints, their explained-variance ratios, and the path
  projected onto them (`pca_directions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from . import space as sp
from .checks import IGNORES, NORMALIZATIONS, parse_directions  # noqa: F401  (names and text: the light checks)
from .errors import UserError

if TYPE_CHECKING:
    from .curvature import CurvatureOperator
    from .evaluate import Evaluator

# what the direction makers take: a model (its parameters) or a point
ModelOrPoint = nn.Module | Mapping[str, Tensor]

EPS = 1e-10


def _as_point(model_or_point: ModelOrPoint, space: sp.WeightSpace | None) -> sp.Point:
    """The weights as a point (of a model, or a point checked against ``space`` when given)."""
    if isinstance(model_or_point, nn.Module):
        space = space or sp.WeightSpace(model_or_point)
        return space.point(model_or_point)
    if not isinstance(model_or_point, Mapping):
        raise UserError(f"expected an nn.Module or a point (dict of tensors); got {type(model_or_point).__name__}")
    point = dict(model_or_point)
    if space is not None:
        space.check(point)
    return point


def ignored(name: str, weight: Tensor, ignore: str) -> bool:
    """Whether ``ignore`` zeroes the direction on this tensor: ``biasbn`` every tensor with dim <= 1 (the
    reference's rule: biases, norm parameters, PReLU slopes, ...), ``none`` none."""
    return ignore == "biasbn" and weight.dim() <= 1


def _check(normalization: str, ignore: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise UserError(f"unknown normalization '{normalization}': use one of {', '.join(NORMALIZATIONS)}")
    if ignore not in IGNORES:
        raise UserError(f"unknown ignore '{ignore}': use 'biasbn' (zero biases and norm parameters) or 'none'")


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    normalization: str = "filter",
    ignore: str = "biasbn",
    heads: Mapping[str, tuple[int, int]] | None = None,
) -> sp.Point:
    """Rescale ``direction`` to the size of ``weights`` (see the module docstring); the one home of the
    filter / layer / model / head normalisation. ``heads`` (for ``"head"``): {tensor: (axis, entries per
    head)}. Works in the inputs' dtype and device; returns a new point.
    """
    _check(normalization, ignore)
    if normalization == "head" and heads is None:
        raise UserError(
            "normalization 'head' needs heads={tensor: (axis, entries per head)}: pass the model, or "
            "modescape.symmetry.spec.head_blocks(spec)"
        )
    heads = heads or {}
    out: sp.Point = {}
    for name, d in direction.items():
        w = weights[name]
        if ignored(name, w, ignore):
            out[name] = torch.zeros_like(d)
        elif normalization == "head" and name in heads:
            axis, block = heads[name]
            dm, wm = d.movedim(axis, 0), w.movedim(axis, 0)
            n = dm.shape[0] // block
            dn = dm.reshape(n, -1).norm(dim=1)
            wn = wm.reshape(n, -1).norm(dim=1)
            scale = (wn / (dn + EPS)).repeat_interleave(block).reshape((-1,) + (1,) * (d.dim() - 1))
            out[name] = (dm * scale).movedim(0, axis)
        elif normalization in ("filter", "head") and d.dim() > 1:
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            out[name] = d * (wn / (dn + EPS)).reshape((-1,) + (1,) * (d.dim() - 1))
        elif normalization in ("filter", "layer", "head"):
            out[name] = d * (w.norm() / (d.norm() + EPS))
        else:
            out[name] = d.clone()
    if normalization == "model":
        kept = [n for n in out if not ignored(n, weights[n], ignore)]
        dn = torch.sqrt(cast(Tensor, sum((out[n] ** 2).sum() for n in kept))) if kept else torch.tensor(0.0)
        wn = torch.sqrt(cast(Tensor, sum((weights[n] ** 2).sum() for n in kept))) if kept else torch.tensor(0.0)
        out = {n: (v * (wn / (dn + EPS)) if n in kept else v) for n, v in out.items()}
    return out


def random_direction(
    model_or_point: ModelOrPoint,
    normalization: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
    space: sp.WeightSpace | None = None,
    heads: Mapping[str, tuple[int, int]] | None = None,
) -> sp.Point:
    """A seeded Gaussian direction, normalised to the weights of ``model_or_point``.

    ``model_or_point``: an ``nn.Module`` or a point (checked against ``space`` when given). Returns a point
    with the weights' names, shapes, dtypes and device; identical bits on every device for a given seed.
    ``heads``: for ``normalization="head"`` (default: from the model's permutation spec).
    """
    _check(normalization, ignore)
    heads = _heads(model_or_point, normalization, heads)
    weights = _as_point(model_or_point, space)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    raw = {n: torch.randn(tuple(w.shape), generator=gen, dtype=torch.float32).double() for n, w in weights.items()}
    w64 = {n: w.detach().to("cpu", torch.float64) for n, w in weights.items()}
    d = normalize_direction(raw, w64, normalization, ignore, heads)
    return {n: d[n].to(device=weights[n].device, dtype=weights[n].dtype) for n in weights}


def _heads(
    model_or_point: ModelOrPoint, normalization: str, heads: Mapping[str, tuple[int, int]] | None
) -> Mapping[str, tuple[int, int]] | None:
    """The head blocks of ``normalization="head"``: given, or from the model's permutation spec."""
    if normalization != "head" or heads is not None:
        return heads
    if not isinstance(model_or_point, nn.Module):
        raise UserError(
            "normalization 'head' of a point needs heads=modescape.symmetry.spec.head_blocks(spec) (or pass the model)"
        )
    from .symmetry.infer import infer_spec
    from .symmetry.spec import head_blocks

    return head_blocks(infer_spec(model_or_point))


def orthogonalize(d: Mapping[str, Tensor], against: Mapping[str, Tensor], keep_norm: bool = True) -> sp.Point:
    """``d`` minus its projection on ``against`` (Gram-Schmidt), rescaled to ``d``'s norm when ``keep_norm``."""
    denom = sp.dot(against, against)
    if float(denom) == 0.0:
        return sp.clone(d)
    out = sp.axpy(-(sp.dot(d, against) / denom), against, d)
    if keep_norm:
        n_out = sp.norm(out)
        if float(n_out) > 0:
            out = sp.scale(out, sp.norm(d) / n_out)
    return out


def random_directions(
    model_or_point: ModelOrPoint,
    n: int = 2,
    normalization: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
    orthogonal: bool = False,
    space: sp.WeightSpace | None = None,
    heads: Mapping[str, tuple[int, int]] | None = None,
) -> list[sp.Point]:
    """``n`` directions: direction j uses seed ``seed + j``. With ``orthogonal``, each later direction is
    made orthogonal to the earlier ones (Gram-Schmidt, keeping its norm), in float64.

    Orthogonal means to the precision of the weights' dtype: the float64 vectors are orthogonal to
    about 1e-16, and the cast to float32 leaves a cosine of about 1e-10 between the returned directions
    (measured in float64 on the cast values; a test holds it below 1e-6). Half-precision weights keep
    only about 1e-3: sweep such models with float32 directions.
    """
    heads = _heads(model_or_point, normalization, heads)
    dirs = [random_direction(model_or_point, normalization, ignore, seed + j, space, heads) for j in range(n)]
    if orthogonal:
        dtypes = {k: v.dtype for k, v in dirs[0].items()}
        d64 = [sp.to(d, dtype=torch.float64) for d in dirs]
        for j in range(1, n):
            for i in range(j):
                d64[j] = orthogonalize(d64[j], d64[i], keep_norm=True)
        dirs = [{k: v.to(dtypes[k]) for k, v in d.items()} for d in d64]
    return dirs


# -- Hessian eigenvectors ------------------------------------------------------------------------


@dataclass
class HessianDirections:
    """Eigenvectors of the Hessian at a point, used as directions exactly as Lanczos returns them.

    ``directions``: points in the weights' layout, dtype and device (zero outside the ``params`` the
    Hessian was restricted to), each of unit norm in weight space (not rescaled per tensor: a per-tensor
    normalisation would bend them away from the eigenvector) and orthogonal to each other;
    ``eigenvalues`` [k] and ``indices`` (which eigenpairs: 0 is the first in ``which`` order, so the
    largest for ``"largest"``); ``residuals`` ``||H v - lambda v||`` and ``converged`` per pair;
    ``n_hvp`` products used. ``labels()`` names the axes of a plane with the eigenvalues.
    """

    directions: list[sp.Point]
    eigenvalues: list[float]
    indices: tuple[int, ...]
    which: str
    residuals: list[float]
    converged: list[bool]
    n_hvp: int
    params: str = "all"

    def labels(self, digits: int = 4) -> list[str]:
        """Axis labels: ``"Hessian eigenvector i (lambda = ...)"``."""
        return [
            f"Hessian eigenvector {i} (lambda = {v:.{digits}g})"
            for i, v in zip(self.indices, self.eigenvalues, strict=True)
        ]

    def to_dict(self) -> dict:
        return {
            "kind": "hessian",
            "indices": list(self.indices),
            "which": self.which,
            "eigenvalues": list(self.eigenvalues),
            "residuals": list(self.residuals),
            "converged": list(self.converged),
            "n_hvp": self.n_hvp,
            "params": self.params,
            "labels": self.labels(),
        }


def hessian_directions(
    model: nn.Module | Evaluator | CurvatureOperator,
    data: Any = None,
    point: Mapping[str, Tensor] | None = None,
    *,
    indices: Sequence[int] = (0, 1),
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    params: str = "all",
    **hessian_kwargs: Any,
) -> HessianDirections:
    """Directions along Hessian eigenvectors at ``point`` (default: the model's / evaluator's own).

    ``model``: an ``nn.Module`` (with ``data``), an `Evaluator` (``data=None``) or a ready `Hessian`, as in
    `modescape.curvature.eigenvalues`, which computes the top ``max(indices) + 1`` pairs by Lanczos;
    ``indices`` picks among them (0: the largest for ``which="largest"``). The chosen vectors are
    re-orthonormalised in float64 (a change at rounding level: Ritz vectors are orthogonal to working
    precision), their sign fixed so that the largest-magnitude entry is positive, and cast to the
    point's dtype and device. Other keywords go to `Hessian` (``bn``, ``source``, ``hvp_method``, ...).
    """
    from .curvature import eigenvalues  # the curvature layer sits above directions: imported on use

    idx = tuple(int(i) for i in indices)
    if not idx or min(idx) < 0 or len(set(idx)) != len(idx):
        raise UserError(f"eigenvector indices must be distinct and >= 0; got {list(idx)}")
    if params != "all":  # a ready Hessian fixes its own parameters
        hessian_kwargs["params"] = params
    res = eigenvalues(
        model, data, point, k=max(idx) + 1, which=which, tol=tol, max_iter=max_iter, seed=seed, **hessian_kwargs
    )
    H = res.operator
    if res.values.numel() <= max(idx):
        raise UserError(f"only {res.values.numel()} eigenpairs were found; ask for indices below that")
    like = dict(point) if point is not None else H.point
    basis: list[Tensor] = []
    for i in idx:
        v = res.vectors[i].detach().to("cpu", torch.float64)
        for u in basis:
            v = v - (v @ u) * u
        v = v / v.norm()
        if v[v.abs().argmax()] < 0:
            v = -v
        basis.append(v)
    dirs = []
    for v in basis:
        parts = dict(zip(H.names, torch.split(v, H.numels), strict=True))
        full = {
            n: parts[n].reshape(like[n].shape) if n in parts else torch.zeros(like[n].shape, dtype=torch.float64)
            for n in H.space.names
        }
        dirs.append({n: t.to(device=like[n].device, dtype=like[n].dtype) for n, t in full.items()})
    return HessianDirections(
        dirs,
        [float(res.values[i]) for i in idx],
        idx,
        which,
        [float(res.residuals[i]) for i in idx],
        [bool(res.converged[i]) for i in idx],
        res.n_hvp,
        params if isinstance(params, str) else ",".join(params),
    )


# -- PCA of a trajectory -------------------------------------------------------------------------


@dataclass
class PCAResult:
    """Top principal directions of a trajectory.

    ``origin``: the final point; ``directions``: unit-norm points (orthonormal); ``explained``:
    explained-variance ratios [n]; ``path``: each checkpoint's coordinates in the plane [T, n]
    (``<w_t - final, d_j>``); ``residual``: relative norm of what the plane misses per checkpoint [T].
    """

    origin: sp.Point
    directions: list[sp.Point]
    explained: Tensor
    path: Tensor
    residual: Tensor


def pca_directions(
    points: Sequence[Mapping[str, Tensor]],
    final: Mapping[str, Tensor] | None = None,
    n: int = 2,
    ignore: str = "none",
    space: sp.WeightSpace | None = None,
) -> PCAResult:
    """Principal directions of ``(points[t] - final)`` (``final`` defaults to the last point).

    As in the reference: the difference vectors are centred and their top-``n`` right singular vectors
    taken (what ``sklearn.decomposition.PCA`` computes), signs fixed so that the largest-magnitude
    entry is positive. ``ignore="biasbn"`` zeroes the entries of tensors with dim <= 1 first.
    Computed in float64 on the CPU; directions are returned in the points' dtype and device.
    """
    if len(points) < n + 1:
        raise UserError(f"a PCA plane needs at least {n + 1} checkpoints; got {len(points)}: save more checkpoints")
    _check("none", ignore)
    final = dict(final if final is not None else points[-1])
    _as_point(final, space)
    names = list(final)
    drop = {k for k in names if ignored(k, final[k], ignore)}

    def flat(p: Mapping[str, Tensor]) -> Tensor:
        return torch.cat(
            [(torch.zeros_like(p[k]) if k in drop else p[k]).detach().reshape(-1).cpu().double() for k in names]
        )

    f = flat(final)
    m = torch.stack([flat(p) - f for p in points])  # [T, D]
    centred = m - m.mean(0, keepdim=True)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    var = s**2
    total = var.sum()
    if float(total) == 0.0:
        raise UserError("the checkpoints are all the same point: there is no trajectory to take a PCA of")
    comps = vt[:n].clone()
    for j in range(n):  # sign convention: largest-|.| entry positive
        if comps[j, comps[j].abs().argmax()] < 0:
            comps[j] = -comps[j]
    path = m @ comps.T  # [T, n]
    resid = (m - path @ comps).norm(dim=1) / m.norm(dim=1).clamp_min(1e-30)
    like = {k: final[k] for k in names}
    dirs = []
    for j in range(n):
        p = sp.unflatten(comps[j], {k: v.reshape(v.shape) for k, v in like.items()})
        dirs.append({k: p[k].to(device=final[k].device, dtype=final[k].dtype) for k in names})
    return PCAResult(origin=sp.clone(final), directions=dirs, explained=(var[:n] / total), path=path, residual=resid)

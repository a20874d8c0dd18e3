"""Random affine subspaces of weight space: theta(z) = theta_0 + P z (Li et al. 2018; Fort and Jastrzebski 2019).

`AffineSubspace(origin, projection)` is the family z -> theta_0 + P z of a d-dimensional subspace through
theta_0; training in the subspace trains z only (`modescape.subspace`), and d z / d loss = P^T grad by the
chain rule, whatever the projection. The projection is one of:

* `DenseProjection`: P [D, d] with i.i.d. Gaussian entries, each column normalised to unit length. P z is
  one matrix-vector product; it needs D d floats, so it is for small models or small d.
* `SparseProjection`: each column has about sqrt(D) non-zero entries +-1 at random rows (Li et al.'s
  "very sparse" projection, density 1 / sqrt(D)), normalised to unit length; P z is one scatter of
  d sqrt(D) products, P^T g one gather.
* `FastfoodProjection` (Le et al. 2013; Li et al.'s Fastfood transform): P z = (H G Pi H B [z; 0])[:D] /
  (sqrt(L sum G^2) sqrt(D / L)) with L = 2^ceil(log2 D), H the L x L Walsh-Hadamard matrix (never
  formed: a Kronecker product of small Hadamard matrices, a few matrix products), B random signs, Pi a random
  permutation, G Gaussian. O(L log L) time, O(L) memory, one full transform each way (the first acts on a
  vector that is zero beyond d entries). Every column of the L x L product H G Pi H B / sqrt(L sum G^2) has
  norm exactly 1; keeping the first D rows and dividing by sqrt(D / L) makes every column's norm about 1
  (exactly 1 when D is a power of two).
* `HashedProjection`: one entry +-1 per row (the hashing trick): orthonormal columns with disjoint
  supports, the cheapest (one gather each way), but an axis-structured subspace rather than a Gaussian one.
* `IdentityProjection`: P = I (d = D): training in the "subspace" is plain training (a check).

`make_projection(kind, D, d, seed)` builds one; ``kind="auto"`` picks dense while P is small (at most
`DENSE_LIMIT` entries) and Fastfood above. Every projection is seeded on the CPU (the same bits on any
device) and is an ``nn.Module`` whose random tensors are buffers (saved and moved with it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..space import Layout
from .base import Coords, Family

PROJECTIONS = ("auto", "dense", "sparse", "fastfood", "hashed", "identity")

# dense P up to this many entries (16 Mi floats, 64 MiB in float32): a product with P or P^T reads all of P,
# D d floats per step each way; beyond this size Fastfood (O(L log L), O(L) memory) is the one that fits
DENSE_LIMIT = 2**24


class Projection(nn.Module):
    """``P z``: [..., d] -> [..., D]. ``matrix()`` forms P [D, d] (small sizes only: tests, plots)."""

    kind = "projection"

    def __init__(self, D: int, d: int):
        super().__init__()
        if d < 1 or D < 1:
            raise UserError(f"a projection needs d >= 1 and D >= 1; got d={d}, D={D}")
        self.D, self.d = int(D), int(d)

    def matrix(self) -> Tensor:
        """P [D, d], by applying the projection to the d unit vectors."""
        ref = next((b for b in self.buffers() if b.is_floating_point()), None)
        eye = torch.eye(
            self.d,
            dtype=ref.dtype if ref is not None else torch.float32,
            device=ref.device if ref is not None else None,
        )
        return self(eye).T

    def affine(self, origin: Tensor, z: Tensor) -> Tensor:
        """theta_0 + P z, differentiable in z (``origin`` is a constant); projections with a scatter fuse the
        sum into it."""
        return origin + self(z)

    def affine_into(self, origin: Tensor, z: Tensor, out: Tensor) -> None:
        """theta_0 + P z for one z [d] written into ``out`` [D] (no graph)."""
        out.copy_(self.affine(origin, z))

    def transpose(self, g: Tensor) -> Tensor:
        """P^T g: [B, D] -> [B, d] (the backward of P z, by default through autograd)."""
        with torch.enable_grad():
            z = torch.zeros(g.shape[0], self.d, dtype=g.dtype, device=g.device, requires_grad=True)
            (out,) = torch.autograd.grad(self(z), z, g)
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "D": self.D, "d": self.d}


class IdentityProjection(Projection):
    """P = I (d = D)."""

    kind = "identity"

    def __init__(self, D: int, d: int | None = None, seed: int = 0):
        if d is not None and d != D:
            raise UserError(f"the identity projection needs d = D = {D}; got d={d}")
        super().__init__(D, D)

    def forward(self, z: Tensor) -> Tensor:
        return z

    def transpose(self, g: Tensor) -> Tensor:
        return g


class DenseProjection(Projection):
    """P [D, d] Gaussian with unit-norm columns; ``P z`` is one matrix product."""

    kind = "dense"
    weight: Tensor  # registered buffers are declared here (nn.Module attributes are otherwise Tensor | Module)

    def __init__(self, D: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(D, d)
        g = torch.Generator().manual_seed(int(seed))
        p = torch.randn(D, d, generator=g, dtype=torch.float64)
        p = p / p.norm(dim=0, keepdim=True)
        self.register_buffer("weight", p.to(dtype))  # [D, d]

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight.T

    def transpose(self, g: Tensor) -> Tensor:
        return g @ self.weight


def _transpose_product(csr: Tensor, g: Tensor) -> Tensor:
    """P^T g for g [B, D] with P^T as CSR [d, D]: [B, d]."""
    if g.shape[0] == 1:
        return torch.mv(csr, g[0]).unsqueeze(0)
    return torch.sparse.mm(csr, g.T.contiguous()).T


class _Sparse(torch.autograd.Function):
    """theta_0 + P z and the transpose P^T g for `SparseProjection`: P z is one gather from z and one
    scatter into a copy of theta_0 (entries stored by row); P^T g is one CSR product (entries stored by
    column, which is the CSR form of P^T)."""

    @staticmethod
    def forward(ctx: Any, origin: Tensor, z: Tensor, proj: SparseProjection) -> Tensor:
        ctx.proj = proj
        base = origin.expand(z.shape[0], proj.D)
        return base.index_add(-1, proj.rows_by_row[0], proj.contributions(z))  # (faster than scatter_add)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        return None, ctx.proj.transpose(g), None


class SparseProjection(Projection):
    """k = round(sqrt(D)) entries +-1 per column at random rows (density 1 / sqrt(D), Li et al.'s "very
    sparse" projection), each column normalised to unit norm. Rows are drawn with replacement: a row drawn
    twice in a column holds the sum of its signs (the norm is that of the summed column)."""

    kind = "sparse"
    crow_by_col: Tensor
    rows_by_col: Tensor
    values_by_col: Tensor
    rows_by_row: Tensor
    cols_by_row: Tensor
    values_by_row: Tensor

    def __init__(self, D: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32, density: float | None = None):
        super().__init__(D, d)
        g = torch.Generator().manual_seed(int(seed))
        density = 1.0 / math.sqrt(D) if density is None else float(density)
        k = max(1, int(round(density * D)))
        rows = torch.randint(0, D, (d, k), generator=g)
        signs = (torch.randint(0, 2, (d, k), generator=g) * 2 - 1).double()
        # the column norms of the summed matrix (duplicates add up)
        key = (torch.arange(d)[:, None] * D + rows).reshape(-1)
        uniq, inv = torch.unique(key, return_inverse=True)
        summed = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, signs.reshape(-1))
        norms = torch.zeros(d, dtype=torch.float64).index_add_(0, uniq // D, summed**2).sqrt()
        vals = signs / norms.clamp_min(1e-12)[:, None]  # a column whose signs all cancel stays zero
        self.k = k
        rows, order = rows.sort(1)  # within each column by row: the CSR form of P^T
        vals = vals.gather(1, order)
        self.register_buffer("crow_by_col", torch.arange(0, d * k + 1, k))
        self.register_buffer("rows_by_col", rows.reshape(-1))
        self.register_buffer("values_by_col", vals.reshape(-1).to(dtype))
        order = torch.argsort(rows.reshape(-1), stable=True)  # by row: a contiguous scatter for P z
        self.register_buffer("rows_by_row", rows.reshape(-1)[order].reshape(1, -1))
        self.register_buffer("cols_by_row", torch.arange(d).repeat_interleave(k)[order])
        self.register_buffer("values_by_row", vals.reshape(-1)[order].to(dtype))

    def csr_transpose(self) -> Tensor | None:
        """P^T [d, D] as a CSR matrix (the entries by column are its CSR form), cached per device, dtype and
        storage (not a buffer: rebuilt on demand); None for reduced float types, which CSR products do not
        support (the backward then gathers)."""
        vals = self.values_by_col
        if vals.dtype not in (torch.float32, torch.float64):
            return None
        key = (vals.device, vals.dtype, vals.data_ptr())
        cache = getattr(self, "_csr", None)
        if cache is None or cache[0] != key:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": mv and mm here are stable
                warnings.simplefilter("ignore", UserWarning)
                csr = torch.sparse_csr_tensor(self.crow_by_col, self.rows_by_col, vals, (self.d, self.D))
            cache = (key, csr)
            object.__setattr__(self, "_csr", cache)
        return cache[1]

    def contributions(self, z: Tensor) -> Tensor:
        """The nnz products P_ij z_j [..., nnz], in row order (for one scatter into theta)."""
        return z.index_select(-1, self.cols_by_row) * self.values_by_row

    def affine_into(self, origin: Tensor, z: Tensor, out: Tensor) -> None:
        out.copy_(origin)
        out.index_add_(0, self.rows_by_row[0], self.contributions(z))

    def transpose(self, g: Tensor) -> Tensor:
        csr = self.csr_transpose()
        if csr is not None:
            return _transpose_product(csr, g)
        per = g.index_select(-1, self.rows_by_col) * self.values_by_col  # [B, d * k], column-major
        return per.view(g.shape[0], self.d, -1).sum(-1)

    def forward(self, z: Tensor) -> Tensor:
        return self.affine(z.new_zeros(()), z)

    def affine(self, origin: Tensor, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        out = _Sparse.apply(origin.detach(), z.reshape(-1, self.d), self)
        return out.reshape(*lead, self.D)


class _Hashed(torch.autograd.Function):
    """theta_0 + P z and P^T g for `HashedProjection`, with the sign folded into the bucket: entry i reads
    [s z, -s z][h2(i)] (s the columns' scale), so P z is one gather and one add, and P^T g one bucket sum
    of g itself over 2d buckets (no multiply over D), then a difference of the two halves."""

    @staticmethod
    def forward(ctx: Any, origin: Tensor, z: Tensor, proj: HashedProjection) -> Tensor:
        ctx.proj = proj
        return origin + proj.lookup(z)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        return None, ctx.proj.transpose(g), None


class HashedProjection(Projection):
    """One entry +-1 per row (parameter i moves along z_h(i) only, h a random bucket; every bucket gets at
    least one parameter), each column normalised: orthonormal columns with disjoint supports (the hashing
    trick, Weinberger et al. 2009). P z is one gather of D entries and P^T g one bucket sum, so it is the
    cheapest projection; its subspaces are random but axis-structured (parameters tied in random groups with
    random signs), not Gaussian: intrinsic dimensions measured with it need not match Li et al.'s."""

    kind = "hashed"
    signed_bucket: Tensor
    scale: Tensor

    def __init__(self, D: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(D, d)
        if d > D:
            raise UserError(f"a hashed projection needs d <= D; got d={d}, D={D}")
        g = torch.Generator().manual_seed(int(seed))
        bucket = torch.randint(0, d, (D,), generator=g)
        bucket[torch.randperm(D, generator=g)[:d]] = torch.arange(d)  # no empty column
        signs = torch.randint(0, 2, (D,), generator=g, dtype=torch.float64) * 2 - 1
        counts = torch.bincount(bucket, minlength=d).double()
        self.register_buffer("signed_bucket", bucket + d * (signs < 0).long())  # [0, d): +, [d, 2d): -
        self.register_buffer("scale", (1.0 / counts.sqrt()).to(dtype))  # [d]: unit columns

    def lookup(self, z: Tensor) -> Tensor:
        """P z for z [..., d]: entry i of [s z, -s z] at its signed bucket (one gather)."""
        zs = z * self.scale
        return torch.cat([zs, -zs], -1).index_select(-1, self.signed_bucket)

    def affine_into(self, origin: Tensor, z: Tensor, out: Tensor) -> None:
        torch.add(origin, self.lookup(z), out=out)

    def transpose(self, g: Tensor) -> Tensor:
        sums = g.new_zeros(g.shape[0], 2 * self.d).index_add_(1, self.signed_bucket, g)
        return (sums[:, : self.d] - sums[:, self.d :]) * self.scale

    def forward(self, z: Tensor) -> Tensor:
        return self.affine(z.new_zeros(()), z)

    def affine(self, origin: Tensor, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        out = _Hashed.apply(origin.detach(), z.reshape(-1, self.d), self)
        return out.reshape(*lead, self.D)


def _hadamard_factors(L: int, block: int = 64) -> list[int]:
    n = L.bit_length() - 1
    b = block.bit_length() - 1
    return [1 << b] * (n // b) + ([1 << (n % b)] if n % b else [])


def _hadamard_matrix(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(x: Tensor) -> Tensor:
    """The unnormalised Walsh-Hadamard transform over the last dimension (a power of two): H_L is the
    Kronecker product of small Hadamard matrices (at most 64 x 64), so it is a few matrix products, one
    per factor; H is symmetric, so this is also its transpose."""
    L = x.shape[-1]
    if L & (L - 1):
        raise UserError(f"the Hadamard transform needs a power-of-two length; got {L}")
    lead = x.shape[:-1]
    factors = _hadamard_factors(L)
    y = x.reshape(-1, *factors)  # [B, m_1, ..., m_r]
    for m in factors:  # contract the first factor axis with H_m; the result's new axis goes last
        y = torch.tensordot(y, _hadamard_matrix(m, x.dtype, x.device), dims=([1], [0]))
    return y.reshape(*lead, L)


class _Fastfood(torch.autograd.Function):
    """V z and V^T g for `FastfoodProjection` with one full Hadamard transform each way: the first
    transform acts on [B z; 0], which is zero beyond its first m = 2^ceil(log2 d) entries, and
    H_L (e_0 kron x_m) = 1 kron H_m x_m, so it is an m-point transform tiled L / m times."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, proj: FastfoodProjection) -> Tensor:
        ctx.proj = proj
        m = proj.m
        x = torch.nn.functional.pad(z, (0, m - proj.d)) * proj.signs[:m]
        h = hadamard(x)  # [B, m]: the first transform, on the tile
        v = h.index_select(-1, proj.perm_mod) * proj.gauss  # (Pi of the tiled vector) times G
        return hadamard(v)[:, : proj.D]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return ctx.proj.transpose(g), None


class FastfoodProjection(Projection):
    """P z = (H G Pi H B [z; 0])[:D] / (sqrt(L sum G^2) sqrt(D / L)), L = 2^ceil(log2 D) (Li et al.'s Fastfood)."""

    kind = "fastfood"
    signs: Tensor
    perm: Tensor
    perm_mod: Tensor
    gauss: Tensor

    def __init__(self, D: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(D, d)
        if d > D:
            raise UserError(f"a Fastfood projection needs d <= D; got d={d}, D={D}")
        L = 1 << max(0, (D - 1).bit_length())
        m = 1 << max(0, (d - 1).bit_length())
        self.L, self.m = L, m
        g = torch.Generator().manual_seed(int(seed))
        b = torch.randint(0, 2, (L,), generator=g, dtype=torch.float64) * 2 - 1
        perm = torch.randperm(L, generator=g)
        gauss = torch.randn(L, generator=g, dtype=torch.float64)
        scale = 1.0 / (math.sqrt(L * float((gauss**2).sum())) * math.sqrt(D / L))
        self.register_buffer("signs", b.to(dtype))
        self.register_buffer("perm", perm)
        self.register_buffer("perm_mod", perm % m)  # the tiled first transform: entry i of the tile is h[i mod m]
        self.register_buffer("gauss", (gauss * scale).to(dtype))  # the divisor folded into G

    def transpose(self, g: Tensor) -> Tensor:
        gl = torch.nn.functional.pad(g, (0, self.L - self.D))
        u = hadamard(gl) * self.gauss  # [B, L]
        acc = g.new_zeros(g.shape[0], self.m).index_add_(1, self.perm_mod, u)  # Pi^T, then the tile's sum
        return (hadamard(acc) * self.signs[: self.m])[:, : self.d]

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        out = _Fastfood.apply(z.reshape(-1, self.d), self)
        return out.reshape(*lead, self.D)


def make_projection(
    kind: str,
    D: int,
    d: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Projection:
    """A projection from d to D dimensions: ``kind`` in `PROJECTIONS` (``auto``: dense while D d is at most
    `DENSE_LIMIT`, else Fastfood), seeded on the CPU, then moved to ``device``."""
    kind = kind.lower()
    if kind not in PROJECTIONS:
        raise UserError(f"unknown projection '{kind}': use one of {', '.join(PROJECTIONS)}")
    if d < 1:
        raise UserError(f"the subspace dimension d must be at least 1; got {d}")
    if kind != "identity" and d > D:
        raise UserError(f"the subspace dimension d={d} exceeds the number of parameters D={D}")
    if kind == "auto":
        kind = "dense" if D * d <= DENSE_LIMIT else "fastfood"
    cls = {
        "dense": DenseProjection,
        "sparse": SparseProjection,
        "fastfood": FastfoodProjection,
        "hashed": HashedProjection,
        "identity": IdentityProjection,
    }[kind]
    proj = cls(D, d, seed) if kind == "identity" else cls(D, d, seed, dtype=dtype)
    return proj.to(device=device) if device is not None else proj


class AffineSubspace(Family):
    """theta(z) = theta_0 + P z: coords [K, d] -> stacked point; [d] -> point.

    ``origin``: theta_0 (a point); ``projection``: a `Projection` with D = the origin's number of
    parameters; ``buffers``: the origin model's buffers, carried to every point.
    """

    origin_flat: Tensor  # a registered buffer

    def __init__(
        self, origin: Mapping[str, Tensor], projection: Projection, buffers: Mapping[str, Tensor] | None = None
    ):
        super().__init__()
        self.layout = Layout.of(origin)
        if projection.D != self.layout.numel:
            raise UserError(f"the projection maps to {projection.D} parameters; the origin has {self.layout.numel}")
        self.dim = projection.d
        self.register_buffer("origin_flat", self.layout.flatten(origin).detach().clone())
        self.projection = projection
        self.set_buffers(None if buffers is None else [buffers])

    @property
    def origin(self) -> sp.Point:
        return self.layout.unflatten(self.origin_flat)

    def at(self, z: Tensor) -> Tensor:
        """Flat theta_0 + P z [D] for z [d] (or [K, D] for [K, d]), differentiable in z (the training path)."""
        return self.projection.affine(self.origin_flat, z.to(self.origin_flat.dtype))

    def write_flat(self, z: Tensor, out: Tensor) -> None:
        """theta_0 + P z written into ``out`` [D] (no graph: the training fast path, `modescape.point_sgd.FlatStep`)."""
        self.projection.affine_into(self.origin_flat, z.detach().to(self.origin_flat.dtype), out)

    def pull_flat(self, z: Tensor, grad: Tensor) -> None:
        """z's gradient P^T grad from the gradient ``grad`` [D] with respect to the point (added to ``z.grad``)."""
        g = self.projection.transpose(grad.unsqueeze(0))[0].to(z.dtype)
        z.grad = g if z.grad is None else z.grad.add_(g)

    def flat(self, coords: Coords) -> Tensor:
        """Flat points [K, D] at coordinates [K, d] (or [D] for one point)."""
        c, single = self.as_coords(coords)
        out = self.at(c.to(self.origin_flat.device))
        return out[0] if single else out

    def forward(self, coords: Coords) -> sp.Point:
        return self.layout.unflatten(self.flat(coords))

    def describe(self) -> dict[str, Any]:
        return {
            "family": "AffineSubspace",
            "coords": [f"z{i}" for i in range(self.dim)],
            "projection": self.projection.describe(),
            "meaning": "theta_0 + P z",
        }


__all__ = [
    "AffineSubspace",
    "DENSE_LIMIT",
    "DenseProjection",
    "FastfoodProjection",
    "HashedProjection",
    "IdentityProjection",
    "PROJECTIONS",
    "Projection",
    "SparseProjection",
    "hadamard",
    "make_projection",
]

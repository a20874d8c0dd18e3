"""Simplices and simplicial complexes of points, and their volumes (Benton et al. 2021).

A `Simplex` is a `LinearFamily` over its vertices w_0 .. w_{n-1}: a point is given by its barycentric
coordinates c (a row of n weights that sum to 1),

    point(c) = sum_j c_j w_j = c @ W,

one matrix product for K points. With ``simplices`` it is a *simplicial complex*: several simplices (each a
tuple of vertex indices) that share vertices, e.g. several trained modes joined through shared connecting
vertices; a point of the complex has non-zero weights only on the vertices of one of its simplices.
`Simplex.sample` draws points uniformly on a simplex, Dirichlet(1) weights (normalised exponentials), from
a seeded generator; on a complex it first picks a simplex (uniformly, or in proportion to its volume).

**Volume.** The volume of a k-simplex with vertices v_0 .. v_k comes from the Cayley-Menger determinant of
its squared edge lengths d_ij = |v_i - v_j|^2:

    V^2 = (-1)^(k+1) / (2^k (k!)^2) * det [[0, 1^T], [1, D]]        (D = [d_ij], a (k+2) x (k+2) bordered matrix)

Subtracting the first vertex's row and column reduces the bordered determinant to ``(-1)^(k+1) 2^k det G``
with G_ij = (d_0i + d_0j - d_ij) / 2 = <v_i - v_0, v_j - v_0> (i, j = 1..k), so V^2 = det(G) / (k!)^2. That
is how it is computed: G from the edge vectors directly, in float64 (no cancellation between large squared
distances; while training, the trainable vertex's rows against the cached frozen ones in the weights' dtype,
see `_TrainableGram`), scaled by its mean diagonal before the determinant (``log V`` for simplices of any size in
weight space without overflow). `cayley_menger_determinant` keeps the bordered form for checks. The volume of
a complex is the sum over its simplices. A new vertex at the centroid of the others makes a simplex
degenerate (V = 0); ``V^2 = det G`` stays differentiable there, so the training term
``log sum_s sqrt(V_s^2 + eps)`` (`Simplex.log_volume`) is smooth from the first step.

**Buffers.** The first m vertices may be trained models with buffers (BatchNorm statistics; ``buffers``:
one dict per model). A point carries them combined with weights c_j on model j plus an equal share of the
weights on the other vertices, which start at centroids of the models (so each model's own point evaluates
as that model under ``bn="running"``); under ``bn="recompute"`` (the default for BatchNorm models) every
point gets fresh statistics and the carried ones do not enter.

>>> s = Simplex([a, b, c])  # a 2-simplex (triangle) of three points
>>> s.sample(16, seed=0)  # [16, 3] barycentric coordinates, uniform on the triangle
>>> s(s.sample(16, seed=0))  # a stacked point [16, ...]
>>> s.volume(), s.log_volume()  # area (float64), its log
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .base import LinearFamily

Point = Mapping[str, Tensor]
# vertices as rows: a [n, D] tensor, or a sequence of n tensors (each flattened to a row)
Rows = Tensor | Sequence[Tensor]


# -- volumes -------------------------------------------------------------------------------------------


def _as_rows(vertices: Rows) -> Tensor:
    """Vertices as float64 rows [n, D] (a [n, D] tensor, or a list of flat vectors)."""
    v = vertices if isinstance(vertices, Tensor) else torch.stack([torch.as_tensor(x).reshape(-1) for x in vertices])
    if v.dim() != 2 or v.shape[0] < 1:
        raise UserError(f"a simplex needs its vertices as rows [n, D]; got shape {list(v.shape)}")
    return v.double()


def edge_gram(vertices: Rows) -> Tensor:
    """G [k, k] float64: G_ij = <v_i - v_0, v_j - v_0>, i, j = 1..k (the reduced Cayley-Menger matrix)."""
    v = _as_rows(vertices)
    e = v[1:] - v[:1]
    return e @ e.T


def squared_distances(vertices: Rows) -> Tensor:
    """[n, n] float64 squared distances |v_i - v_j|^2 (from the centred Gram matrix: n rows of length D)."""
    v = _as_rows(vertices)
    x = v - v.mean(0, keepdim=True)
    g = x @ x.T
    d = g.diagonal()
    return (d[:, None] + d[None, :] - 2.0 * g).clamp_min(0.0)


def cayley_menger_determinant(sq_distances: Tensor) -> Tensor:
    """det of the bordered Cayley-Menger matrix [[0, 1^T], [1, D]] for squared distances D [n, n] (float64).

    V^2 of the (n-1)-simplex is (-1)^n / (2^(n-1) ((n-1)!)^2) times this. Kept for checks; the volumes
    below use the equivalent reduced form (module docstring), which is better conditioned."""
    d = torch.as_tensor(sq_distances, dtype=torch.float64)
    n = d.shape[0]
    m = torch.ones(n + 1, n + 1, dtype=torch.float64, device=d.device)
    m[0, 0] = 0.0
    m[1:, 1:] = d
    return torch.linalg.det(m)


def volume_squared(vertices: Rows) -> Tensor:
    """V^2 of the simplex with these n = k + 1 vertices (rows [n, D]): det(G) / (k!)^2, float64.

    Differentiable, also where the simplex is degenerate (V = 0); a single vertex has V^2 = 1 (the
    volume of a point is taken as 1, so that a complex of bare modes has a finite log-volume)."""
    v = _as_rows(vertices)
    if v.shape[0] == 1:
        return torch.ones((), dtype=torch.float64, device=v.device)
    return gram_volume_squared(edge_gram(v))


def gram_volume_squared(g: Tensor) -> Tensor:
    """V^2 = det(G) / (k!)^2 from the reduced Cayley-Menger matrix G [k, k] (float64), scaled by its mean
    diagonal before the determinant; differentiable, also at degenerate simplices."""
    k = g.shape[0]
    if k == 1:  # the few smallest by their formulas: fewer operations per training step
        return g[0, 0]
    if k == 2:
        return (g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0]) / 4.0
    s = g.diagonal().mean().detach().clamp_min(torch.finfo(torch.float64).tiny)
    return torch.linalg.det(g / s) * s**k / math.factorial(k) ** 2


def log_volume(vertices: Rows) -> Tensor:
    """log V of the simplex with these vertices (rows [n, D]), float64; -inf when it is degenerate.

    ``0.5 (k log s + logdet(G / s)) - log k!`` with s the mean of G's diagonal: no overflow or underflow
    for simplices of any size in weight space."""
    v = _as_rows(vertices)
    k = v.shape[0] - 1
    if k == 0:
        return torch.zeros((), dtype=torch.float64, device=v.device)
    g = edge_gram(v)
    s = g.diagonal().mean()
    if float(s) <= 0.0:
        return torch.full((), -math.inf, dtype=torch.float64, device=v.device)
    sign, logdet = torch.linalg.slogdet(g / s)
    if float(sign) <= 0.0:
        return torch.full((), -math.inf, dtype=torch.float64, device=v.device)
    return 0.5 * (k * torch.log(s) + logdet) - math.lgamma(k + 1)


def dirichlet(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """[n, k] float64 rows uniform on the (k-1)-simplex: Dirichlet(1, ..., 1) as normalised Exp(1) draws."""
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # Exp(1); u in [0, 1) so 1 - u > 0
    return e / e.sum(1, keepdim=True)


def _adjugate(g: Tensor) -> Tensor:
    """adj(G) of a symmetric k x k matrix (d det G / dG), also where G is singular: Q diag(prod_{j != i}
    lambda_j) Q^T from G's eigen-decomposition (the smallest k by their formulas)."""
    k = g.shape[0]
    if k == 1:
        return torch.ones_like(g)
    if k == 2:
        return torch.stack([torch.stack([g[1, 1], -g[0, 1]]), torch.stack([-g[1, 0], g[0, 0]])])
    lam, q = torch.linalg.eigh(g)
    others = torch.stack([torch.cat([lam[:i], lam[i + 1 :]]).prod() for i in range(k)])
    return (q * others) @ q.T


def _edge_gram_of(gram: Tensor, i0: int, rest: Tensor) -> Tensor:
    """The edge Gram matrix G_ab = K_ab - K_a0 - K_0b + K_00 of the simplex with first vertex ``i0`` and
    the others ``rest``, read from the vertex Gram matrix K."""
    rows = gram.index_select(0, rest)
    return rows.index_select(1, rest) - rows[:, i0 : i0 + 1] - gram[i0 : i0 + 1].index_select(1, rest) + gram[i0, i0]


def _log_volume_gram_grad(gram: Tensor, members: list, eps: float) -> tuple[Tensor, Tensor]:
    """(d f / dK, f) for f = log sum_s sqrt(max(V_s^2, 0) + eps), V_s^2 = det(G_s) / (k_s!)^2 with G_s the edge
    Gram matrix of simplex s read from the vertex Gram matrix K (``members``: `Simplex._members`): the
    closed form of what autograd computes through `Simplex.log_volume`."""
    dk = torch.zeros_like(gram)
    parts: list[tuple[tuple[int, Tensor, Tensor] | None, Tensor]] = []
    for m in members:
        if m is None:  # a bare vertex: V^2 = 1, a constant
            parts.append((None, torch.ones((), dtype=gram.dtype, device=gram.device)))
            continue
        i0, rest = m
        g = _edge_gram_of(gram, i0, rest)
        parts.append(((i0, rest, g), gram_volume_squared(g)))
    roots = [torch.sqrt(v2.clamp_min(0.0) + eps) for _, v2 in parts]
    total = torch.stack(roots).sum()
    for (m, v2), r in zip(parts, roots, strict=True):
        if m is None:
            continue
        i0, rest, g = m
        k = g.shape[0]
        # d f / d V^2 (clamp_min passes the gradient where V^2 >= 0), then d V^2 / dG = adj(G) / (k!)^2
        a = _adjugate(g) * ((v2 >= 0).to(g.dtype) / (2.0 * r * total * math.factorial(k) ** 2))
        dk.index_put_((rest[:, None], rest[None, :]), a, accumulate=True)
        dk[:, i0].index_add_(0, rest, -a.sum(1))  # G_ab = K_ab - K_a0 - K_0b + K_00
        dk[i0].index_add_(0, rest, -a.sum(0))
        dk[i0, i0] += a.sum()
    return dk, torch.log(total)


class _TrainableGram(torch.autograd.Function):
    """The Gram rows of the trainable vertices W [T, D] against the frozen ones, centred on c:
    X_T = W - c, returns (X_T X_F^T [T, F], X_T X_T^T [T, T]) in float64; the backward is one product,
    dW = G_TF X_F + (G_TT + G_TT^T) X_T, in W's dtype.

    ``c`` and ``x`` (= X_F) come in the dtype the products run in: float64 for measurements, W's own
    dtype while training (`Simplex._gram`), where the rows are sums over D products of centred vectors
    (relative error about sqrt(D) eps, far below the eps = 1e-4 of the training term) and every pass over
    the weights reads half the bytes."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, c: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        xt = torch.sub(w, c)  # one pass, promoted to c's dtype
        ctx.save_for_backward(xt, x)
        ctx.dtype = w.dtype
        if xt.shape[0] == 1:
            tf = (x @ xt[0]).unsqueeze(0)
            tt = torch.dot(xt[0], xt[0]).reshape(1, 1)
        else:
            tf, tt = xt @ x.T, xt @ xt.T
        return tf.double(), tt.double()

    @staticmethod
    def backward(ctx: Any, g_tf: Tensor, g_tt: Tensor) -> tuple[Tensor, None, None]:
        xt, x = ctx.saved_tensors
        sym = (g_tt + g_tt.T).to(xt.dtype)
        if xt.shape[0] == 1:  # one output array: beta xt + g_TF X_F
            grad = torch.addmm(xt, g_tf.to(xt.dtype), x, beta=float(sym))
        else:
            grad = torch.addmm(sym @ xt, g_tf.to(xt.dtype), x)
        return grad.to(ctx.dtype), None, None


# -- the family -------------------------------------------------------------------------------------------


class Simplex(LinearFamily):
    """Points by barycentric coordinates over n vertices; one simplex, or a complex of several.

    ``vertices``: n points (dicts of tensors); ``simplices``: tuples of vertex indices (default: one
    simplex of all vertices); ``trainable``: which vertices are ``nn.Parameter`` (default none);
    ``buffers``: the buffers of the first m vertices, trained models (see the module docstring).
    Coordinates: [K, n] weights (rows sum to 1 on the simplex; any affine weights are accepted).
    """

    def __init__(
        self,
        vertices: Sequence[Point],
        simplices: Sequence[Sequence[int]] | None = None,
        trainable: Sequence[bool] | None = None,
        buffers: Sequence[Point] | None = None,
    ):
        vertices = list(vertices)
        n = len(vertices)
        if n == 0:
            raise UserError("a simplex needs at least one vertex")
        members: list[tuple[int, ...]] = (
            [tuple(range(n))] if simplices is None else [tuple(int(j) for j in s) for s in simplices]
        )
        for s in members:
            if not s or len(set(s)) != len(s) or min(s) < 0 or max(s) >= n:
                raise UserError(f"simplex {list(s)} must list distinct vertex indices in 0..{n - 1}")
        if not members:
            raise UserError("a complex needs at least one simplex")
        used = sorted({j for s in members for j in s})
        if used != list(range(n)):
            raise UserError(
                f"every vertex must belong to a simplex; vertices {sorted(set(range(n)) - set(used))} do not"
            )
        super().__init__(vertices, trainable, buffers)
        self.dim = n
        self.simplices: tuple[tuple[int, ...], ...] = tuple(members)
        # saved momentum buffers by vertex (`modescape.simplex.load_simplex` fills it): resumed training
        self.momentum: dict[int, Tensor] = {}
        if self.n_buffer_anchors > n:
            raise UserError(f"{self.n_buffer_anchors} models' buffers for {n} vertices")

    # -- coordinates -----------------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return self.n_anchors

    def coefficients(self, coords: Tensor) -> Tensor:
        return coords

    def vertex_coords(self, j: int) -> Tensor:
        """[n] float64: the coordinates of vertex j (one-hot)."""
        c = torch.zeros(self.n_vertices, dtype=torch.float64)
        c[j] = 1.0
        return c

    def centroid(self, simplex: int | None = None) -> Tensor:
        """[n] float64: the coordinates of the centroid of one simplex (default: of all vertices)."""
        members = range(self.n_vertices) if simplex is None else self.simplices[simplex]
        c = torch.zeros(self.n_vertices, dtype=torch.float64)
        c[list(members)] = 1.0 / len(members)
        return c

    def sample(
        self, n: int, seed: int | None = None, generator: torch.Generator | None = None, by: str = "uniform"
    ) -> Tensor:
        """[n, n_vertices] float64 coordinates of n points drawn uniformly on the simplex (Dirichlet(1)).

        On a complex each point first picks one of its simplices: ``by="uniform"`` (each equally, as the
        reference's training does) or ``"volume"`` (in proportion to its volume: uniform on the complex).
        Seeded by ``seed`` or drawn from ``generator`` (a CPU generator)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        if len(self.simplices) == 1:
            members = list(self.simplices[0])
            w = dirichlet(n, len(members), generator)
            if members == list(range(self.n_vertices)):
                return w
            out = torch.zeros(n, self.n_vertices, dtype=torch.float64)
            out[:, members] = w
            return out
        out = torch.zeros(n, self.n_vertices, dtype=torch.float64)
        if by == "uniform":
            which = torch.randint(len(self.simplices), (n,), generator=generator)
        elif by == "volume":
            vols = self.volumes().detach().cpu()
            if float(vols.sum()) <= 0:
                raise UserError("every simplex of the complex is degenerate (volume 0): sample by='uniform'")
            which = torch.multinomial(vols / vols.sum(), n, replacement=True, generator=generator)
        else:
            raise UserError(f"unknown sampling '{by}': use uniform or volume")
        for s_idx, s in enumerate(self.simplices):
            rows = (which == s_idx).nonzero().reshape(-1)
            w = dirichlet(n, len(s), generator)  # drawn for every point: the stream does not depend on `which`
            if rows.numel():
                out[rows[:, None], torch.tensor(s)[None, :]] = w[rows]
        return out

    # -- vertices and volumes --------------------------------------------------------------------
    def vertex(self, j: int) -> dict[str, Tensor]:
        """Vertex j as a point (detached)."""
        return {k: v.detach() for k, v in self.anchor_point(j).items()}

    def vertices(self) -> list[dict[str, Tensor]]:
        return [self.vertex(j) for j in range(self.n_vertices)]

    # -- the frozen vertices, stacked once (training touches only the trainable ones per step) -------
    def _frozen_cache(self) -> dict[str, Any]:
        """`frozen_stack` (the frozen vertices W_F [F, D]) plus their float64 mean c, X_F = W_F - c (float64)
        and X_F X_F^T, rebuilt with it."""
        cache = self.frozen_stack()
        if "gram" not in cache:
            w = cache["w"]
            c = w.double().mean(0)
            x = w.double() - c
            cache.update(c=c, x=x, gram=x @ x.T, c_low=c.to(w.dtype), x_low=x.to(w.dtype))
        return cache

    def _gram(self) -> tuple[Tensor, list[int]]:
        """The float64 Gram matrix K of the vertices centred on the frozen vertices' mean (any common centre
        gives the same simplex volumes), in the order ``order`` (frozen vertices first): only the trainable
        rows are computed per call."""
        frozen, train = self.split_anchors()
        if not frozen or not train:
            v = self.matrix().double()
            x = v - v.mean(0, keepdim=True).detach()
            return x @ x.T, list(range(self.n_vertices))
        cache = self._frozen_cache()
        w = self.anchor(train[0]).unsqueeze(0) if len(train) == 1 else torch.stack([self.anchor(j) for j in train])
        # training (a gradient wanted): the long products in the vertices' dtype; measurements: float64
        low = torch.is_grad_enabled() and w.requires_grad
        tf, tt = _TrainableGram.apply(w, cache["c_low" if low else "c"], cache["x_low" if low else "x"])
        gram = torch.cat([torch.cat([cache["gram"], tf.T], 1), torch.cat([tf, tt], 1)], 0)
        return gram, frozen + train

    def _members(self, order: list[int], device: torch.device) -> list[tuple[int, Tensor] | None]:
        """Per simplex: its first vertex's position in ``order`` and the others' positions (cached)."""
        key = (tuple(order), str(device))
        cache = getattr(self, "_member_cache", None)
        if cache is None or cache[0] != key:
            pos = {v: i for i, v in enumerate(order)}
            members = [
                (pos[s[0]], torch.tensor([pos[j] for j in s[1:]], device=device)) if len(s) > 1 else None
                for s in self.simplices
            ]
            cache = (key, members)
            object.__setattr__(self, "_member_cache", cache)
        return cache[1]

    def squared_volumes(self) -> Tensor:
        """[S] float64: V_s^2 of each simplex, from one Gram matrix of all vertices (frozen part cached);
        differentiable in the trainable vertices, also where degenerate."""
        gram, order = self._gram()
        one = torch.ones((), dtype=torch.float64, device=gram.device)
        out = []
        for m in self._members(order, gram.device):
            if m is None:
                out.append(one)
                continue
            out.append(gram_volume_squared(_edge_gram_of(gram, *m)))
        return torch.stack(out)

    def volumes(self) -> Tensor:
        """[S] float64: the volume of each simplex (differentiable in trainable vertices)."""
        return self.squared_volumes().clamp_min(0.0).sqrt()

    def volume(self) -> Tensor:
        """The volume of the complex: the sum of its simplices' volumes (float64)."""
        return self.volumes().sum()

    def log_volume(self, eps: float = 0.0) -> Tensor:
        """log sum_s sqrt(V_s^2 + eps) over the complex's simplices, float64 and differentiable.

        ``eps = 0``: the log of the volume (-inf when every simplex is degenerate). ``eps > 0`` (training):
        smooth where a new vertex sits at a centroid; the reference adds 1e-4 to V^2 in the same way."""
        sq = self.squared_volumes().clamp_min(0.0)
        if eps == 0.0:
            return torch.log(sq.sqrt().sum())
        return torch.log(torch.sqrt(sq + eps).sum())

    def volume_step(self, eps: float, lam: float) -> Tensor:
        """The volume term of a SPRO step: adds the gradient of ``-lam log_volume(eps)`` to the trainable
        vertices' ``.grad`` (in place) and returns the log-volume (float64, detached).

        The same value and gradient as autograd through `log_volume`, without its graph: the trainable
        vertices' Gram rows (two passes over D) in the weights' dtype, the derivative of the log-volume with
        respect to the k x k Gram matrix in closed form (d det G / dG = adj G, from G's eigenvalues: also
        at a degenerate simplex), then one product back onto each trainable vertex."""
        frozen, train = self.split_anchors()
        if not frozen or not train or eps <= 0.0:
            logv = self.log_volume(eps)
            (-lam * logv).backward()
            return logv.detach()
        cache = self._frozen_cache()
        with torch.no_grad():
            ws = [self.anchor(j) for j in train]
            xs = [w - cache["c_low"] for w in ws]  # X_T, one pass each
            xt = xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(xs)  # [T, D] (a view for one vertex)
            # the centred frozen rows sum to zero: F - 1 of them give the last (none at all for F = 1)
            xr = cache["x_low"][:-1]
            tr = (xt @ xr.T).double() if xr.shape[0] else xt.new_zeros(xt.shape[0], 0, dtype=torch.float64)
            tf, tt = torch.cat([tr, -tr.sum(1, keepdim=True)], 1), (xt @ xt.T).double()
            gram = torch.cat([torch.cat([cache["gram"], tf.T], 1), torch.cat([tf, tt], 1)], 0)
            dk, logv = _log_volume_gram_grad(gram, self._members(frozen + train, gram.device), eps)
            f = len(frozen)
            g_tf = dk[f:, :f] + dk[:f, f:].T  # [T, F]: K_TF appears twice (K symmetric)
            g_tr = (g_tf[:, :-1] - g_tf[:, -1:]).to(xt.dtype)  # on the F - 1 rows kept
            g_tt = (dk[f:, f:] + dk[f:, f:].T).to(xt.dtype)
            for t, w in enumerate(ws):  # w.grad += -lam (g_TF X_F + (g_TT + g_TT^T) X_T), two passes
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                if xr.shape[0]:
                    w.grad.addmv_(xr.T, g_tr[t], alpha=-lam)
                for u, x in enumerate(xs):
                    w.grad.addcmul_(x, g_tt[t, u], value=-lam)  # (a 0-dim factor: no host synchronisation)
        return logv

    # -- growing the complex (SPRO) ----------------------------------------------------------------
    def add_vertex(self, point: Point | None = None, to: Sequence[int] | None = None) -> Simplex:
        """A new family with one more vertex, trainable, every existing vertex frozen (the reference's
        ``add_vert``). ``point``: where it starts (default: the centroid of all existing vertices, as the
        reference); ``to``: the simplices it joins (default all)."""
        n = self.n_vertices
        verts = self.vertices()
        if point is None:
            w = self.matrix().detach().mean(0)
            point = {k: v.to(verts[0][k].dtype) for k, v in self.layout.unflatten(w).items()}
        targets = range(len(self.simplices)) if to is None else list(to)
        simplices = [s + (n,) if i in targets else s for i, s in enumerate(self.simplices)]
        out = Simplex(verts + [dict(point)], simplices, trainable=[False] * n + [True], buffers=self.model_buffers())
        return out.to(device=self.anchor(0).device)

    def frozen(self) -> Simplex:
        """The same family with every vertex frozen (for evaluation and saving)."""
        return Simplex(self.vertices(), self.simplices, buffers=self.model_buffers()).to(device=self.anchor(0).device)

    def model_buffers(self) -> list[dict[str, Tensor]] | None:
        """The carried buffers of the models among the first vertices (None when none are carried)."""
        if not self.carries_buffers:
            return None
        return [self.buffer_anchor(j) for j in range(self.n_buffer_anchors)]

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        m = self.n_buffer_anchors
        a = coords[:, :m]
        rest = coords[:, m:].sum(1, keepdim=True) / m
        return a + rest

    def describe(self) -> dict[str, Any]:
        return {
            "family": "Simplex",
            "vertices": self.n_vertices,
            "simplices": [list(s) for s in self.simplices],
            "trainable": list(self.trainable),
            "meaning": "sum_j c_j w_j, barycentric coordinates c",
        }


__all__ = [
    "Simplex",
    "cayley_menger_determinant",
    "dirichlet",
    "edge_gram",
    "gram_volume_squared",
    "log_volume",
    "squared_distances",
    "volume_squared",
]

"""The family base classes: coordinates in, (stacked) points out.

A `LinearFamily` keeps its anchor points as flat vectors, stacked in a matrix ``W`` of shape [n, D]
(frozen anchors as buffers, trainable ones as ``nn.Parameter``), and a subclass says only how
coordinates become coefficients: ``coefficients(coords [K, d]) -> [K, n]``. Then

    point(coords) = unflatten(coefficients(coords) @ W)

is one matrix product for K points at once, differentiable in the trainable anchors. Families are
``nn.Module``s so their trainable anchors go straight into an optimiser and their state into a
safetensors file.

**Buffers.** A family between models (a line from A to B, the plane through A, B and C, a curve between
two minima) also carries each model's buffers (BatchNorm running statistics), and `buffers_at(coords)`
gives every point its models' buffers combined with the point's own weights over the models
(``buffer_coefficients``: ``(1 - t, t)`` on a line or curve, barycentric coordinates on the plane through
three models), so that the point at a model's coordinates evaluates exactly as that model does under
``bn="running"``. Floating buffers are combined; integer ones (``num_batches_tracked``) are taken from
the model with the largest weight. A family with one model's buffers keeps them at every point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import space as sp
from ..errors import UserError
from ..space import Layout

# coordinates as a family takes them: a number, a sequence or array of numbers, a [K, dim] tensor;
# `Family.as_coords` normalises them (and refuses anything else)
Coords = Any


class Family(nn.Module):
    """Coordinates -> points. ``family(coords)``: coords [K, dim] -> stacked point; [dim] -> point."""

    dim: int = 1

    def forward(self, coords: Coords) -> sp.Point:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define forward(coords)")

    def as_coords(self, coords: Coords) -> tuple[Tensor, bool]:
        """Normalise coordinates to [K, dim] float64; ``single`` when one point was asked for.

        A scalar is one point of a 1-d family; a 1-d tensor is K points of a 1-d family, or one point
        of a d-dimensional family; a 2-d tensor is [K, dim].
        """
        c = torch.as_tensor(coords, dtype=torch.float64)
        single = c.dim() == 0 or (c.dim() == 1 and self.dim > 1)
        if c.dim() == 0:
            c = c.reshape(1, 1)
        elif c.dim() == 1:
            c = c.reshape(1, -1) if self.dim > 1 else c.reshape(-1, 1)
        if c.dim() != 2 or c.shape[-1] != self.dim:
            raise UserError(
                f"{type(self).__name__} takes {self.dim} coordinate(s) per point; "
                f"got coordinates of shape {list(c.shape)}"
            )
        return c, single

    # -- buffers carried for the models the family passes through ----------------------------------
    def set_buffers(self, buffers: Sequence[Mapping[str, Tensor]] | None) -> None:
        """Carry these models' buffers (one dict per model the family passes through; see the module doc)."""
        buffers = [dict(b) for b in (buffers or []) if b is not None]
        if not buffers or not buffers[0]:
            self.n_buffer_anchors = 0
            return
        names = list(buffers[0])
        for i, b in enumerate(buffers[1:], 1):
            sp.check_compatible(
                {k: tuple(v.shape) for k, v in buffers[0].items()},
                {k: tuple(v.shape) for k, v in b.items()},
                what=f"buffers of model {i}",
            )
        self.buffer_float = [n for n in names if buffers[0][n].is_floating_point()]
        self.buffer_other = [n for n in names if not buffers[0][n].is_floating_point()]
        self.buffer_layout = Layout(
            tuple(self.buffer_float), tuple(tuple(buffers[0][n].shape) for n in self.buffer_float)
        )
        self.buffer_dtypes = {n: buffers[0][n].dtype for n in names}
        self.n_buffer_anchors = len(buffers)
        for j, b in enumerate(buffers):
            flat = (
                torch.cat([b[n].detach().reshape(-1).double() for n in self.buffer_float])
                if self.buffer_float
                else torch.zeros(0, dtype=torch.float64)
            )
            self.register_buffer(f"buffer_anchor_{j}", flat)
            for n in self.buffer_other:
                self.register_buffer(f"buffer_other_{j}_{n.replace('.', '__')}", b[n].detach().clone())

    @property
    def carries_buffers(self) -> bool:
        return getattr(self, "n_buffer_anchors", 0) > 0

    def buffer_anchor(self, j: int) -> sp.Point:
        """Model j's buffers as the family holds them."""
        flat = getattr(self, f"buffer_anchor_{j}")
        out = {n: v.to(self.buffer_dtypes[n]) for n, v in self.buffer_layout.unflatten(flat).items()}
        for n in self.buffer_other:
            out[n] = getattr(self, f"buffer_other_{j}_{n.replace('.', '__')}")
        return out

    def buffer_coefficients(self, coords: Tensor) -> Tensor:
        """coords [K, dim] float64 -> [K, m] weights of the m models' buffers; rows sum to 1.

        One model: its buffers everywhere. Families through several models define their own."""
        if self.n_buffer_anchors == 1:
            return torch.ones(coords.shape[0], 1, dtype=torch.float64, device=coords.device)
        raise TypeError(
            f"{type(self).__name__} carries {self.n_buffer_anchors} models' buffers but does not say "
            f"how to combine them (buffer_coefficients)"
        )

    def buffers_at(self, coords: Coords) -> sp.Point | None:
        """Stacked buffers [K, ...] at ``coords`` (a point's buffers for a single coordinate); None when
        the family carries none."""
        if not self.carries_buffers:
            return None
        c, single = self.as_coords(coords)
        first = self.get_buffer("buffer_anchor_0")  # typed Tensor (attribute access is Tensor | Module)
        if self.n_buffer_anchors == 1:
            one = self.buffer_anchor(0)
            out = {n: v.unsqueeze(0).expand((c.shape[0],) + tuple(v.shape)) for n, v in one.items()}
        else:
            a = self.buffer_coefficients(c.to(first.device))  # [K, m] float64
            w = torch.stack([getattr(self, f"buffer_anchor_{j}").double() for j in range(self.n_buffer_anchors)])
            flat = a @ w
            out = {n: v.to(self.buffer_dtypes[n]) for n, v in self.buffer_layout.unflatten(flat).items()}
            nearest = a.argmax(dim=1)
            for n in self.buffer_other:
                stacked = torch.stack(
                    [getattr(self, f"buffer_other_{j}_{n.replace('.', '__')}") for j in range(self.n_buffer_anchors)]
                )
                out[n] = stacked[nearest.to(stacked.device)]
        return {n: v[0] for n, v in out.items()} if single else out

    def buffers_matrix(self) -> Tensor | None:
        """All carried float buffers stacked [m, B] (for hashing what determines the numbers)."""
        if not self.carries_buffers:
            return None
        return torch.stack([getattr(self, f"buffer_anchor_{j}") for j in range(self.n_buffer_anchors)])


class LinearFamily(Family):
    """point(c) = sum_j coefficients(c)[j] * anchor_j.

    ``anchors``: a list of points; ``trainable``: which of them are ``nn.Parameter`` (others are frozen
    buffers); ``buffers``: the buffers of the models the family passes through (see the module doc).
    Subclasses define ``coefficients(coords [K, dim] float64) -> [K, n]``.
    """

    def __init__(
        self,
        anchors: Sequence[Mapping[str, Tensor]],
        trainable: Sequence[bool] | None = None,
        buffers: Sequence[Mapping[str, Tensor]] | None = None,
    ):
        super().__init__()
        if len(anchors) == 0:
            raise UserError("a family needs at least one anchor point")
        self.layout = Layout.of(anchors[0])
        trainable = list(trainable) if trainable is not None else [False] * len(anchors)
        if len(trainable) != len(anchors):
            raise UserError("trainable must have one flag per anchor")
        self.n_anchors = len(anchors)
        self._trainable = tuple(bool(t) for t in trainable)
        for j, (a, t) in enumerate(zip(anchors, trainable, strict=True)):
            flat = self.layout.flatten(a).detach().clone()
            if t:
                self.register_parameter(f"anchor_{j}", nn.Parameter(flat))
            else:
                self.register_buffer(f"anchor_{j}", flat)
        self.set_buffers(buffers)

    @property
    def trainable(self) -> tuple[bool, ...]:
        return self._trainable

    def anchor(self, j: int) -> Tensor:
        """Anchor j as a flat vector [D]."""
        return getattr(self, f"anchor_{j}")

    def anchor_point(self, j: int) -> sp.Point:
        """Anchor j as a point."""
        return self.layout.unflatten(self.anchor(j))

    def matrix(self) -> Tensor:
        """All anchors stacked: [n, D]."""
        return torch.stack([self.anchor(j) for j in range(self.n_anchors)])

    def coefficients(self, coords: Tensor) -> Tensor:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define coefficients(coords)")

    def split_anchors(self) -> tuple[list[int], list[int]]:
        """The indices of the frozen anchors and of the trainable ones."""
        frozen = [j for j, t in enumerate(self.trainable) if not t]
        return frozen, [j for j, t in enumerate(self.trainable) if t]

    def frozen_stack(self) -> dict[str, Any]:
        """The frozen anchors stacked once ``w`` [F, D], with the frozen and trainable anchors' indices
        (``frozen``, ``train``: lists and index tensors ``frozen_index``, ``train_index``); rebuilt when a frozen
        anchor changes (its version), moves or changes dtype. Not a registered buffer: never saved."""
        frozen, train = self.split_anchors()
        key = tuple((self.anchor(j).data_ptr(), self.anchor(j)._version, self.anchor(j).dtype) for j in frozen)
        cache = getattr(self, "_frozen_stack", None)
        if cache is None or cache["key"] != key:
            ref = self.anchor(0)
            w = torch.stack([self.anchor(j).detach() for j in frozen]) if frozen else ref.new_zeros(0, ref.numel())
            cache = {
                "key": key,
                "w": w,
                "frozen": frozen,
                "train": train,
                "frozen_index": torch.tensor(frozen, dtype=torch.long, device=w.device),
                "train_index": torch.tensor(train, dtype=torch.long, device=w.device),
            }
            object.__setattr__(self, "_frozen_stack", cache)
        return cache

    def flat(self, coords: Coords) -> Tensor:
        """Flat points [K, D] (or [D] for a single coordinate): ``coefficients @ W`` as two matrix products,
        the frozen anchors' part from the cached stack (`frozen_stack`) and the trainable anchors' part
        differentiable, so that a training step stacks no frozen anchor and its backward writes only the
        trainable anchors' gradient (measured: faster on the CPU than a hand-written backward or elementwise
        sums, bench notes in BENCHMARKS.md)."""
        c, single = self.as_coords(coords)
        cache = self.frozen_stack()
        w = cache["w"]
        a = self.coefficients(c.to(w.device)).to(w.dtype)  # [K, n]
        train = [self.anchor(j) for j in cache["train"]]
        if not train or not cache["frozen"]:
            out = a @ self.matrix()
        else:
            wt = train[0].unsqueeze(0) if len(train) == 1 else torch.stack(train)  # a view for one trainable anchor
            out = (a.index_select(1, cache["frozen_index"]) @ w).addmm_(a.index_select(1, cache["train_index"]), wt)
        return out.squeeze(0) if single else out  # squeeze: a view, whose backward copies nothing

    def write_flat(self, coords: Coords, out: Tensor) -> list[float]:
        """Write the flat point at one coordinate into ``out`` [D] in place (no graph: the training fast path,
        `modescape.point_sgd.FlatStep`); returns the trainable anchors' coefficients, for `pull_flat`."""
        c, single = self.as_coords(coords)
        if c.shape[0] != 1:
            raise UserError(f"write_flat takes one coordinate; got {c.shape[0]}")
        cache = self.frozen_stack()
        a = self.coefficients(c.to(torch.float64))[0].tolist()  # float64 coefficients, as Python floats
        terms = [(cache["w"][i], a[j]) for i, j in enumerate(cache["frozen"])]
        terms += [(self.anchor(j).detach(), a[j]) for j in cache["train"]]
        torch.mul(terms[0][0], terms[0][1], out=out)
        for w, coef in terms[1:]:
            out.add_(w, alpha=coef)
        return [a[j] for j in cache["train"]]

    def pull_flat(self, coefs: list[float], grad: Tensor, steal: bool = False) -> None:
        """The trainable anchors' gradients from the gradient ``grad`` [D] with respect to the point written
        by `write_flat`: anchor j gets coefficient_j * grad (added to its ``.grad`` when it has one).
        ``steal``: ``grad`` is not read again before the optimiser step (one point per step), so the last
        anchor without a gradient takes ``grad`` itself, scaled in place (no new [D] vector)."""
        train = self.frozen_stack()["train"]
        for n, (j, coef) in enumerate(zip(train, coefs, strict=True)):
            anchor = self.anchor(j)
            if anchor.grad is not None:
                anchor.grad.add_(grad, alpha=coef)
            elif steal and n == len(train) - 1:
                anchor.grad = grad.mul_(coef)
            else:
                anchor.grad = grad * coef

    def forward(self, coords: Coords) -> sp.Point:
        return self.layout.unflatten(self.flat(coords))

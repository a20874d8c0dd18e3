"""The family path of the evaluator: K points of a family, chunk by chunk, the fastest way measured.

A `LinearFamily` gives point(c) = sum_j a_j(c) w_j (anchors w_j, coefficients a_j). When the model is an
``nn.Sequential`` whose first module with state is a Linear or ConvNd, preceded only by stateless modules
(Flatten, ...), that layer's output is linear in the anchors:

    layer(X; sum_j a_j w_j) = sum_j a_j layer(X; w_j).

So it is computed once per anchor and batch (n layer calls instead of K, cached per family while it fits),
combined per point (n axpys; one matrix product for all K on the vmap path), and only the rest of the
network runs per point. Exact up to float rounding. `FamilyPath.choose` times this against the plain loop
and vmap on one chunk and keeps the fastest (``mode``); callers that need the same bits later (resumed
sweeps, other ranks) set ``mode`` to the recorded choice. Not used with ``bn="recompute"`` (statistics need
the full forward anyway). Any other `Family` (e.g. a REPAIRed line) runs on the plain paths.

A family that carries buffers (a line or plane between models) gives each point its own buffers under
``bn="running"`` (`Family.buffers_at`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .. import space as sp
from ..progress import bar
from .sources import default_budget

if TYPE_CHECKING:
    from ..families import Family, LinearFamily
    from .evaluator import Evaluator, Metrics

MODES = ("loop", "vmap", "shared-loop", "shared-vmap")


class FamilyPath:
    """Evaluates ``family(coords)`` for one `Evaluator`; ``mode`` is one of `MODES` once chosen."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.ev = evaluator
        self.mode: str | None = None
        self.timings: dict[str, float] = {}
        # (prefix, layer name, layer, tail) of the shared first layer; None: none; False: not looked at yet
        self._split: tuple[nn.Module, str, nn.Module, nn.Module] | None | bool = False
        # (family, its anchors' versions, {(source, batch): outputs}, bytes cached)
        self._cache: tuple[Any, tuple[int, ...], dict[Any, Tensor], int] | None = None

    @property
    def chunk(self) -> int:
        """Points per call (and per timing probe): at most 16, so probing stays cheap."""
        return min(self.ev.chunk, 16)

    # -- the shared first layer ----------------------------------------------------------------
    def first_layer_split(self) -> tuple[nn.Module, str, nn.Module, nn.Module] | None:
        """``(prefix, name, layer, tail)`` when the shared first layer applies, else None."""
        if not isinstance(self._split, bool):
            return self._split
        split: tuple[nn.Module, str, nn.Module, nn.Module] | None = None
        m = self.ev.module
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            for i, name in enumerate(names):
                sub = m._modules[name]
                has_state = next(sub.parameters(), None) is not None or next(sub.buffers(), None) is not None
                if not has_state:
                    continue
                linear = isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                if linear and next(sub.children(), None) is None and not list(sub.buffers()):
                    prefix = nn.Sequential(*[m._modules[n] for n in names[:i]])
                    tail = nn.Sequential(OrderedDict((n, m._modules[n]) for n in names[i + 1 :]))
                    split = (prefix, name, sub, tail)
                break
        self._split = split
        return split

    def clear_cache(self) -> None:
        """Forget the cached first-layer outputs (they depend on the evaluator's precision)."""
        self._cache = None

    def applies(self, family: Family) -> bool:
        return (
            hasattr(family, "coefficients")
            and hasattr(family, "anchor_point")
            and self.first_layer_split() is not None
            and self.ev.bn != "recompute"
        )

    def _anchor_outputs(self, family: LinearFamily, x: Tensor, key: Any) -> Tensor:
        """[n, B, ...]: the first layer at each anchor of ``family`` on batch ``x`` (cached per family)."""
        ev = self.ev
        split = self.first_layer_split()
        assert split is not None  # only called when `applies`
        prefix, name, layer, _ = split
        version = tuple(int(family.anchor(j)._version) for j in range(family.n_anchors))
        cache = self._cache
        if cache is None or cache[0] is not family or cache[1] != version:
            cache = self._cache = (family, version, {}, 0)
        if key in cache[2]:
            return cache[2][key]
        wnames = [n for n in ev.space.names if n.startswith(name + ".")]
        zs = []
        with torch.no_grad(), ev.functional.autocast_context():
            h = prefix(x)
            for j in range(family.n_anchors):
                anchor = family.anchor_point(j)
                w = {n[len(name) + 1 :]: anchor[n].to(ev.device, ev.dtype) for n in wnames}
                if ev.channels_last and w.get("weight") is not None and w["weight"].dim() == 4:
                    w["weight"] = w["weight"].contiguous(memory_format=torch.channels_last)
                zs.append(functional_call(layer, w, (h,)))
        z = torch.stack(zs).to(ev.dtype)  # combined in full precision (autocast may give bf16)
        size = z.numel() * z.element_size()
        if cache[3] + size <= default_budget(ev.device) // 8:
            cache[2][key] = z
            self._cache = (cache[0], cache[1], cache[2], cache[3] + size)
        return z

    def _shared_outputs(self, family: LinearFamily, coeffs: Tensor, vectorised: bool) -> Callable[..., Tensor]:
        """An ``outputs`` function for `Evaluator.measure`: first layer shared, the tail per point."""
        ev = self.ev
        split = self.first_layer_split()
        assert split is not None  # only called when `applies`
        _, name, _, tail = split
        tail_params = {n for n, _ in tail.named_parameters()}
        tail_bufs = {n for n, _ in tail.named_buffers()}

        def run_tail(p: sp.Point, b: sp.Point, h: Tensor) -> Tensor:
            return ev.functional.run(tail, p, b, h, bn_train=ev.bn == "train")

        def outputs(params: sp.Point, buffers: sp.Point | None, x: Tensor, source: str, bi: int) -> Tensor:
            z = self._anchor_outputs(family, x, (source, bi))  # [n, B, ...]
            zf, a = z.reshape(z.shape[0], -1), coeffs.to(z.dtype)  # [n, B * F], [K, n]
            p = {n: t for n, t in params.items() if n in tail_params}
            shared = buffers is None
            src_b = ev.buffers if buffers is None else buffers
            b = {n: t for n, t in src_b.items() if n in tail_bufs}
            if vectorised:
                h = (a @ zf).reshape((a.shape[0],) + tuple(z.shape[1:]))
                return vmap(run_tail, in_dims=(0, None if shared else 0, 0), randomness="different")(p, b, h)
            outs = []
            al = a.tolist()
            for i in range(a.shape[0]):  # one point's first layer at a time: stays in cache for the tail
                h = torch.mul(z[0], al[i][0])
                for j in range(1, z.shape[0]):
                    h.add_(z[j], alpha=al[i][j])
                bi_ = b if shared else {n: t[i] for n, t in b.items()}
                outs.append(run_tail({n: t[i] for n, t in p.items()}, bi_, h))
            return torch.stack(outs)

        return outputs

    # -- chunks, timing, the whole run -----------------------------------------------------------
    def _buffers(self, family: Family, coords: Tensor) -> sp.Point | None:
        """The family's own per-point buffers under ``bn="running"`` (None: the evaluator's)."""
        ev = self.ev
        if ev.bn != "running" or not ev.buffers or not getattr(family, "carries_buffers", False):
            return None
        stacked = family.buffers_at(coords)
        return None if stacked is None else sp.to(stacked, ev.device, ev.dtype)

    def _chunk(self, family: Family, coords: Tensor, mode: str) -> Tensor:
        """[K, M] metrics at family(coords) with one of `MODES`."""
        ev = self.ev
        params = ev.stack_points(family(coords))
        buffers = self._buffers(family, coords)
        vectorised = mode.endswith("vmap") and coords.shape[0] > 1
        if mode.startswith("shared"):
            linear = cast("LinearFamily", family)  # the shared modes run only where `applies` (coefficients)
            coeffs = linear.coefficients(coords.to(torch.float64)).to(ev.device, ev.dtype)
            return ev.measure(params, buffers, vectorised, self._shared_outputs(linear, coeffs, vectorised))
        return ev.measure(params, buffers, vectorised)

    def choose(self, family: Family, coords: Tensor) -> str:
        """Time every applicable mode on one chunk (all data; a warm-up, then the best of 2 interleaved
        rounds); keep the fastest."""
        if self.mode is not None:
            return self.mode
        ev = self.ev
        modes = [m for m in MODES if not m.startswith("shared") or self.applies(family)]
        if ev.compile:  # compilation applies to the plain paths (a point, or a chunk under vmap): no probing
            self.mode = "vmap" if ev.mode == "vmap" else "loop"
            return self.mode
        if ev.mode_chosen is not None:  # a fixed plain mode was asked for: only its variants
            modes = [m for m in modes if m.endswith(ev.mode_chosen)]
        # the probe is one chunk of the size `evaluate` will use (vmap's speed depends on it)
        c = coords[: min(self.chunk, coords.shape[0])]
        for mode in modes:
            self._chunk(family, c[:2], mode)  # warm-up (caches, allocator)
        times = {m: float("inf") for m in modes}
        for _ in range(2):  # interleaved rounds, best of each: robust to a busy machine
            for mode in modes:
                ev.sync()
                t0 = time.perf_counter()
                self._chunk(family, c, mode)
                ev.sync()
                times[mode] = min(times[mode], time.perf_counter() - t0)
        self.timings = times
        self.mode = min(times, key=lambda m: times[m])
        return self.mode

    def evaluate(
        self, family: Family, coords: Any, progress: bool | None = None, description: str = "evaluating"
    ) -> Metrics:
        """Metrics ([K, M]) at ``family(coords)``, chunk by chunk (never all K points at once)."""
        from .evaluator import Metrics

        ev = self.ev
        c, _ = family.as_coords(coords)
        mode = self.mode or self.choose(family, c)
        if mode.startswith("shared") and not self.applies(family):  # chosen for a linear family; this one
            mode = mode.split("-", 1)[1]  # is not (a REPAIRed line): the same plain path without the sharing
        rows = []
        show = ev.progress if progress is None else progress
        enabled = show if show is not None else (None if c.shape[0] > 4 else False)
        with bar(description, c.shape[0], enabled=enabled) as advance:
            for i in range(0, c.shape[0], self.chunk):
                rows.append(self._chunk(family, c[i : i + self.chunk], mode))
                advance(rows[-1].shape[0])
        return Metrics(torch.cat(rows), ev.names, ev.bn, mode, ev.precision)


__all__ = ["FamilyPath", "MODES"]

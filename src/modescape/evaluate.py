"""The evaluator: a batch of K points in, a [K, M] table of metrics over whole datasets out.

Every method in modescape measures points through this one object, so the hard parts live here once:

* **data**: a DataLoader, a Dataset, or ``(X, y)`` tensors, materialised on the device as a list of
  batches when it fits (one pass of the loader, in its order), streamed batch by batch otherwise.
  Several named sources (``{"train": ..., "test": ...}``) are evaluated together; their metrics are
  named ``train_loss``, ``test_accuracy``, ...
* **loop or vmap**: K points are run one after another (``mode="loop"``) or vectorised with
  ``torch.func.vmap`` (``mode="vmap"``). ``mode="auto"`` times both on a few points and one batch the
  first time it is called and keeps the faster (see ``self.mode_chosen``).
* **the batch-norm policy** (``bn``), recorded with every result:

  - ``running``: eval mode with the stored running statistics (the model's, or buffers passed in);
  - ``recompute``: exact fresh statistics at every point: in train mode, the per-batch mean and
    unbiased variance of every BatchNorm input, averaged with equal weight over the batches of
    ``bn_data`` (what ``torch.optim.swa_utils.update_bn`` computes, momentum=None), then eval mode
    with them. Vectorised over points on the vmap path;
  - ``train``: every BatchNorm normalises with the statistics of the batch being evaluated.

It never mutates the user's model: it works on a private copy whose BatchNorm layers do not track
running statistics, with parameters and buffers always passed in through ``functional_call``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import space as sp
from .errors import UserError
from .progress import bar

BN_POLICIES = ("running", "recompute", "train")
METRICS = ("loss", "accuracy", "error")

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy (the default loss)."""
    return F.cross_entropy(outputs, targets, reduction="none")


@dataclass
class Metrics:
    """A [K, M] table of metric values (float64, CPU) with the metric names, and the BN policy used."""

    values: Tensor
    names: tuple[str, ...]
    bn: str
    mode: str = ""

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"no metric '{name}'; have {list(self.names)}") from None

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_dict(self, i: int = 0) -> dict[str, float]:
        """Metric name -> value for point ``i``."""
        return {n: float(self.values[i, j]) for j, n in enumerate(self.names)}


@dataclass
class Source:
    """One dataset as the evaluator sees it: batches on the device, materialised or streamed."""

    name: str
    n: int
    batches: list[tuple[Tensor, Tensor]] | None = None
    loader: Iterable | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.batches is not None:
            yield from self.batches
            return
        for x, y in self.loader:  # streamed: too large to keep on the device
            yield _prepare(x, self.device, self.dtype), y.to(self.device)

    @property
    def materialised(self) -> bool:
        return self.batches is not None


def _prepare(x: Tensor, device, dtype) -> Tensor:
    x = x.to(device)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return x


def make_source(data: Any, name: str = "data", batch_size: int | None = None, device=None, dtype=None,
                budget_bytes: int | None = None) -> Source:
    """Turn ``(X, y)``, a Dataset or a DataLoader into a `Source`, materialised when it fits.

    Tensors are cut into batches of ``batch_size`` (default 1024) in order; a DataLoader keeps its
    own batches (one pass, in its order).
    """
    device = torch.device(device or "cpu")
    if isinstance(data, Source):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise UserError(f"data '{name}' has {x.shape[0]} inputs but {y.shape[0]} targets")
        bs = batch_size or 1024
        batches = [(_prepare(x[i:i + bs], device, dtype), y[i:i + bs].to(device)) for i in range(0, x.shape[0], bs)]
        return Source(name, int(x.shape[0]), batches=batches, device=device, dtype=dtype)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size or 1024, shuffle=False)
    if isinstance(data, torch.utils.data.DataLoader) or hasattr(data, "__iter__"):
        if budget_bytes is None:
            budget_bytes = _default_budget(device)
        batches, n, size = [], 0, 0
        for x, y in data:
            size += x.numel() * x.element_size() + y.numel() * y.element_size()
            if size > budget_bytes:
                n = len(getattr(data, "dataset", [])) or -1
                return Source(name, n, loader=data, device=device, dtype=dtype)
            batches.append((_prepare(x, device, dtype), y.to(device)))
            n += x.shape[0]
        if n == 0:
            raise UserError(f"data '{name}' is empty")
        return Source(name, n, batches=batches, device=device, dtype=dtype)
    raise UserError(f"data '{name}' must be (X, y) tensors, a Dataset or a DataLoader; got {type(data).__name__}")


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 8 * 2**30


class Evaluator:
    """Evaluate K points of one model's weight space on whole datasets.

    Parameters
    ----------
    model : the ``nn.Module`` whose weight space the points live in (never modified).
    data : ``(X, y)``, a Dataset, a DataLoader, or a dict ``{name: any of those}``.
    metrics : any of ``"loss"``, ``"accuracy"``, ``"error"``.
    bn : ``"running"`` | ``"recompute"`` | ``"train"`` (see the module docstring).
    bn_data : the data whose batches give recomputed statistics: a key of ``data`` or a data object.
        Default: ``"train"`` when ``data`` has it, else the first source.
    device, dtype : where and in which float type to evaluate (default: the model's).
    loss : per-sample loss ``loss(outputs [B, C], targets [B]) -> [B]``; default cross-entropy.
    batch_size : batch size for tensor data (DataLoaders keep theirs).
    mode : ``"auto"`` | ``"loop"`` | ``"vmap"``.
    chunk : points per vectorised call (memory bound); default 32.

    ``evaluator(points)`` takes a list of points or a stacked point and returns `Metrics` ([K, M]).
    """

    def __init__(self, model: nn.Module, data: Any, metrics: Sequence[str] = ("loss", "accuracy"),
                 bn: str = "running", bn_data: Any = None, device=None, dtype=None, loss: LossFn | None = None,
                 batch_size: int | None = None, mode: str = "auto", chunk: int = 32, progress: bool | None = None):
        if bn not in BN_POLICIES:
            raise UserError(f"unknown BN policy '{bn}': use one of {', '.join(BN_POLICIES)}")
        if mode not in ("auto", "loop", "vmap"):
            raise UserError(f"unknown mode '{mode}': use auto, loop or vmap")
        for m in metrics:
            if m not in METRICS:
                raise UserError(f"unknown metric '{m}': use any of {', '.join(METRICS)}")
        first = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        self.dtype = dtype if dtype is not None else (first.dtype if first is not None else torch.float32)
        self.space = sp.WeightSpace(model)
        self.metrics = tuple(metrics)
        self.bn = bn
        self.loss_fn: LossFn = loss or cross_entropy
        self.mode = mode
        self.chunk = max(1, int(chunk))
        self.mode_chosen: str | None = None if mode == "auto" else mode
        self.progress = progress

        # private module: our copy, BN layers never track running statistics (buffers come in explicitly)
        self.module = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.bn_modules: dict[str, nn.modules.batchnorm._BatchNorm] = {
            n: m for n, m in self.module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        for m in self.bn_modules.values():
            m.track_running_stats = False
        self._collect: dict[str, tuple[Tensor, Tensor]] | None = None
        for name, m in self.bn_modules.items():
            m.register_forward_pre_hook(self._stats_hook(name))
        self.buffers: sp.Point = sp.to(sp.clone(dict(model.named_buffers())), self.device, self.dtype)
        self.point0: sp.Point = sp.to(self.space.point(model), self.device, self.dtype)

        # data
        sources = data if isinstance(data, Mapping) else {"": data}
        self.sources: dict[str, Source] = {
            k: make_source(v, k or "data", batch_size, self.device, self.dtype) for k, v in sources.items()}
        if bn_data is None:
            bn_key = "train" if "train" in self.sources else next(iter(self.sources))
            self.bn_source = self.sources[bn_key]
        elif isinstance(bn_data, str):
            if bn_data not in self.sources:
                raise UserError(f"bn_data '{bn_data}' is not one of the data sources {list(self.sources)}")
            self.bn_source = self.sources[bn_data]
        else:
            self.bn_source = make_source(bn_data, "bn_data", batch_size, self.device, self.dtype)
        self.names: tuple[str, ...] = tuple(
            (f"{k}_{m}" if k else m) for k in self.sources for m in self.metrics)

    # -- functional pieces shared with the methods (curvature, training of families) -------------
    def forward(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor,
                bn_train: bool | None = None) -> Tensor:
        """Outputs of the model at ``params`` with ``buffers`` on inputs ``x``; pure and differentiable.

        BatchNorm layers use batch statistics when ``bn_train`` (default: the policy is ``train``),
        else the given running statistics.
        """
        if bn_train is None:
            bn_train = self.bn == "train"
        for m in self.bn_modules.values():
            m.training = bn_train
        return functional_call(self.module, ({**params}, {**buffers}), (x,), strict=False)

    def point_buffers(self, point: Mapping[str, Tensor]) -> sp.Point:
        """The buffers the policy evaluates ``point`` with (recomputed statistics under ``recompute``)."""
        if self.bn == "recompute" and self.bn_modules:
            stacked = {k: v.unsqueeze(0) for k, v in point.items()}
            return {k: v[0] for k, v in self.recompute_buffers(stacked, vectorised=False).items()}
        return self.buffers

    def batch_losses(self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None,
                     source: str | None = None) -> Iterator[tuple[float, Tensor]]:
        """Yield ``(n_b / N, mean loss of batch b)`` over a source, differentiable in ``point``.

        Summing the products gives the mean loss over the whole dataset, correctly weighted for
        unequal batch sizes.
        """
        if buffers is None:
            buffers = self.point_buffers(point)
        for w, x, y in self.weighted_batches(source):
            yield w, self.batch_loss(point, buffers, x, y)

    def weighted_batches(self, source: str | None = None) -> Iterator[tuple[float, Tensor, Tensor]]:
        """Yield ``(n_b / N, x_b, y_b)`` over a source (default the first): the one home of the batch
        weighting, for methods that need a pure per-batch function (e.g. ``jvp`` of ``grad``)."""
        src = self.sources[source] if source is not None else next(iter(self.sources.values()))
        for x, y in src:
            yield x.shape[0] / src.n, x, y

    def batch_loss(self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Mean loss of one batch at ``point`` with ``buffers``; pure and differentiable."""
        return self.loss_fn(self.forward(point, buffers, x), y).mean()

    def loss(self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None,
             source: str | None = None) -> Tensor:
        """Mean loss over a whole source, differentiable in ``point``."""
        if buffers is None:
            buffers = self.point_buffers(point)
        return sum(w * l for w, l in self.batch_losses(point, buffers, source))

    # -- batch-norm statistics ------------------------------------------------------------------
    def _stats_hook(self, name: str):
        def hook(module, args):
            if self._collect is None:
                return None
            x = args[0]
            dims = [0] + list(range(2, x.dim()))
            if name in self._collect:
                raise UserError(f"BatchNorm module '{name}' is called twice in one forward pass; "
                                f"bn='recompute' needs each BatchNorm used once")
            self._collect[name] = (x.mean(dims), x.var(dims, correction=1))
            return None
        return hook

    def _batch_stats(self, params, buffers, x) -> tuple[Tensor, ...]:
        self._collect = {}
        try:
            self.forward(params, buffers, x, bn_train=True)
            out: list[Tensor] = []
            for name in self.bn_modules:
                if name not in self._collect:
                    raise UserError(f"BatchNorm module '{name}' was not used in the forward pass")
                out.extend(self._collect[name])
            return tuple(out)
        finally:
            self._collect = None

    def recompute_buffers(self, points: Mapping[str, Tensor], vectorised: bool = True) -> sp.Point:
        """Fresh BatchNorm statistics for a stacked point [K, ...]: stacked buffers [K, ...].

        For every BatchNorm: the mean over ``bn_data``'s batches of the batch mean and of the unbiased
        batch variance of its input in train mode; ``num_batches_tracked`` = number of batches.
        Non-BN buffers are the model's.
        """
        k = next(iter(points.values())).shape[0]
        sums: list[Tensor] | None = None
        nb = 0
        with torch.no_grad():
            for x, _ in self.bn_source:
                stats = self._run(self._batch_stats, points, None, x, vectorised)
                sums = list(stats) if sums is None else [s + t for s, t in zip(sums, stats)]
                nb += 1
        if nb == 0:
            raise UserError("bn_data has no batches to recompute BatchNorm statistics from")
        out = {n: b.unsqueeze(0).expand((k,) + tuple(b.shape)).clone() for n, b in self.buffers.items()}
        for i, name in enumerate(self.bn_modules):
            prefix = f"{name}." if name else ""
            out[prefix + "running_mean"] = sums[2 * i] / nb
            out[prefix + "running_var"] = sums[2 * i + 1] / nb
            if prefix + "num_batches_tracked" in out:
                out[prefix + "num_batches_tracked"] = torch.full_like(out[prefix + "num_batches_tracked"], nb)
        return out

    # -- evaluation ---------------------------------------------------------------------------
    def _run(self, fn, params, buffers, x, vectorised: bool):
        """fn(params_k, buffers_k, x) for each of the K stacked points: outputs stacked on dim 0.

        ``buffers=None`` means the shared model buffers.
        """
        shared = buffers is None
        bufs = self.buffers if shared else buffers
        if vectorised:
            return vmap(fn, in_dims=(0, None if shared else 0, None), randomness="different")(params, bufs, x)
        k = next(iter(params.values())).shape[0]
        outs = []
        for i in range(k):
            p = {n: t[i] for n, t in params.items()}
            b = bufs if shared else {n: t[i] for n, t in bufs.items()}
            outs.append(fn(p, b, x))
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(z) for z in zip(*outs))
        return torch.stack(outs)

    def _as_stacked(self, points) -> sp.Point:
        if isinstance(points, Mapping):
            self.space.check(points, what="point", stacked=self.space.is_stacked(points))
            stacked = points if self.space.is_stacked(points) else {k: v.unsqueeze(0) for k, v in points.items()}
        else:
            points = list(points)
            for i, p in enumerate(points):
                self.space.check(p, what=f"point {i}")
            stacked = sp.stack(points)
        return {n: stacked[n].to(device=self.device, dtype=self.dtype) for n in self.space.names}

    def _eval_chunk(self, params: sp.Point, buffers: sp.Point | None, vectorised: bool) -> Tensor:
        k = next(iter(params.values())).shape[0]
        if self.bn == "recompute" and self.bn_modules:
            buffers = self.recompute_buffers(params, vectorised)
        fwd = lambda p, b, x: self.forward(p, b, x)  # noqa: E731
        cols = []
        with torch.no_grad():
            for src in self.sources.values():
                loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
                correct = torch.zeros(k, dtype=torch.float64, device=self.device)
                for x, y in src:
                    out = self._run(fwd, params, buffers, x, vectorised)  # [K, B, C]
                    b = out.shape[1]
                    per = self.loss_fn(out.reshape(k * b, *out.shape[2:]), y.repeat(k)).reshape(k, b)
                    loss_sum += per.double().sum(1)
                    if "accuracy" in self.metrics or "error" in self.metrics:
                        correct += (out.argmax(-1) == y).double().sum(1)
                for m in self.metrics:
                    if m == "loss":
                        cols.append(loss_sum / src.n)
                    elif m == "accuracy":
                        cols.append(correct / src.n)
                    else:
                        cols.append(1.0 - correct / src.n)
        return torch.stack(cols, dim=1).cpu()

    def choose_mode(self, params: sp.Point, buffers: sp.Point | None = None) -> str:
        """Time loop and vmap on a few points and part of one batch; keep and return the faster."""
        if self.mode_chosen is not None:
            return self.mode_chosen
        # a small probe (up to 8 points, up to 512 inputs) keeps the one-off cost low
        k = min(self.chunk, 8, next(iter(params.values())).shape[0])
        sub = {n: t[:k] for n, t in params.items()}
        subb = None if buffers is None else {n: t[:k] for n, t in buffers.items()}
        x = next(iter(next(iter(self.sources.values()))))[0][:512]
        fwd = lambda p, b, xx: self.forward(p, b, xx)  # noqa: E731
        times = {}
        with torch.no_grad():
            for mode in ("loop", "vmap"):
                best = float("inf")
                for _ in range(2):  # the first run warms up
                    self._sync()
                    t0 = time.perf_counter()
                    self._run(fwd, sub, subb, x, mode == "vmap")
                    self._sync()
                    best = min(best, time.perf_counter() - t0)
                times[mode] = best
        self.mode_timings = times
        self.mode_chosen = "vmap" if times["vmap"] < times["loop"] else "loop"
        return self.mode_chosen

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, points: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
                 buffers: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor] | None = None,
                 progress: bool | None = None, description: str = "evaluating") -> Metrics:
        """Evaluate points: a list of K points or a stacked point. Returns `Metrics` ([K, M]).

        ``buffers``: per-point buffers (a list, or stacked) for the ``running`` policy; default the
        model's own.
        """
        params = self._as_stacked(points)
        k = next(iter(params.values())).shape[0]
        bufs = None
        if buffers is not None and self.buffers:
            bufs = buffers if isinstance(buffers, Mapping) else sp.stack(list(buffers))
            bufs = sp.to(bufs, self.device, self.dtype)
            if next(iter(bufs.values())).dim() == next(iter(self.buffers.values())).dim():
                bufs = {n: v.unsqueeze(0).expand((k,) + tuple(v.shape)) for n, v in bufs.items()}
        mode = self.mode_chosen
        if mode is None:
            mode = self.choose_mode(params, bufs) if k > 1 else "loop"
        rows = []
        show = self.progress if progress is None else progress
        enabled = show if show is not None else (None if k > 4 else False)
        with bar(description, k, enabled=enabled) as advance:
            for i in range(0, k, self.chunk):
                p = {n: t[i:i + self.chunk] for n, t in params.items()}
                b = None if bufs is None else {n: t[i:i + self.chunk] for n, t in bufs.items()}
                rows.append(self._eval_chunk(p, b, mode == "vmap" and p[self.space.names[0]].shape[0] > 1))
                advance(rows[-1].shape[0])
        return Metrics(torch.cat(rows), self.names, self.bn, mode)

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

import contextlib
import copy
import time
from collections import OrderedDict
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
    """Per-sample cross-entropy (the default loss).

    For [N, C] logits and class-index targets it is ``logsumexp(outputs) - outputs[target]``: the same
    value as ``F.cross_entropy`` (to float rounding) and 3-5x faster on the CPU for few classes, where
    ``log_softmax`` dominated landscape sweeps of small models. Other shapes use ``F.cross_entropy``.
    """
    if outputs.dim() == 2 and not targets.is_floating_point():
        return torch.logsumexp(outputs, 1) - outputs.gather(1, targets[:, None])[:, 0]
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
    if batch_size is not None and int(batch_size) < 1:
        raise UserError(f"batch size must be at least 1; got {batch_size}")
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
    autocast : e.g. ``torch.bfloat16``: forwards run under ``torch.autocast`` (GPU speed; outputs are
        cast back to ``dtype`` before the loss).
    channels_last : 4-D inputs and the private module in channels_last memory format (conv nets, GPU).
    compile : ``True`` or a ``torch.compile`` mode string: the per-point forward of the loop path is
        compiled (the family path then uses that loop).

    ``evaluator(points)`` takes a list of points or a stacked point and returns `Metrics` ([K, M]).
    ``evaluator.evaluate_family(family, coords)`` does the same for ``family(coords)``, chunk by chunk,
    sharing the first layer between the points of a linear family where that is faster (see the
    section at the end of the class).
    """

    def __init__(self, model: nn.Module, data: Any, metrics: Sequence[str] = ("loss", "accuracy"),
                 bn: str = "running", bn_data: Any = None, device=None, dtype=None, loss: LossFn | None = None,
                 batch_size: int | None = None, mode: str = "auto", chunk: int = 32, progress: bool | None = None,
                 autocast: torch.dtype | None = None, channels_last: bool = False, compile: bool = False):
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
        # GPU speed options (additive; off by default): bf16/fp16 autocast of forwards, channels_last
        # memory format for 4-D inputs and conv weights, torch.compile of the per-point forward (loop mode)
        self.autocast = autocast
        self.channels_last = bool(channels_last)
        self.compile = compile if isinstance(compile, str) else bool(compile)  # a string is torch.compile's mode
        self._compiled_forward = None
        self.family_mode: str | None = None

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
        self._check_runs()
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
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
            for src in list(self.sources.values()) + [self.bn_source]:
                if src.batches is not None:
                    src.batches = [(_channels_last(x), y) for x, y in src.batches]

    # -- functional pieces shared with the methods (curvature, training of families) -------------
    def _check_runs(self) -> None:
        """One forward pass on two samples of each materialised source, so that a model and data that do
        not fit together fail here with one clear line instead of deep inside a method."""
        for src in self.sources.values():
            if not src.materialised or not src.batches:
                continue
            x = src.batches[0][0][:2]
            try:
                with torch.no_grad():
                    self.forward(self.point0, self.buffers, x, bn_train=False)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"the model cannot run on data '{src.name}' (inputs of shape {list(x.shape[1:])}): "
                                f"{first}; check that the model and the data belong together "
                                f"(--model / --data)") from None

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
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                out = functional_call(self.module, ({**params}, {**buffers}), (x,), strict=False)
            return out.to(self.dtype)
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
            # two-pass variance: same value as x.var(dims, correction=1), 1.7-2.5x faster on CPU
            mean = x.mean(dims, keepdim=True)
            var = (x - mean).square().sum(dims) / (x.numel() // mean.numel() - 1)
            self._collect[name] = (mean.reshape(-1), var)
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
        if not vectorised and all(m.running_mean is not None for m in self.bn_modules.values()):
            return self._native_stats(points)
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

    def _native_stats(self, points: Mapping[str, Tensor]) -> sp.Point:
        """`recompute_buffers` one point at a time through BatchNorm's own kernels: each layer, in train
        mode with ``momentum=None`` and fresh buffers, keeps the running average of its batch means and
        unbiased batch variances (what ``update_bn`` does), so the statistics cost no pass beyond the
        forward's own (the hooks of the vectorised path take several). Same values up to rounding."""
        k = next(iter(points.values())).shape[0]
        saved = {name: (m.track_running_stats, m.momentum) for name, m in self.bn_modules.items()}
        rows: list[sp.Point] = []
        nb = 0
        try:
            for m in self.bn_modules.values():
                m.track_running_stats, m.momentum = True, None
            with torch.no_grad():
                for i in range(k):
                    p = {n: t[i] for n, t in points.items()}
                    bufs = dict(self.buffers)
                    for name, m in self.bn_modules.items():
                        prefix = f"{name}." if name else ""
                        bufs[prefix + "running_mean"] = torch.zeros_like(m.running_mean)
                        bufs[prefix + "running_var"] = torch.ones_like(m.running_var)
                        bufs[prefix + "num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=self.device)
                    nb = 0
                    for x, _ in self.bn_source:
                        self.forward(p, bufs, x, bn_train=True)
                        nb += 1
                    rows.append(bufs)
        finally:
            for name, m in self.bn_modules.items():
                m.track_running_stats, m.momentum = saved[name]
        if nb == 0:
            raise UserError("bn_data has no batches to recompute BatchNorm statistics from")
        for name in self.bn_modules:
            used = int(rows[0][(f"{name}." if name else "") + "num_batches_tracked"])
            if used == 0:
                raise UserError(f"BatchNorm module '{name}' was not used in the forward pass")
            if used != nb:
                raise UserError(f"BatchNorm module '{name}' is called twice in one forward pass; "
                                f"bn='recompute' needs each BatchNorm used once")
        out = {n: torch.stack([r[n] for r in rows]) for n in rows[0] if n in self.buffers or "running_" in n}
        for n, b in self.buffers.items():
            if n.endswith("num_batches_tracked") and n in out:
                out[n] = out[n].to(b.dtype)
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

    def _eval_chunk(self, params: sp.Point, buffers: sp.Point | None, vectorised: bool, outputs=None) -> Tensor:
        """``outputs(params, buffers, x, source_name, batch_index) -> [K, B, C]`` replaces the plain
        forward when given (the family-aware path)."""
        k = next(iter(params.values())).shape[0]
        if self.bn == "recompute" and self.bn_modules:
            buffers = self.recompute_buffers(params, vectorised)
        fwd = lambda p, b, x: self.forward(p, b, x)  # noqa: E731
        if self.compile and not vectorised:
            fwd = self._compiled()
        cols = []
        with torch.no_grad():
            for src in self.sources.values():
                loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
                correct = torch.zeros(k, dtype=torch.float64, device=self.device)
                for bi, (x, y) in enumerate(src):
                    if outputs is not None:
                        out = outputs(params, buffers, x, src.name, bi)
                    else:
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


    # ==========================================================================================
    # Family-aware evaluation: a fast path for linear families (added with the landscape issue)
    # ==========================================================================================
    # A LinearFamily gives point(c) = sum_j a_j(c) w_j (anchors w_j, coefficients a_j). When the model
    # is an nn.Sequential whose first module with state is a Linear or ConvNd, preceded only by
    # stateless modules (Flatten, ...), that layer's output is linear in the anchors:
    #     layer(X; sum_j a_j w_j) = sum_j a_j layer(X; w_j).
    # So it is computed once per anchor and batch (n layer calls instead of K, cached per family while
    # it fits), combined per point (n axpys; one matrix product for all K on the vmap path), and only
    # the rest of the network runs per point. Exact up to float rounding. `evaluate_family` times this
    # against the plain loop and vmap on a few points and keeps the fastest (``self.family_mode``);
    # callers that need the same bits later (resumed sweeps, other ranks) set ``family_mode`` to the
    # recorded choice. Not used with bn="recompute" (statistics need the full forward anyway).

    FAMILY_MODES = ("loop", "vmap", "shared-loop", "shared-vmap")

    @property
    def family_chunk(self) -> int:
        """Points per call on the family path (and per timing probe): at most 16, so probing stays cheap."""
        return min(self.chunk, 16)

    def _compiled(self):
        if self._compiled_forward is None:
            mode = self.compile if isinstance(self.compile, str) else None
            fn = torch.compile(lambda p, b, x: self.forward(p, b, x), dynamic=False, mode=mode)
            # a copy of the outputs: CUDA-graph modes reuse their output memory on the next call
            self._compiled_forward = (lambda p, b, x: fn(p, b, x).clone()) if mode else fn
        return self._compiled_forward

    def first_layer_split(self):
        """``(prefix, name, layer, tail)`` when the fast path applies, else None (see the section comment)."""
        if hasattr(self, "_first_split"):
            return self._first_split
        split = None
        m = self.module
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
                    tail = nn.Sequential(OrderedDict((n, m._modules[n]) for n in names[i + 1:]))
                    split = (prefix, name, sub, tail)
                break
        self._first_split = split
        return split

    def _anchor_outputs(self, family, x: Tensor, key) -> Tensor:
        """[n, B, ...]: the first layer at each anchor of ``family`` on batch ``x`` (cached per family)."""
        prefix, name, layer, _ = self._first_split
        version = tuple(int(family.anchor(j)._version) for j in range(family.n_anchors))
        cache = getattr(self, "_anchor_cache", None)
        if cache is None or cache[0] is not family or cache[1] != version:
            cache = (family, version, {}, 0)
            self._anchor_cache = cache
        if key in cache[2]:
            return cache[2][key]
        wnames = [n for n in self.space.names if n.startswith(name + ".")]
        z = []
        with torch.no_grad(), self._autocast_ctx():
            h = prefix(x)
            for j in range(family.n_anchors):
                anchor = family.anchor_point(j)
                w = {n[len(name) + 1:]: anchor[n].to(self.device, self.dtype) for n in wnames}
                if self.channels_last and w.get("weight") is not None and w["weight"].dim() == 4:
                    w["weight"] = w["weight"].contiguous(memory_format=torch.channels_last)
                z.append(functional_call(layer, w, (h,)))
        z = torch.stack(z).to(self.dtype)  # combined in full precision (autocast may give bf16)
        size = z.numel() * z.element_size()
        if cache[3] + size <= _default_budget(self.device) // 8:
            cache[2][key] = z
            self._anchor_cache = (cache[0], cache[1], cache[2], cache[3] + size)
        return z

    def _autocast_ctx(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _shared_outputs(self, family, coeffs: Tensor, vectorised: bool):
        """An ``outputs`` function for `_eval_chunk`: first layer shared, the tail per point."""
        _, name, _, tail = self._first_split
        tail_params = {n for n, _ in tail.named_parameters()}
        tail_bufs = {n for n, _ in tail.named_buffers()}

        def run_tail(p, b, h):
            for bn in self.bn_modules.values():
                bn.training = self.bn == "train"
            with self._autocast_ctx():
                return functional_call(tail, (p, b), (h,), strict=False).to(self.dtype)

        def outputs(params, buffers, x, source, bi):
            z = self._anchor_outputs(family, x, (source, bi))  # [n, B, ...]
            zf, a = z.reshape(z.shape[0], -1), coeffs.to(z.dtype)  # [n, B * F], [K, n]
            p = {n: t for n, t in params.items() if n in tail_params}
            shared = buffers is None
            src_b = self.buffers if shared else buffers
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
                bi = b if shared else {n: t[i] for n, t in b.items()}
                outs.append(run_tail({n: t[i] for n, t in p.items()}, bi, h))
            return torch.stack(outs)

        return outputs

    def _family_chunk(self, family, coords: Tensor, mode: str) -> Tensor:
        """[K, M] metrics at family(coords) with one of `FAMILY_MODES`."""
        params = self._as_stacked(family(coords))
        vectorised = mode.endswith("vmap") and coords.shape[0] > 1
        if mode.startswith("shared"):
            coeffs = family.coefficients(coords.to(torch.float64)).to(self.device, self.dtype)
            return self._eval_chunk(params, None, vectorised, self._shared_outputs(family, coeffs, vectorised))
        return self._eval_chunk(params, None, vectorised)

    def choose_family_mode(self, family, coords: Tensor) -> str:
        """Time every applicable mode on one chunk (all data; a warm-up, then the best of 2 interleaved
        rounds); keep the fastest."""
        if self.family_mode is not None:
            return self.family_mode
        modes = [m for m in self.FAMILY_MODES if not m.startswith("shared") or self._family_ok(family)]
        if self.compile:  # compilation applies to the plain per-point forward: no probing of the others
            self.family_mode = "loop"
            return self.family_mode
        if self.mode_chosen is not None:  # a fixed plain mode was asked for: only its variants
            modes = [m for m in modes if m.endswith(self.mode_chosen)]
        # the probe is one chunk of the size evaluate_family will use (vmap's speed depends on it)
        c = coords[:min(self.family_chunk, coords.shape[0])]
        for mode in modes:
            self._family_chunk(family, c[:2], mode)  # warm-up (caches, allocator)
        times = {m: float("inf") for m in modes}
        for _ in range(2):  # interleaved rounds, best of each: robust to a busy machine
            for mode in modes:
                self._sync()
                t0 = time.perf_counter()
                self._family_chunk(family, c, mode)
                self._sync()
                times[mode] = min(times[mode], time.perf_counter() - t0)
        self.family_mode_timings = times
        self.family_mode = min(times, key=times.get)
        return self.family_mode

    def _family_ok(self, family) -> bool:
        return (hasattr(family, "coefficients") and hasattr(family, "anchor_point")
                and self.first_layer_split() is not None and self.bn != "recompute")

    def evaluate_family(self, family, coords, progress: bool | None = None, description: str = "evaluating") -> Metrics:
        """Metrics ([K, M]) at ``family(coords)`` (coords [K, dim]): like ``self(family(coords))`` but
        chunk by chunk (never all K points at once) and, for linear families, through the shared
        first layer when that measures faster. ``self.family_mode`` records the path used.
        """
        c, _ = family._coords(coords)
        mode = self.family_mode or self.choose_family_mode(family, c)
        if mode.startswith("shared") and not self._family_ok(family):
            raise UserError(f"family mode '{mode}' does not apply to this model or family: use loop or vmap")
        rows = []
        show = self.progress if progress is None else progress
        enabled = show if show is not None else (None if c.shape[0] > 4 else False)
        with bar(description, c.shape[0], enabled=enabled) as advance:
            for i in range(0, c.shape[0], self.family_chunk):
                rows.append(self._family_chunk(family, c[i:i + self.family_chunk], mode))
                advance(rows[-1].shape[0])
        return Metrics(torch.cat(rows), self.names, self.bn, mode)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

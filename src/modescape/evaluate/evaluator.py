"""The evaluator: a batch of K points in, a [K, M] table of metrics over whole datasets out.

Every method in modescape measures points through this one object, so the hard parts live here once,
each in its own file of this package:

* **data** (`sources`): ``(X, y)``, a Dataset, a DataLoader or any iterable of batches, materialised on
  the device when it fits, streamed otherwise. Several named sources (``{"train": ..., "test": ...}``)
  are evaluated together; their metrics are named ``train_loss``, ``test_accuracy``, ...
* **running a point** (`functional`): a private copy of the model through ``functional_call``, K points
  one after another (``mode="loop"``) or vectorised with ``torch.func.vmap`` (``mode="vmap"``);
  ``mode="auto"`` times both the first time and keeps the faster (``self.mode_chosen``).
* **the batch-norm policy** (`batchnorm`): ``running``, ``recompute`` or ``train``, recorded with every
  result (see that module for the definitions).
* **families** (`family_path`): ``evaluate_family(family, coords)`` evaluates a family's points chunk by
  chunk, sharing the first layer between the points of a linear family where that measures faster, and
  with each point's own buffers when the family carries them (points between models).

It never mutates the user's model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import space as sp
from ..checks import check_precision
from ..errors import UserError
from ..progress import bar
from .batchnorm import Statistics, check_policy
from .family_path import MODES as FAMILY_MODES
from .family_path import FamilyPath
from .functional import FlatBinding, FunctionalModule, map_points
from .sources import Source, make_source

if TYPE_CHECKING:
    from ..families import Family

METRICS = ("loss", "accuracy", "error")

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy (the default loss): [N].

    For [N, C] logits and class-index targets it is ``F.cross_entropy(..., reduction="none")`` (torch 2.13:
    faster on the CPU than ``logsumexp(outputs) - outputs[target]``, which an earlier torch favoured;
    ``bench/steps.py`` times both). For sequence outputs [N, T, V] with
    targets [N, T] (a language model predicting every position) it is the per-token cross-entropy
    averaged over the T positions of each sample, so the mean over samples is the mean per token.
    Other shapes use ``F.cross_entropy``.
    """
    if outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        return F.cross_entropy(outputs, targets, reduction="none")
    if outputs.dim() == 3 and not targets.is_floating_point():
        if targets.shape != outputs.shape[:2]:
            raise UserError(
                f"sequence outputs of shape {list(outputs.shape)} need targets of shape "
                f"{list(outputs.shape[:2])}, got {list(targets.shape)}"
            )
        per_token = torch.logsumexp(outputs, 2) - outputs.gather(2, targets[..., None])[..., 0]
        return per_token.mean(1)
    if outputs.dim() == 2 and targets.dim() == 2 and not targets.is_floating_point():
        raise UserError(
            f"outputs of shape {list(outputs.shape)} but sequence targets of shape "
            f"{list(targets.shape)}: the model must predict every position (for the zoo "
            f"transformer: --model-args output=all)"
        )
    return F.cross_entropy(outputs, targets, reduction="none")


@dataclass
class Metrics:
    """A [K, M] table of metric values (float64, CPU) with the metric names, and the BN policy used."""

    values: Tensor
    names: tuple[str, ...]
    bn: str
    mode: str = ""
    precision: str = "fp32"

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"no metric '{name}'; have {list(self.names)}") from None

    def __len__(self) -> int:
        return self.values.shape[0]

    def row(self, i: int = 0) -> dict[str, float]:
        """Metric name -> value for point ``i``."""
        return {n: float(self.values[i, j]) for j, n in enumerate(self.names)}

    def to_dict(self, i: int | None = 0) -> dict[str, Any]:
        """Point ``i``'s metrics by name (the default: the first point); ``i=None``: every point, as
        ``{"bn", "mode", "precision", "metrics": {name: [K values]}}``."""
        if i is not None:
            return self.row(i)
        return {
            "bn": self.bn,
            "mode": self.mode,
            "precision": self.precision,
            "metrics": {n: self[n].tolist() for n in self.names},
        }


class Evaluator:
    """Evaluate K points of one model's weight space on whole datasets.

    Parameters
    ----------
    model : the ``nn.Module`` whose weight space the points live in (never modified).
    data : ``(X, y)``, a Dataset, a DataLoader, an iterable of batches, or a dict ``{name: any of those}``.
    metrics : any of ``"loss"``, ``"accuracy"``, ``"error"``.
    bn : ``"running"`` | ``"recompute"`` | ``"train"`` (see `modescape.evaluate.batchnorm`).
    bn_data : the data whose batches give recomputed statistics: a key of ``data`` or a data object.
        Default: ``"train"`` when ``data`` has it, else the first source.
    device, dtype : where and in which float type to evaluate (default: the model's).
    loss : per-sample loss ``loss(outputs [B, C], targets [B]) -> [B]``; default cross-entropy (also
        ``[B, T, V]`` outputs with ``[B, T]`` targets: the mean over positions; accuracy likewise).
    batch_size : batch size for tensor data (DataLoaders keep theirs).
    mode : ``"auto"`` | ``"loop"`` | ``"vmap"``.
    chunk : points per vectorised call (memory bound); default 32.
    precision : ``"fp32"`` (default: the forwards in ``dtype``) or ``"bf16"``: the forwards run under
        ``torch.autocast(dtype=torch.bfloat16)`` on the CPU or the GPU, with the weights of the Linear and
        ConvNd layers cast to bf16 once per chunk of points on the loop path (not once per batch); outputs come back in
        ``dtype`` before the loss, and losses and counts are summed in float64. Recorded as
        ``self.precision``, in every `Metrics` and in the attributes of a sweep.
        `modescape.evaluate.check_precision` measures the difference to fp32 on a few points.
    autocast : the lower-level form of ``precision``: a float type for ``torch.autocast`` (``torch.bfloat16``
        is ``precision="bf16"``; ``torch.float16`` is recorded as ``"fp16"``).
    channels_last : 4-D inputs and the private module in channels_last memory format (conv nets, GPU).
    compile : ``True`` or a ``torch.compile`` mode string: on the loop path the per-point forward is
        compiled; with ``mode="vmap"`` the vectorised forward of a whole chunk of points is, one compiled
        call per chunk (the family path then uses that plain loop or vmap).

    ``evaluator(points)`` takes a list of points or a stacked point and returns `Metrics` ([K, M]).
    ``evaluator.evaluate_family(family, coords)`` does the same for ``family(coords)``.
    """

    FAMILY_MODES = FAMILY_MODES

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        metrics: Sequence[str] = ("loss", "accuracy"),
        bn: str = "running",
        bn_data: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        loss: LossFn | None = None,
        batch_size: int | None = None,
        mode: str = "auto",
        chunk: int = 32,
        progress: bool | None = None,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool = False,
        precision: str | None = None,
    ):
        self.bn = check_policy(bn)
        autocast = _autocast_for(precision, autocast)
        if mode not in ("auto", "loop", "vmap"):
            raise UserError(f"unknown mode '{mode}': use auto, loop or vmap")
        for m in metrics:
            if m not in METRICS:
                raise UserError(f"unknown metric '{m}': use any of {', '.join(METRICS)}")
        self.functional = FunctionalModule(model, device, dtype, autocast, channels_last)
        self.device, self.dtype = self.functional.device, self.functional.dtype
        self.module = self.functional.module
        self.bn_modules = self.functional.bn_modules
        self.space = sp.WeightSpace(model)
        self.metrics = tuple(metrics)
        self.loss_fn: LossFn = loss or cross_entropy
        self.mode = mode
        self.chunk = max(1, int(chunk))
        self.mode_chosen: str | None = None if mode == "auto" else mode
        self.progress = progress
        self.autocast = autocast
        self.precision = _precision_name(autocast)
        # the weights autocast would cast to its type in every call: cast once per chunk instead
        self.low_precision_names = frozenset(
            f"{mn}.weight" if mn else "weight"
            for mn, m in self.module.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(m.weight, nn.Parameter)
        ) & set(self.space.names)
        self.channels_last = bool(channels_last)
        self.compile = compile if isinstance(compile, str) else bool(compile)  # a string is torch.compile's mode
        self._compiled_forward: Callable[..., Tensor] | None = None
        self._compiled_chunks: dict[bool, Callable[..., Tensor]] = {}  # by shared buffers: a chunk per call
        self.buffers: sp.Point = sp.to(sp.clone(dict(model.named_buffers())), self.device, self.dtype)
        self.point0: sp.Point = sp.to(self.space.point(model), self.device, self.dtype)

        sources = data if isinstance(data, Mapping) else {"": data}
        self.sources: dict[str, Source] = {
            k: make_source(v, k or "data", batch_size, self.device, self.dtype) for k, v in sources.items()
        }
        if bn_data is None:
            self.bn_source = self.sources["train" if "train" in self.sources else next(iter(self.sources))]
        elif isinstance(bn_data, str):
            if bn_data not in self.sources:
                raise UserError(f"bn_data '{bn_data}' is not one of the data sources {list(self.sources)}")
            self.bn_source = self.sources[bn_data]
        else:
            self.bn_source = make_source(bn_data, "bn_data", batch_size, self.device, self.dtype)
        if self.channels_last:
            for src in list(self.sources.values()) + [self.bn_source]:
                if src.batches is not None:
                    src.batches = [(_channels_last(x), y) for x, y in src.batches]
        self._check_runs()
        self.names: tuple[str, ...] = tuple((f"{k}_{m}" if k else m) for k in self.sources for m in self.metrics)
        self.statistics = Statistics(self.functional, self.bn_source, self.buffers)
        self.family_path = FamilyPath(self)

    def _check_runs(self) -> None:
        """Refuse data that would be averaged into nonsense, and run one forward pass on two samples of each
        materialised source, so that a model and data that do not fit together fail here with one clear
        line instead of deep inside a method: non-finite inputs, and class labels outside the model's
        outputs, are counted and named with their source."""
        for src in self.sources.values():
            if not src.materialised or not src.batches:
                continue
            bad = sum(
                int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())
                for x, _ in src.batches
                if x.is_floating_point()
            )
            if bad:
                raise UserError(
                    f"data '{src.name}' has {bad} of {src.n} inputs with NaN or infinite values: "
                    f"clean or drop them before measuring"
                )
            x = src.batches[0][0][:2]
            try:
                with torch.no_grad():
                    out = self.forward(self.point0, self.buffers, x, bn_train=False)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(
                    f"the model cannot run on data '{src.name}' (inputs of shape {list(x.shape[1:])}): "
                    f"{first}; check that the model and the data belong together "
                    f"(--model / --data)"
                ) from None
            y0 = src.batches[0][1]
            if self.loss_fn is cross_entropy and not y0.is_floating_point() and out.dim() >= 2:
                classes = out.shape[-1]
                wrong = sum(int(((y < 0) | (y >= classes)).sum()) for _, y in src.batches)
                if wrong:
                    raise UserError(
                        f"data '{src.name}' has {wrong} labels outside 0..{classes - 1}, the classes of "
                        f"a model with {classes} outputs: check the data's labels or the model's "
                        f"number of classes"
                    )

    # -- functional pieces shared with the methods (curvature, training of families) -------------
    def flat_binding(self) -> FlatBinding:
        """The `FlatBinding` of this evaluator's model (its parameters as views of one flat vector, in the
        weight space's order), made on first use: the fast path of training through a point."""
        binding = getattr(self, "_flat_binding", None)
        if binding is None:
            binding = FlatBinding(self.functional, list(self.space.names))
            self._flat_binding = binding
        return binding

    def forward(
        self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, bn_train: bool | None = None
    ) -> Tensor:
        """Outputs of the model at ``params`` with ``buffers`` on inputs ``x``; pure and differentiable.

        BatchNorm layers use batch statistics when ``bn_train`` (default: the policy is ``train``),
        else the given running statistics.
        """
        return self.functional(params, buffers, x, self.bn == "train" if bn_train is None else bn_train)

    def point_buffers(self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None) -> sp.Point:
        """The buffers the policy evaluates ``point`` with: recomputed statistics under ``recompute``,
        else ``buffers`` (the point's own, when known) or the model's."""
        if self.bn == "recompute" and self.bn_modules:
            stacked = {k: v.unsqueeze(0) for k, v in point.items()}
            return {k: v[0] for k, v in self.recompute_buffers(stacked, vectorised=False).items()}
        return self.buffers if buffers is None else sp.to(dict(buffers), self.device, self.dtype)

    def recompute_buffers(self, points: Mapping[str, Tensor], vectorised: bool = True) -> sp.Point:
        """Fresh BatchNorm statistics for a stacked point [K, ...]: stacked buffers [K, ...]
        (see `modescape.evaluate.batchnorm.Statistics`)."""
        return self.statistics(points, vectorised)

    def batch_losses(
        self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None, source: str | None = None
    ) -> Iterator[tuple[float, Tensor]]:
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

    def loss(
        self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None, source: str | None = None
    ) -> Tensor:
        """Mean loss over a whole source, differentiable in ``point``."""
        if buffers is None:
            buffers = self.point_buffers(point)
        return cast(Tensor, sum(w * loss for w, loss in self.batch_losses(point, buffers, source)))  # >= 1 batch

    # -- evaluation ---------------------------------------------------------------------------
    def stack_points(self, points: Mapping[str, Tensor] | Iterable[Mapping[str, Tensor]]) -> sp.Point:
        """A list of points or a (stacked) point -> one stacked point on the evaluator's device and dtype."""
        if isinstance(points, Mapping):
            self.space.check(points, what="point", stacked=self.space.is_stacked(points))
            stacked = points if self.space.is_stacked(points) else {k: v.unsqueeze(0) for k, v in points.items()}
        else:
            points = list(points)
            for i, p in enumerate(points):
                self.space.check(p, what=f"point {i}")
            stacked = sp.stack(points)
        return {n: stacked[n].to(device=self.device, dtype=self.dtype) for n in self.space.names}

    def measure(
        self, params: sp.Point, buffers: sp.Point | None, vectorised: bool, outputs: Callable[..., Tensor] | None = None
    ) -> Tensor:
        """[K, M] metric values at the stacked point ``params`` (one chunk).

        ``buffers``: stacked per-point buffers, or None for the model's (the policy may replace them);
        ``outputs(params, buffers, x, source_name, batch_index) -> [K, B, C]`` replaces the plain forward
        when given (the family path's shared first layer).
        """
        k = next(iter(params.values())).shape[0]
        if not vectorised:  # under vmap, autocast does not reach every batched kernel (conv): it casts there
            params = self.cast_for_forward(params)
        if self.bn == "recompute" and self.bn_modules:
            buffers = self.recompute_buffers(params, vectorised)
        shared = buffers is None
        fwd, chunk_fn = self.forward, None
        if self.compile:
            if vectorised:
                chunk_fn = self._compiled_chunk(shared)
            else:
                fwd = self._compiled()
        bufs = self.buffers if buffers is None else buffers
        cols = []
        with torch.no_grad():
            for src in self.sources.values():
                loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
                correct = torch.zeros(k, dtype=torch.float64, device=self.device)
                for bi, (x, y) in enumerate(src):
                    if outputs is not None:
                        out = outputs(params, buffers, x, src.name, bi)
                    elif chunk_fn is not None:
                        out = chunk_fn(params, bufs, x)  # [K, B, C], one compiled call for the chunk
                    else:
                        out = cast(Tensor, map_points(fwd, params, bufs, x, vectorised, shared))  # [K, B, C]
                    b = out.shape[1]
                    per = self.loss_fn(out.reshape(k * b, *out.shape[2:]), y.repeat(k, *[1] * (y.dim() - 1))).reshape(
                        k, b
                    )
                    loss_sum += per.double().sum(1)
                    if "accuracy" in self.metrics or "error" in self.metrics:
                        hit = (out.argmax(-1) == y).double()  # [K, B], or [K, B, T] for sequence targets
                        if hit.dim() > 2:  # a sample's accuracy: the fraction of its positions right
                            hit = hit.flatten(2).mean(2)
                        correct += hit.sum(1)
                for m in self.metrics:
                    if m == "loss":
                        cols.append(loss_sum / src.n)
                    elif m == "accuracy":
                        cols.append(correct / src.n)
                    else:
                        cols.append(1.0 - correct / src.n)
        return torch.stack(cols, dim=1).cpu()

    def cast_for_forward(self, params: sp.Point) -> sp.Point:
        """``params`` with the Linear/ConvNd weights in the autocast type (bf16), when there is one: the
        same values autocast would make in every forward, made once for a chunk of points."""
        if self.autocast is None or not self.low_precision_names:
            return params
        return {n: t.to(self.autocast) if n in self.low_precision_names else t for n, t in params.items()}

    @contextlib.contextmanager
    def at_precision(self, precision: str) -> Iterator[Evaluator]:
        """Inside: this evaluator's forwards at ``precision`` (``"fp32"`` or ``"bf16"``); the same data,
        BN policy and evaluation modes. Caches that depend on the precision (the family path's first-layer
        outputs, a compiled forward) are set aside and restored."""
        saved = (self.autocast, self.precision, self.functional.autocast, self._compiled_forward, self._compiled_chunks)
        autocast = _autocast_for(precision, None)
        self.family_path.clear_cache()
        try:
            self.autocast = self.functional.autocast = autocast
            self.precision = _precision_name(autocast)
            self._compiled_forward, self._compiled_chunks = None, {}
            yield self
        finally:
            (self.autocast, self.precision, self.functional.autocast, self._compiled_forward, self._compiled_chunks) = (
                saved
            )
            self.family_path.clear_cache()

    def choose_mode(self, params: sp.Point, buffers: sp.Point | None = None) -> str:
        """Time loop and vmap on a few points and part of one batch; keep and return the faster."""
        if self.mode_chosen is not None:
            return self.mode_chosen
        # a small probe (up to 8 points, up to 512 inputs) keeps the one-off cost low
        k = min(self.chunk, 8, next(iter(params.values())).shape[0])
        sub = {n: t[:k] for n, t in params.items()}
        subb = self.buffers if buffers is None else {n: t[:k] for n, t in buffers.items()}
        x = next(iter(next(iter(self.sources.values()))))[0][:512]
        times = {}
        with torch.no_grad():
            for mode in ("loop", "vmap"):
                best = float("inf")
                for _ in range(2):  # the first run warms up
                    self.sync()
                    t0 = time.perf_counter()
                    map_points(self.forward, sub, subb, x, mode == "vmap", buffers is None)
                    self.sync()
                    best = min(best, time.perf_counter() - t0)
                times[mode] = best
        self.mode_timings = times
        self.mode_chosen = "vmap" if times["vmap"] < times["loop"] else "loop"
        return self.mode_chosen

    def sync(self) -> None:
        """Wait for the device (for timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(
        self,
        points: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
        buffers: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor] | None = None,
        progress: bool | None = None,
        description: str = "evaluating",
    ) -> Metrics:
        """Evaluate points: a list of K points or a stacked point. Returns `Metrics` ([K, M]).

        ``buffers``: per-point buffers (a list, or stacked) for the ``running`` policy; default the
        model's own.
        """
        params = self.stack_points(points)
        k = next(iter(params.values())).shape[0]
        bufs: sp.Point | None = None
        if buffers is not None and self.buffers:
            bufs = dict(buffers) if isinstance(buffers, Mapping) else sp.stack(list(buffers))
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
                p = {n: t[i : i + self.chunk] for n, t in params.items()}
                b = None if bufs is None else {n: t[i : i + self.chunk] for n, t in bufs.items()}
                rows.append(self.measure(p, b, mode == "vmap" and p[self.space.names[0]].shape[0] > 1))
                advance(rows[-1].shape[0])
        return Metrics(torch.cat(rows), self.names, self.bn, mode, self.precision)

    def _compiled(self) -> Callable[..., Tensor]:
        if self._compiled_forward is None:
            mode = self.compile if isinstance(self.compile, str) else None
            fn = torch.compile(lambda p, b, x: self.forward(p, b, x), dynamic=False, mode=mode)
            # a copy of the outputs: CUDA-graph modes reuse their output memory on the next call
            self._compiled_forward = (lambda p, b, x: fn(p, b, x).clone()) if mode else fn
        return self._compiled_forward

    def _compiled_chunk(self, shared: bool) -> Callable[..., Tensor]:
        """The vectorised forward of a chunk of points (vmap over ``forward``), compiled: one call a chunk."""
        if shared not in self._compiled_chunks:
            mode = self.compile if isinstance(self.compile, str) else None
            fn = torch.compile(
                lambda p, b, x: cast(Tensor, map_points(self.forward, p, b, x, True, shared)), dynamic=False, mode=mode
            )
            self._compiled_chunks[shared] = (lambda p, b, x: fn(p, b, x).clone()) if mode else fn
        return self._compiled_chunks[shared]

    # -- families (see family_path.py) --------------------------------------------------------
    @property
    def family_mode(self) -> str | None:
        """The family path's mode (one of ``FamilyPath.MODES``) once chosen; set it to fix the path."""
        return self.family_path.mode

    @family_mode.setter
    def family_mode(self, mode: str | None) -> None:
        self.family_path.mode = mode

    @property
    def family_mode_timings(self) -> dict[str, float]:
        return self.family_path.timings

    def choose_family_mode(self, family: Family, coords: Tensor) -> str:
        return self.family_path.choose(family, coords)

    def first_layer_split(self) -> tuple[nn.Module, str, nn.Module, nn.Module] | None:
        return self.family_path.first_layer_split()

    def evaluate_family(
        self, family: Family, coords: Any, progress: bool | None = None, description: str = "evaluating"
    ) -> Metrics:
        """Metrics ([K, M]) at ``family(coords)`` (coords [K, dim]): like ``self(family(coords))`` but
        chunk by chunk, through the shared first layer of a linear family when that measures faster, and
        with the family's own buffers at each point under ``bn="running"`` when it carries them.
        ``self.family_mode`` records the path used."""
        return self.family_path.evaluate(family, coords, progress, description)


def _autocast_for(precision: str | None, autocast: torch.dtype | None) -> torch.dtype | None:
    """The autocast type for ``precision`` (checked), consistent with an explicit ``autocast``."""
    if precision is None:
        return autocast
    check_precision(precision)
    want = torch.bfloat16 if precision == "bf16" else None
    if autocast is not None and autocast != want:
        raise UserError(f"precision='{precision}' and autocast={autocast} disagree: give one of them")
    return want


def _precision_name(autocast: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, str(autocast))


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


__all__ = ["Evaluator", "METRICS", "Metrics", "cross_entropy"]

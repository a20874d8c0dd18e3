"""Data sources: a dataset as the evaluator sees it, batches on the device.

``(X, y)`` tensors, a ``Dataset``, a ``DataLoader`` or any iterable of ``(x, y)`` batches becomes a
`Source`: *materialised* (one pass of the data, in its order, kept on the device as a list of batches)
when it fits the memory budget, else *streamed* (read batch by batch on every pass). The sample count
``n`` is always known: a streamed source is counted to its end in the first pass (a dataset's length
is not trusted: a sampler or ``drop_last`` can make a loader yield fewer samples). A one-shot iterator
(a generator) can be read only once, so it is always materialised; one that does not fit is refused with
what to pass instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError


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
        assert self.loader is not None  # a source is materialised (batches) or streamed (loader)
        for x, y in self.loader:  # streamed: too large to keep on the device
            yield prepare(x, self.device, self.dtype), y.to(self.device)

    @property
    def materialised(self) -> bool:
        return self.batches is not None


def prepare(x: Tensor, device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:
    """Inputs on the device, floating inputs in the evaluation dtype."""
    x = x.to(device)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return x


def default_budget(device: torch.device) -> int:
    """Bytes of data a source may hold on the device: 40% of the free GPU memory, 8 GiB on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 8 * 2**30


def _batch(item: Any, name: str) -> tuple[Tensor, Tensor]:
    if not (
        isinstance(item, (tuple, list))
        and len(item) >= 2
        and isinstance(item[0], Tensor)
        and isinstance(item[1], Tensor)
    ):
        raise UserError(f"data '{name}' must yield (inputs, targets) batches of tensors; got {type(item).__name__}")
    return item[0], item[1]


def make_source(
    data: Any,
    name: str = "data",
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    budget_bytes: int | None = None,
) -> Source:
    """Turn ``(X, y)``, a Dataset, a DataLoader or an iterable of batches into a `Source`.

    Tensors are cut into batches of ``batch_size`` (default 1024) in order; a DataLoader or iterable
    keeps its own batches (one pass, in its order). Materialised when the data fits ``budget_bytes``
    (default `default_budget`), else streamed.
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
        if x.shape[0] == 0:
            raise UserError(f"data '{name}' is empty")
        bs = batch_size or 1024
        batches = [(prepare(x[i : i + bs], device, dtype), y[i : i + bs].to(device)) for i in range(0, x.shape[0], bs)]
        return Source(name, int(x.shape[0]), batches=batches, device=device, dtype=dtype)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size or 1024, shuffle=False)
    if not hasattr(data, "__iter__"):
        raise UserError(
            f"data '{name}' must be (X, y) tensors, a Dataset, a DataLoader or an iterable of (x, y) "
            f"batches; got {type(data).__name__}"
        )
    one_shot = iter(data) is data  # a generator or iterator: its batches cannot be read again
    budget = default_budget(device) if budget_bytes is None else budget_bytes
    batches, n, size = [], 0, 0
    it = iter(data)
    for item in it:
        x, y = _batch(item, name)
        size += x.numel() * x.element_size() + y.numel() * y.element_size()
        if size > budget and not one_shot:
            return Source(name, _count(n + x.shape[0], it, name), loader=data, device=device, dtype=dtype)
        if size > budget:
            raise UserError(
                f"data '{name}' is a one-shot iterator (e.g. a generator) larger than the memory budget "
                f"({budget / 2**30:.1f} GiB): pass a DataLoader or another iterable that can be read "
                f"again, so that it can be streamed"
            )
        batches.append((prepare(x, device, dtype), y.to(device)))
        n += x.shape[0]
    if n == 0:
        raise UserError(f"data '{name}' is empty")
    return Source(name, n, batches=batches, device=device, dtype=dtype)


def _count(seen: int, rest: Iterator, name: str) -> int:
    """The number of samples of a streamed source: the first pass, counted to its end."""
    for item in rest:
        seen += _batch(item, name)[0].shape[0]
    return seen


__all__ = ["Source", "default_budget", "make_source", "prepare"]

"""Dataset zoo: small in-memory classification datasets for loss-landscape experiments.

Landscape measurements evaluate the loss many times on a fixed set of samples, so every dataset
here is loaded whole into memory as float32 inputs and int64 labels (images as [N, C, H, W]) and
split deterministically from its seeds. This file holds the synthetic and scikit-learn datasets, the
registry (`load_dataset`) and the conversion of users' data (`as_split`); the datasets read from the
user's files (MNIST, CIFAR-10) are in `files`, the sequence tasks made from Python itself
(``modular-add``, ``char-lm``) in `sequences`. Nothing is downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modescape.errors import UserError
from modescape.zoo.models import coerce_args

__all__ = [
    "DataSplit",
    "as_split",
    "corpus_text",
    "dataset_names",
    "load_dataset",
    "read_idx_images",
    "read_idx_labels",
    "train_test",
]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DataSplit:
    """A train/test split held in memory: X float32 (int64 token ids for the sequence tasks), y int64
    class indices ([N], or [N, T] next-token targets for ``char-lm``)."""

    name: str
    train: Pair
    test: Pair
    input_shape: tuple[int, ...]  # shape of one sample, e.g. (1, 8, 8) or (2,)
    num_classes: int
    meta: dict  # JSON-able: name, args, root, split_seed, n_train, n_test


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def tensors_of(x: np.ndarray, y: np.ndarray) -> Pair:
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def _stratified_split(x: np.ndarray, y: np.ndarray, seed: int, what: str, test_size: float = 0.2) -> tuple[Pair, Pair]:
    """Seeded stratified split into train and test pairs."""
    from sklearn.model_selection import train_test_split  # deferred: slow to import

    try:
        train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    except ValueError as e:
        raise UserError(f"cannot split {what} into train/test ({e}); use more samples") from None
    return tensors_of(x[train_idx], y[train_idx]), tensors_of(x[test_idx], y[test_idx])


def subset(pair: Pair, n: int | None, gen: torch.Generator, what: str, arg: str) -> Pair:
    """A seeded random subset of `n` samples (kept in their original order), or all if n is None."""
    x, y = pair
    if n is None:
        return pair
    if not 1 <= n <= len(y):
        raise UserError(f"{arg} for {what} must be between 1 and {len(y)}, got {n}")
    idx = torch.randperm(len(y), generator=gen)[:n].sort().values
    return x[idx], y[idx]


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


# ----------------------------------------------------------------------------------------------
# digits, spirals, blobs, random-cifar: generated or bundled with scikit-learn
# ----------------------------------------------------------------------------------------------


def _digits(root: str | None, *, split_seed: int = 0) -> tuple[Pair, Pair, int]:
    """scikit-learn's 8x8 digits, scaled to [0, 1] then standardised with train mean and std."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    (xtr, ytr), (xte, yte) = _stratified_split(x, y, split_seed, "digits")
    mean, std = xtr.mean(), xtr.std()
    return ((xtr - mean) / std, ytr), ((xte - mean) / std, yte), 10


def _spirals(root: str | None, *, n: int = 1000, noise: float = 0.2, split_seed: int = 0) -> tuple[Pair, Pair, int]:
    """Two interleaved spirals of 1.25 turns in the plane, radius 0.5 to 3, plus Gaussian noise."""
    require(n >= 10, f"spirals needs n >= 10 samples, got {n}")
    require(noise >= 0, f"spirals noise must be >= 0, got {noise}")
    rng = np.random.default_rng(split_seed)
    y = np.arange(n) % 2
    theta = np.pi / 2 + np.sqrt(rng.uniform(size=n)) * 2.5 * np.pi
    radius = theta / np.pi
    x = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    x[y == 1] *= -1  # the second arm is the first one rotated by half a turn
    x += noise * rng.standard_normal(x.shape)
    train, test = _stratified_split(x, y, split_seed, "spirals")
    return train, test, 2


def _blobs(
    root: str | None,
    *,
    n: int = 1000,
    centers: int = 3,
    dim: int = 2,
    std: float = 1.0,
    split_seed: int = 0,
) -> tuple[Pair, Pair, int]:
    """Isotropic Gaussian blobs (scikit-learn's make_blobs), one class per centre."""
    require(centers >= 2, f"blobs needs centers >= 2, got {centers}")
    require(dim >= 1, f"blobs needs dim >= 1, got {dim}")
    require(std > 0, f"blobs std must be > 0, got {std}")
    require(n >= 5 * centers, f"blobs needs n >= 5 * centers = {5 * centers}, got {n}")
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, centers=centers, n_features=dim, cluster_std=std, random_state=split_seed)
    train, test = _stratified_split(x, y, split_seed, "blobs")
    return train, test, centers


def _random_cifar(
    root: str | None, *, n_train: int = 1000, n_test: int = 200, split_seed: int = 0
) -> tuple[Pair, Pair, int]:
    """Standard-normal CIFAR-shaped inputs [N, 3, 32, 32] with uniform random labels in 10 classes.

    For benchmarks and smoke tests where the real data is not at hand.
    """
    require(n_train >= 1 and n_test >= 1, "random-cifar needs n_train >= 1 and n_test >= 1")
    gen = torch.Generator().manual_seed(split_seed)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n_train + n_test,), generator=gen)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), 10


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

from modescape.zoo.files import cifar10_files, mnist_files, read_idx_images, read_idx_labels  # noqa: E402
from modescape.zoo.sequences import char_lm, corpus_text, modular_add  # noqa: E402

_LOADERS: dict[str, Callable[..., tuple[Pair, Pair, int]]] = {
    "digits": _digits,
    "mnist": mnist_files,
    "cifar10": cifar10_files,
    "spirals": _spirals,
    "blobs": _blobs,
    "random-cifar": _random_cifar,
    "modular-add": modular_add,
    "char-lm": char_lm,
}


def dataset_names() -> list[str]:
    """Names accepted by `load_dataset`, sorted."""
    return sorted(_LOADERS)


def load_dataset(name: str = "digits", root: str | None = None, **args: Any) -> DataSplit:
    """Load dataset `name` into memory; `root` is the data folder for file-based datasets.

    Arguments (e.g. ``n_train=1000``, ``split_seed=1``) may be given as strings, as from the
    command line. The result is a deterministic function of the name, files and arguments.
    """
    if name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    loader = _LOADERS[name]
    clean = coerce_args(f"dataset {name!r}", loader, args)
    root_str = None if root is None else str(root)
    train, test, num_classes = loader(root_str, **clean)
    defaults = inspect.signature(loader).parameters
    meta = {
        "name": name,
        "args": clean,
        "root": root_str,
        "split_seed": clean.get("split_seed", defaults["split_seed"].default),
        "n_train": len(train[1]),
        "n_test": len(test[1]),
    }
    if name == "char-lm":  # a module's source may change between versions: record which text it was
        import hashlib

        meta["text_sha256"] = hashlib.sha256(
            corpus_text(clean.get("text", defaults["text"].default)).encode()
        ).hexdigest()[:16]
    return DataSplit(
        name=name,
        train=train,
        test=test,
        input_shape=tuple(train[0].shape[1:]),
        num_classes=num_classes,
        meta=meta,
    )


def as_split(obj: Any, name: str = "custom") -> DataSplit:
    """Normalise what a user's data factory returns into a `DataSplit`.

    Accepts a `DataSplit` (returned unchanged), a dict ``{"train": part, "test": part}`` or a
    pair ``(train_part, test_part)``, where each part is an ``(X, y)`` pair of tensors/arrays or
    a (map-style or iterable) dataset of ``(x, y)`` samples. The number of classes is max label + 1.
    """
    if isinstance(obj, DataSplit):
        return obj
    if isinstance(obj, dict):
        if set(obj) != {"train", "test"}:
            raise UserError(
                f"data factory for {name!r} returned a dict with keys {sorted(map(str, obj))}; "
                "expected exactly 'train' and 'test'"
            )
        parts = obj["train"], obj["test"]
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        parts = obj[0], obj[1]
    else:
        raise UserError(
            f"data factory for {name!r} returned {type(obj).__name__}; return a DataSplit, "
            "{'train': (X, y), 'test': (X, y)} or ((X_train, y_train), (X_test, y_test))"
        )
    train = _as_pair(parts[0], f"{name!r} train")
    test = _as_pair(parts[1], f"{name!r} test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise UserError(
            f"{name!r} train and test samples differ in shape ({tuple(train[0].shape[1:])} vs "
            f"{tuple(test[0].shape[1:])}); make them the same"
        )
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    meta: dict[str, Any] = {
        "name": name,
        "args": {},
        "root": None,
        "split_seed": None,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
    }
    return DataSplit(name, train, test, tuple(train[0].shape[1:]), num_classes, meta)


def train_test(data: Any) -> tuple[Pair, Pair | None]:
    """``(train, test or None)`` as (X, y) tensors, dtypes kept, from a `DataSplit` (or anything with
    ``.train`` and ``.test``), a dict with a ``"train"`` (and optionally ``"test"``) entry, or (X, y)."""
    if hasattr(data, "train") and hasattr(data, "test"):
        return tuple(data.train), tuple(data.test)
    if isinstance(data, dict):
        if "train" not in data:
            raise UserError(f"data dict needs a 'train' entry; has {list(data)}")
        return tuple(data["train"]), (tuple(data["test"]) if "test" in data else None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return (data[0], data[1]), None
    raise UserError("data must be a zoo DataSplit, a dict {'train': (X, y), 'test': (X, y)} or (X, y) tensors")


def _as_pair(part: Any, what: str) -> Pair:
    """An (X, y) pair or a dataset of (x, y) samples as (float32 X, int64 y) tensors."""
    if isinstance(part, (torch.Tensor, np.ndarray)):
        raise UserError(f"{what} is a bare array; give an (X, y) pair or a dataset of samples")
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = part
    elif hasattr(part, "__iter__") or hasattr(part, "__getitem__"):
        if hasattr(part, "__getitem__") and hasattr(part, "__len__"):
            samples = [part[i] for i in range(len(part))]  # map-style dataset
        else:
            samples = list(part)  # iterable dataset
        if not samples:
            raise UserError(f"{what} dataset is empty; it needs at least one sample")
        try:
            x = torch.stack([torch.as_tensor(s[0]) for s in samples])
            y = torch.as_tensor([int(s[1]) for s in samples])
        except (TypeError, ValueError, IndexError, RuntimeError) as e:
            raise UserError(
                f"{what} dataset must yield (x, y) samples of equal shape with integer labels ({e})"
            ) from None
    else:
        raise UserError(f"{what} must be an (X, y) pair or a dataset, got {type(part).__name__}")
    try:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} X and y must be arrays or tensors ({e})") from None
    x = x.detach().to(torch.float32)
    y = y.detach()
    if y.dtype.is_floating_point:
        if not torch.equal(y, y.round()):
            raise UserError(f"{what} labels must be integer class indices, got fractional values")
    elif y.dtype == torch.bool or y.dtype.is_complex:
        raise UserError(f"{what} labels must be integer class indices, got {y.dtype}")
    y = y.to(torch.int64)
    if y.ndim != 1 or x.ndim < 2 or len(x) != len(y) or len(y) == 0:
        raise UserError(
            f"{what} needs X of shape [N, ...] and y of shape [N] with N >= 1, got X "
            f"{tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if y.min() < 0:
        raise UserError(f"{what} labels must be >= 0 (class indices), got {int(y.min())}")
    return x.contiguous(), y.contiguous()

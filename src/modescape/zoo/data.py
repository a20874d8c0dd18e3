"""Dataset zoo: small in-memory classification datasets for loss-landscape experiments.

Landscape measurements evaluate the loss many times on a fixed set of samples, so every dataset
here is loaded whole into memory as float32 inputs and int64 labels (images as [N, C, H, W]) and
split deterministically from its seeds. Two sequence tasks are made here from nothing but Python
itself: ``modular-add`` (a + b mod p, the grokking task) and ``char-lm`` (next-character prediction
over the Zen of Python or a standard-library module's source); their inputs are int64 token ids.
Real data (MNIST, CIFAR-10) is read from the original
files in a folder the user supplies; nothing is downloaded. CIFAR-10 batches are pickles, so they
are read with a restricted unpickler that can build numpy arrays and nothing else.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import inspect
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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


def _tensors(x: np.ndarray, y: np.ndarray) -> Pair:
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def _stratified_split(
    x: np.ndarray, y: np.ndarray, seed: int, what: str, test_size: float = 0.2
) -> tuple[Pair, Pair]:
    """Seeded stratified split into train and test pairs."""
    from sklearn.model_selection import train_test_split  # deferred: slow to import

    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed
        )
    except ValueError as e:
        raise UserError(f"cannot split {what} into train/test ({e}); use more samples") from None
    return _tensors(x[train_idx], y[train_idx]), _tensors(x[test_idx], y[test_idx])


def _subset(pair: Pair, n: int | None, gen: torch.Generator, what: str, arg: str) -> Pair:
    """A seeded random subset of `n` samples (kept in their original order), or all if n is None."""
    x, y = pair
    if n is None:
        return pair
    if not 1 <= n <= len(y):
        raise UserError(f"{arg} for {what} must be between 1 and {len(y)}, got {n}")
    idx = torch.randperm(len(y), generator=gen)[:n].sort().values
    return x[idx], y[idx]


def _require(condition: bool, message: str) -> None:
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


def _spirals(
    root: str | None, *, n: int = 1000, noise: float = 0.2, split_seed: int = 0
) -> tuple[Pair, Pair, int]:
    """Two interleaved spirals of 1.25 turns in the plane, radius 0.5 to 3, plus Gaussian noise."""
    _require(n >= 10, f"spirals needs n >= 10 samples, got {n}")
    _require(noise >= 0, f"spirals noise must be >= 0, got {noise}")
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
    _require(centers >= 2, f"blobs needs centers >= 2, got {centers}")
    _require(dim >= 1, f"blobs needs dim >= 1, got {dim}")
    _require(std > 0, f"blobs std must be > 0, got {std}")
    _require(n >= 5 * centers, f"blobs needs n >= 5 * centers = {5 * centers}, got {n}")
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=n, centers=centers, n_features=dim, cluster_std=std, random_state=split_seed
    )
    train, test = _stratified_split(x, y, split_seed, "blobs")
    return train, test, centers


def _random_cifar(
    root: str | None, *, n_train: int = 1000, n_test: int = 200, split_seed: int = 0
) -> tuple[Pair, Pair, int]:
    """Standard-normal CIFAR-shaped inputs [N, 3, 32, 32] with uniform random labels in 10 classes.

    For benchmarks and smoke tests where the real data is not at hand.
    """
    _require(n_train >= 1 and n_test >= 1, "random-cifar needs n_train >= 1 and n_test >= 1")
    gen = torch.Generator().manual_seed(split_seed)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n_train + n_test,), generator=gen)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), 10


# ----------------------------------------------------------------------------------------------
# MNIST: the original IDX files
# ----------------------------------------------------------------------------------------------

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} ({e}); re-download the original file") from None


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX3 image file (gzipped if the name ends in .gz) as uint8 [N, rows, cols]."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 16:
        raise UserError(f"{path} is too short to be an IDX image file; re-download it")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != _IDX_IMAGES_MAGIC:
        raise UserError(
            f"{path} is not an IDX image file (magic number {magic}, expected "
            f"{_IDX_IMAGES_MAGIC}); check the file names and re-download it"
        )
    if len(data) - 16 != n * rows * cols:
        raise UserError(
            f"{path} header promises {n} images of {rows}x{cols} but the file holds "
            f"{len(data) - 16} bytes of pixels; the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX1 label file (gzipped if the name ends in .gz) as uint8 [N]."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 8:
        raise UserError(f"{path} is too short to be an IDX label file; re-download it")
    magic, n = struct.unpack(">II", data[:8])
    if magic != _IDX_LABELS_MAGIC:
        raise UserError(
            f"{path} is not an IDX label file (magic number {magic}, expected "
            f"{_IDX_LABELS_MAGIC}); check the file names and re-download it"
        )
    if len(data) - 8 != n:
        raise UserError(
            f"{path} header promises {n} labels but the file holds {len(data) - 8}; "
            "the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=8).copy()


def _find_mnist_file(folder: Path, stem: str) -> Path:
    for directory in (folder, folder / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise UserError(
        f"MNIST file {stem}[.gz] not found in {folder}; pass --data-root pointing at the folder "
        "with the four original IDX files (train-images-idx3-ubyte.gz, ...)"
    )


def _data_folder(name: str, root: str | None, expected: str) -> Path:
    if root is None:
        raise UserError(
            f"dataset {name!r} reads local files: pass --data-root (root=...) pointing at the "
            f"folder with {expected}"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"data folder {folder} for dataset {name!r} does not exist; pass --data-root "
            f"pointing at the folder with {expected}"
        )
    return folder


def _mnist(
    root: str | None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    split_seed: int = 0,
) -> tuple[Pair, Pair, int]:
    """MNIST from the original IDX files, normalised with the usual mean 0.1307 and std 0.3081."""
    folder = _data_folder("mnist", root, "the MNIST IDX files")
    paths = {key: _find_mnist_file(folder, stem) for key, stem in _MNIST_FILES.items()}
    pairs = []
    for part in ("train", "test"):
        images = read_idx_images(paths[f"{part}_images"])
        labels = read_idx_labels(paths[f"{part}_labels"])
        if len(images) != len(labels):
            raise UserError(
                f"{paths[f'{part}_images']} holds {len(images)} images but "
                f"{paths[f'{part}_labels']} holds {len(labels)} labels; re-download both files"
            )
        if labels.size and labels.max() > 9:
            raise UserError(f"{paths[f'{part}_labels']} has labels above 9; it is not MNIST")
        x = (images.astype(np.float32)[:, None] / 255.0 - _MNIST_MEAN) / _MNIST_STD
        pairs.append(_tensors(x, labels))
    train, test = pairs
    if train[0].shape[1:] != test[0].shape[1:]:
        raise UserError(
            f"MNIST train and test images in {folder} differ in size "
            f"({tuple(train[0].shape[2:])} vs {tuple(test[0].shape[2:])}); re-download them"
        )
    gen = torch.Generator().manual_seed(split_seed)
    train = _subset(train, n_train, gen, "mnist", "n_train")
    test = _subset(test, n_test, gen, "mnist", "n_test")
    return train, test, 10


# ----------------------------------------------------------------------------------------------
# CIFAR-10: the "python version" pickled batches, read with a restricted unpickler
# ----------------------------------------------------------------------------------------------

_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"
_CIFAR_DIR = "cifar-10-batches-py"


def _numpy_module(name: str) -> Any:
    """numpy's internal `name` module: numpy._core.<name> on numpy 2, numpy.core.<name> on 1.x."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _safe_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    # Pickles name numpy's internals by the path of the numpy version that wrote them.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        # Pickle protocol 5 (Python's default) stores arrays through numeric._frombuffer.
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, lists, dicts, bytes and numbers, and nothing else.

    A pickle can call any importable function while loading; refusing every global outside this
    short list means a tampered "batch" cannot run code.
    """

    _allowed = _safe_globals()

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"cifar10 loader refuses to unpickle {module}.{name} in {self._path}: this file "
                "is not a plain CIFAR-10 batch; use the original 'python version' files"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(
            f"{self._path} uses pickle persistent ids: this file is not a plain CIFAR-10 batch"
        )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (uint8 [N, 3, 32, 32], int64 labels [N])."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # anything else the pickle machinery raises on a damaged file
        raise UserError(f"cannot read CIFAR-10 batch {path} ({e}); re-download it") from None

    def field(key: str) -> Any:
        if isinstance(batch, dict):
            for k in (key.encode(), key):
                if k in batch:
                    return batch[k]
        raise UserError(f"{path} has no {key!r} entry: this file is not a plain CIFAR-10 batch")

    data, labels = field("data"), field("labels")
    if not (isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3 * 32 * 32):
        raise UserError(f"{path}: 'data' is not a [N, 3072] array; this is not a CIFAR-10 batch")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: 'labels' do not match 'data' (expected {len(data)} integers)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: labels outside 0..9; this is not a CIFAR-10 batch")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_pair(paths: Sequence[Path]) -> Pair:
    batches = [_read_cifar_batch(p) for p in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    x = (images.astype(np.float32) / 255.0 - _CIFAR_MEAN[:, None, None]) / _CIFAR_STD[:, None, None]
    return _tensors(x, labels)


def _cifar10(
    root: str | None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    split_seed: int = 0,
) -> tuple[Pair, Pair, int]:
    """CIFAR-10 from the "python version" batches, normalised per channel."""
    expected = f"the CIFAR-10 python batches ({_CIFAR_DIR} or its parent)"
    folder = _data_folder("cifar10", root, expected)
    if not (folder / _CIFAR_TEST).is_file() and (folder / _CIFAR_DIR).is_dir():
        folder = folder / _CIFAR_DIR
    missing = [n for n in [*_CIFAR_TRAIN, _CIFAR_TEST] if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 files {', '.join(missing)} not found in {folder}; pass --data-root "
            f"pointing at {expected}"
        )
    train = _cifar_pair([folder / n for n in _CIFAR_TRAIN])
    test = _cifar_pair([folder / _CIFAR_TEST])
    gen = torch.Generator().manual_seed(split_seed)
    train = _subset(train, n_train, gen, "cifar10", "n_train")
    test = _subset(test, n_test, gen, "cifar10", "n_test")
    return train, test, 10


# ----------------------------------------------------------------------------------------------
# Sequence tasks made here: modular addition (grokking) and a character-level language model
# ----------------------------------------------------------------------------------------------


def _modular_add(
    root: str | None, *, p: int = 97, train_fraction: float = 0.3, split_seed: int = 0
) -> tuple[Pair, Pair, int]:
    """Every equation ``a + b = c (mod p)`` as the token sequence ``[a, b, =]`` with label ``c``.

    The task of Power et al. (2022), "Grokking: generalization beyond overfitting on small algorithmic
    datasets": tokens 0..p-1 are the numbers and token p is ``=``; a seeded random ``train_fraction``
    of the p^2 pairs trains, the rest tests. There are p + 1 classes (the ``=`` token is never a
    target), so inputs and outputs share one vocabulary and a transformer's head can be tied to its
    embedding. Weight decay, the other knob of grokking, is a training argument (``--wd``).
    """
    _require(p >= 2, f"modular-add needs p >= 2, got {p}")
    _require(0 < train_fraction < 1, f"modular-add train_fraction must be in (0, 1), got {train_fraction}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    y = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(split_seed))
    n_train = int(round(train_fraction * p * p))
    _require(1 <= n_train < p * p, f"modular-add train_fraction {train_fraction} leaves an empty split for p={p}")
    tr, te = order[:n_train].sort().values, order[n_train:].sort().values
    return (x[tr], y[tr]), (x[te], y[te]), p + 1


def _zen_of_python() -> str:
    """The Zen of Python, from the standard library's ``this`` module (rot13-encoded there), read with
    ``ast`` rather than imported (importing ``this`` prints it)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("this")
    if spec is None or spec.origin is None:
        raise UserError("the standard library module 'this' is missing: pass text=module:NAME instead")
    tree = ast.parse(Path(spec.origin).read_text())
    encoded = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "s")
    return codecs.decode(encoded, "rot13")


def corpus_text(text: str) -> str:
    """The text of a character-level corpus: ``"zen"`` (the Zen of Python, from the standard library;
    identical in every Python 3 release) or ``"module:NAME"`` (the source of an importable pure-Python
    module, e.g. ``module:textwrap``: deterministic for one Python or package version; the dataset's
    meta records its hash)."""
    if text == "zen":
        return _zen_of_python()
    if text.startswith("module:"):
        import importlib.util

        name = text.split(":", 1)[1]
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise UserError(f"char-lm text {text!r}: no pure-Python module {name!r} to read; use text=zen or "
                            "text=module:NAME with a module such as textwrap")
        return Path(spec.origin).read_text(encoding="utf-8")
    raise UserError(f"unknown char-lm text {text!r}: use zen or module:NAME (e.g. module:textwrap)")


def _char_lm(
    root: str | None,
    *,
    text: str = "zen",
    length: int = 32,
    stride: int = 1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> tuple[Pair, Pair, int]:
    """Next-character prediction over a text that ships with Python (see `corpus_text`).

    The characters get ids in sorted order (the classes); samples are windows of ``length`` ids every
    ``stride`` characters, with targets the same windows shifted by one ([N, T] both, int64). The first
    ``1 - test_fraction`` of the text gives the training windows and the rest the test windows, so no
    test character is seen in training. ``split_seed`` is unused (the split is by position).
    """
    _require(length >= 1, f"char-lm length must be >= 1, got {length}")
    _require(stride >= 1, f"char-lm stride must be >= 1, got {stride}")
    _require(0 < test_fraction < 1, f"char-lm test_fraction must be in (0, 1), got {test_fraction}")
    corpus = corpus_text(text)
    chars = sorted(set(corpus))
    ids = torch.tensor([chars.index(c) for c in corpus], dtype=torch.int64)
    cut = int(len(ids) * (1 - test_fraction))

    def windows(part: torch.Tensor) -> Pair:
        starts = torch.arange(0, len(part) - length, stride)
        _require(len(starts) >= 1, f"char-lm text {text!r} is too short for windows of {length} characters")
        idx = starts[:, None] + torch.arange(length + 1)
        seq = part[idx]
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    return windows(ids[:cut]), windows(ids[cut:]), len(chars)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[..., tuple[Pair, Pair, int]]] = {
    "digits": _digits,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "spirals": _spirals,
    "blobs": _blobs,
    "random-cifar": _random_cifar,
    "modular-add": _modular_add,
    "char-lm": _char_lm,
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
            corpus_text(clean.get("text", defaults["text"].default)).encode()).hexdigest()[:16]
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
    meta = {
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
                f"{what} dataset must yield (x, y) samples of equal shape with integer labels "
                f"({e})"
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

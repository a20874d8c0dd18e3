"""Datasets read from the user's files: MNIST's original IDX files and CIFAR-10's python batches.

Nothing is downloaded: `--data-root` names the folder. The IDX readers check every header against the
file's size (a truncated download is named, not read as zeros). CIFAR-10 batches are pickles, so they are
read with a restricted unpickler that can build numpy arrays and nothing else: a batch with code in it is
refused, never run.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modescape.errors import UserError
from modescape.zoo.data import Pair, subset, tensors_of

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
            f"dataset {name!r} reads local files: pass --data-root (root=...) pointing at the folder with {expected}"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"data folder {folder} for dataset {name!r} does not exist; pass --data-root "
            f"pointing at the folder with {expected}"
        )
    return folder


def mnist_files(
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
        pairs.append(tensors_of(x, labels))
    train, test = pairs
    if train[0].shape[1:] != test[0].shape[1:]:
        raise UserError(
            f"MNIST train and test images in {folder} differ in size "
            f"({tuple(train[0].shape[2:])} vs {tuple(test[0].shape[2:])}); re-download them"
        )
    gen = torch.Generator().manual_seed(split_seed)
    train = subset(train, n_train, gen, "mnist", "n_train")
    test = subset(test, n_test, gen, "mnist", "n_test")
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
        raise UserError(f"{self._path} uses pickle persistent ids: this file is not a plain CIFAR-10 batch")


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
    return tensors_of(x, labels)


def cifar10_files(
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
            f"CIFAR-10 files {', '.join(missing)} not found in {folder}; pass --data-root pointing at {expected}"
        )
    train = _cifar_pair([folder / n for n in _CIFAR_TRAIN])
    test = _cifar_pair([folder / _CIFAR_TEST])
    gen = torch.Generator().manual_seed(split_seed)
    train = subset(train, n_train, gen, "cifar10", "n_train")
    test = subset(test, n_test, gen, "cifar10", "n_test")
    return train, test, 10

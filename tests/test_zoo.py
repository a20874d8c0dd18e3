"""Tests for the dataset and model zoo (modescape.zoo).

Real MNIST / CIFAR-10 files are never needed: the tests write tiny IDX files and fake CIFAR
batches themselves, including a malicious pickle that must be refused without running.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from modescape.errors import UserError
from modescape.zoo import (
    BasicBlock,
    DataSplit,
    as_split,
    build_model,
    dataset_names,
    load_dataset,
    model_names,
)
from modescape.zoo.data import read_idx_images, read_idx_labels
from modescape.zoo.models import coerce_args

# ----------------------------------------------------------------------------------------------
# Helpers: tiny MNIST and CIFAR-10 folders
# ----------------------------------------------------------------------------------------------


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_images(path: Path, images: np.ndarray, gz: bool, magic: int = 2051) -> Path:
    n, rows, cols = images.shape
    return _write(path, struct.pack(">IIII", magic, n, rows, cols) + images.tobytes(), gz)


def write_idx_labels(path: Path, labels: np.ndarray, gz: bool, magic: int = 2049) -> Path:
    return _write(path, struct.pack(">II", magic, len(labels)) + labels.tobytes(), gz)


def make_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx_images(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx_labels(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return folder


def make_cifar(parent: Path, per_batch: int = 3, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return folder


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# ----------------------------------------------------------------------------------------------
# Built-in datasets
# ----------------------------------------------------------------------------------------------

SMALL_ARGS = {
    "digits": {},
    "spirals": {"n": 200},
    "blobs": {"n": 150, "centers": 4, "dim": 5},
    "random-cifar": {"n_train": 16, "n_test": 8},
}


def test_dataset_names() -> None:
    expected = {"digits", "mnist", "cifar10", "spirals", "blobs", "random-cifar", "modular-add", "char-lm"}
    assert set(dataset_names()) == expected


@pytest.mark.parametrize(
    "name, input_shape, num_classes",
    [
        ("digits", (1, 8, 8), 10),
        ("spirals", (2,), 2),
        ("blobs", (5,), 4),
        ("random-cifar", (3, 32, 32), 10),
    ],
)
def test_builtin_datasets(name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    data = load_dataset(name, **SMALL_ARGS[name])
    assert isinstance(data, DataSplit)
    assert data.name == name
    assert data.input_shape == input_shape
    assert data.num_classes == num_classes
    for x, y in (data.train, data.test):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == input_shape and y.shape == (len(x),)
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    assert data.meta["n_train"] == len(data.train[1])
    assert data.meta["n_test"] == len(data.test[1])
    assert data.meta["split_seed"] == 0

    again = load_dataset(name, **SMALL_ARGS[name])
    for a, b in zip(data.train + data.test, again.train + again.test, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["digits", "spirals", "blobs", "random-cifar"])
def test_split_seed_changes_the_split(name: str) -> None:
    a = load_dataset(name, **SMALL_ARGS[name])
    b = load_dataset(name, split_seed=1, **SMALL_ARGS[name])
    assert not torch.equal(a.train[0], b.train[0])
    assert b.meta["split_seed"] == 1


def test_digits_split_and_standardisation() -> None:
    data = load_dataset("digits")
    assert len(data.train[1]) == 1437 and len(data.test[1]) == 360
    assert data.meta == {
        "name": "digits",
        "args": {},
        "root": None,
        "split_seed": 0,
        "n_train": 1437,
        "n_test": 360,
    }
    assert abs(float(data.train[0].mean())) < 1e-4
    assert abs(float(data.train[0].std()) - 1) < 1e-3
    # stratified: every class is in both parts in nearly equal proportion
    train_counts = torch.bincount(data.train[1], minlength=10)
    test_counts = torch.bincount(data.test[1], minlength=10)
    assert torch.all((train_counts - 4 * test_counts).abs() <= 4)


def test_string_args_are_coerced() -> None:
    data = load_dataset("spirals", n="100", noise="0.1", split_seed="3")
    assert data.meta["args"] == {"n": 100, "noise": 0.1, "split_seed": 3}
    assert len(data.train[1]) + len(data.test[1]) == 100


@pytest.mark.parametrize(
    "name, args",
    [
        ("nope", {}),
        ("digits", {"n_train": 5}),
        ("spirals", {"n": "many"}),
        ("spirals", {"n": 3}),
        ("blobs", {"centers": 1}),
        ("random-cifar", {"n_train": 0}),
    ],
)
def test_dataset_user_errors(name: str, args: dict) -> None:
    with pytest.raises(UserError):
        load_dataset(name, **args)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(UserError, match="digits"):
        load_dataset("imagenet")


# ----------------------------------------------------------------------------------------------
# MNIST / IDX
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 3], dtype=np.uint8)
    img_path = write_idx_images(tmp_path / "imgs", images, gz)
    lbl_path = write_idx_labels(tmp_path / "lbls", labels, gz)
    assert np.array_equal(read_idx_images(img_path), images)
    assert np.array_equal(read_idx_labels(lbl_path), labels)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_bad_magic(tmp_path: Path, gz: bool) -> None:
    images = np.zeros((2, 3, 3), dtype=np.uint8)
    path = write_idx_images(tmp_path / "imgs", images, gz, magic=2049)
    with pytest.raises(UserError, match="imgs"):
        read_idx_images(path)
    path = write_idx_labels(tmp_path / "lbls", np.zeros(2, dtype=np.uint8), gz, magic=2051)
    with pytest.raises(UserError, match="lbls"):
        read_idx_labels(path)


def test_idx_truncated(tmp_path: Path) -> None:
    path = tmp_path / "imgs"
    path.write_bytes(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(100))
    with pytest.raises(UserError, match="truncated"):
        read_idx_images(path)
    bad_gzip = tmp_path / "lbls.gz"
    bad_gzip.write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match="lbls.gz"):
        read_idx_labels(bad_gzip)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loader(tmp_path: Path, gz: bool) -> None:
    root = make_mnist(tmp_path / "mnist", gz=gz)
    data = load_dataset("mnist", root=str(root))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.train[0].shape == (20, 1, 28, 28) and data.test[0].shape == (10, 1, 28, 28)
    assert data.train[0].dtype == torch.float32 and data.train[1].dtype == torch.int64
    raw = read_idx_images(next(root.glob("train-images*")))
    expected = (torch.from_numpy(raw).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(data.train[0][:, 0], expected)
    assert torch.equal(data.train[1], torch.arange(20) % 10)
    assert data.meta["root"] == str(root)


def test_mnist_subset(tmp_path: Path) -> None:
    root = make_mnist(tmp_path / "mnist")
    full = load_dataset("mnist", root=root)
    sub = load_dataset("mnist", root=root, n_train=7, n_test="4")
    assert len(sub.train[1]) == 7 and len(sub.test[1]) == 4
    assert sub.meta["n_train"] == 7 and sub.meta["args"] == {"n_train": 7, "n_test": 4}
    # each subset sample is one of the full set's samples
    for x in sub.train[0]:
        assert any(torch.equal(x, f) for f in full.train[0])
    again = load_dataset("mnist", root=root, n_train=7, n_test=4)
    assert torch.equal(sub.train[0], again.train[0])
    other = load_dataset("mnist", root=root, n_train=7, n_test=4, split_seed=5)
    assert not torch.equal(sub.train[0], other.train[0])
    with pytest.raises(UserError, match="n_train"):
        load_dataset("mnist", root=root, n_train=21)


def test_mnist_missing_root_and_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    root = make_mnist(tmp_path / "mnist")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=root)


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    root = make_mnist(tmp_path / "mnist")
    write_idx_labels(root / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8), gz=True)
    with pytest.raises(UserError, match="19 labels"):
        load_dataset("mnist", root=root)


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip(tmp_path: Path, protocol: int) -> None:
    folder = make_cifar(tmp_path, per_batch=3, protocol=protocol)
    for root in (folder, tmp_path):  # the batches folder itself or its parent
        data = load_dataset("cifar10", root=str(root))
        assert data.input_shape == (3, 32, 32) and data.num_classes == 10
        assert data.train[0].shape == (15, 3, 32, 32) and data.test[0].shape == (3, 3, 32, 32)
        assert data.train[0].dtype == torch.float32 and data.test[1].dtype == torch.int64

    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    raw = torch.from_numpy(batch[b"data"]).float().reshape(-1, 3, 32, 32) / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    assert torch.allclose(data.test[0], (raw - mean) / std, atol=1e-5)
    assert data.test[1].tolist() == batch[b"labels"]

    sub = load_dataset("cifar10", root=folder, n_train=4, n_test=2)
    assert sub.train[0].shape == (4, 3, 32, 32) and sub.test[0].shape == (2, 3, 32, 32)


def test_cifar10_refuses_malicious_pickle(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f)
    with pytest.raises(UserError, match="refuses to unpickle .*system"):
        load_dataset("cifar10", root=folder)
    assert not marker.exists()


def test_cifar10_bad_batches(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": [1, 2]}, f)
    with pytest.raises(UserError, match="not a plain CIFAR-10 batch"):
        load_dataset("cifar10", root=folder)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", root=folder)
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", root=folder)
    with pytest.raises(UserError, match="--data-root"):
        load_dataset("cifar10")


# ----------------------------------------------------------------------------------------------
# as_split
# ----------------------------------------------------------------------------------------------


def _xy(n: int, n_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 4), torch.arange(n) % n_classes


def test_as_split_forms() -> None:
    tr, te = _xy(12), _xy(6)
    for obj in (
        {"train": tr, "test": te},
        (tr, te),
        ((tr[0].numpy(), tr[1].numpy()), (te[0].numpy(), te[1].numpy())),
        (torch.utils.data.TensorDataset(*tr), torch.utils.data.TensorDataset(*te)),
    ):
        data = as_split(obj, name="mine")
        assert data.name == "mine" and data.input_shape == (4,) and data.num_classes == 3
        assert torch.equal(data.train[0], tr[0]) and torch.equal(data.test[1], te[1])
        assert data.train[0].dtype == torch.float32 and data.train[1].dtype == torch.int64
        assert data.meta["n_train"] == 12 and data.meta["n_test"] == 6
    existing = load_dataset("spirals", n=50)
    assert as_split(existing) is existing


def test_as_split_iterable_dataset() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __iter__(self):
            for i in range(self.n):
                yield torch.full((2, 2), float(i)), i % 5

    data = as_split((Stream(10), Stream(5)))
    assert data.input_shape == (2, 2) and data.num_classes == 5
    assert len(data.train[1]) == 10 and len(data.test[1]) == 5


@pytest.mark.parametrize(
    "obj",
    [
        torch.randn(5, 2),
        {"train": _xy(4)},
        (_xy(4), (torch.randn(3, 5), torch.zeros(3, dtype=torch.long))),
        (_xy(4), (torch.randn(3, 4), torch.tensor([0.5, 1.0, 2.0]))),
        (_xy(4), (torch.randn(3, 4), torch.tensor([0, -1, 2]))),
        (_xy(4), (torch.randn(3, 4), torch.tensor([0, 1]))),
    ],
)
def test_as_split_rejects_bad_input(obj) -> None:
    with pytest.raises(UserError):
        as_split(obj)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

CONFIGS = [
    ("mlp", {"depth": 0}),
    ("mlp", {"depth": 2, "width": 8, "norm": "bn"}),
    ("mlp", {"depth": 1, "width": 8, "norm": "ln", "activation": "tanh"}),
    ("cnn", {"width": 4}),
    ("cnn", {"width": 4, "norm": "ln"}),
    ("cnn", {"width": 4, "norm": "none"}),
    ("resnet", {"depth": 8, "width": 1}),
    ("resnet", {"depth": 8, "skip": False, "norm": "ln"}),
    ("resnet", {"depth": 8, "norm": "none"}),
    ("vgg", {"depth": 11}),
    ("vgg", {"depth": 13, "bn": False}),
]
SHAPES = [(1, 8, 8), (3, 32, 32)]


def _id(value) -> str:
    return "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def test_model_names() -> None:
    assert model_names() == ["cnn", "mlp", "resnet", "transformer", "vgg"]


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("name, args", CONFIGS, ids=_id)
def test_models_forward(name: str, args: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 7, **args)
    assert model.modescape_spec == {
        "name": name,
        "args": args,
        "input_shape": list(shape),
        "num_classes": 7,
    }
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_mlp_on_vectors_and_conv_nets_refuse_them() -> None:
    assert build_model("mlp", (2,), 2, width=4)(torch.randn(5, 2)).shape == (5, 2)
    for name in ("cnn", "resnet", "vgg"):
        with pytest.raises(UserError, match="mlp"):
            build_model(name, (2,), 2)


@pytest.mark.parametrize("name, args", CONFIGS, ids=_id)
def test_models_are_plain(name: str, args: dict) -> None:
    model = build_model(name, (3, 32, 32), 10, **args)
    for module in model.modules():
        assert not isinstance(module, nn.Dropout)
        if isinstance(module, nn.ReLU):
            assert not module.inplace


@pytest.mark.parametrize("name, args", CONFIGS, ids=_id)
def test_models_deterministic_and_rebuildable(name: str, args: dict) -> None:
    torch.manual_seed(3)
    a = build_model(name, (1, 8, 8), 10, **args)
    spec = a.modescape_spec
    torch.manual_seed(3)
    b = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec["args"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name, args", CONFIGS, ids=_id)
def test_models_fx_traceable(name: str, args: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, **args).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(traced(x), model(x))


def _randomise_buffers(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name, args", CONFIGS, ids=_id)
def test_vmap_over_parameter_sets_matches_loop(name: str, args: dict) -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model(name, (1, 8, 8), 5, **args).eval()
        _randomise_buffers(model)
        models.append(model)
    params, buffers = torch.func.stack_module_state(models)
    base = models[0]
    x = torch.randn(4, 1, 8, 8)

    def f(p, b, inputs):
        return torch.func.functional_call(base, (p, b), (inputs,))

    batched = torch.func.vmap(f, in_dims=(0, 0, None))(params, buffers, x)
    assert batched.shape == (3, 4, 5)
    for i, model in enumerate(models):
        p = {k: v[i] for k, v in params.items()}
        b = {k: v[i] for k, v in buffers.items()}
        expected = f(p, b, x)
        assert torch.allclose(batched[i], expected, atol=1e-5)
        assert torch.allclose(expected, model(x), atol=1e-5)


def test_resnet_structure() -> None:
    model = build_model("resnet", (3, 32, 32), 10, depth=20)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.27e6, rel=0.02)
    projections = [b for b in blocks if isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2  # at the start of stages 2 and 3
    assert all(b.conv1.bias is None for b in blocks)  # bias-free before a norm

    plain = build_model("resnet", (3, 32, 32), 10, depth=20, skip=False)
    assert all(b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    assert not any("shortcut" in name for name, _ in plain.named_parameters())
    assert any("shortcut" in name for name, _ in model.named_parameters())

    no_norm = build_model("resnet", (3, 32, 32), 10, depth=8, norm="none")
    convs = [m for m in no_norm.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)

    assert len([m for m in build_model("resnet", (3, 32, 32), 10, depth=56).modules()
                if isinstance(m, BasicBlock)]) == 27  # fmt: skip


@pytest.mark.parametrize("depth", [19, 21, 2, "deep"])
def test_resnet_bad_depth(depth) -> None:
    with pytest.raises(UserError, match="depth"):
        build_model("resnet", (3, 32, 32), 10, depth=depth)


def test_vgg_channels_and_pooling() -> None:
    classic = build_model("vgg", (3, 32, 32), 10, depth=16, width=8)
    convs = [m for m in classic.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[0].out_channels == 64 and convs[-1].out_channels == 512
    assert sum(isinstance(m, nn.MaxPool2d) for m in classic.modules()) == 5
    small = build_model("vgg", (1, 8, 8), 10, depth=11)
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3  # 8 -> 4 -> 2 -> 1
    with pytest.raises(UserError, match="11, 13, 16, 19"):
        build_model("vgg", (3, 32, 32), 10, depth=12)


def test_string_args_coerced_for_models() -> None:
    model = build_model("resnet", [3, 32, 32], "10", depth="8", width="1", skip="false", norm="LN")
    assert model.modescape_spec == {
        "name": "resnet",
        "args": {"depth": 8, "width": 1, "skip": False, "norm": "ln"},
        "input_shape": [3, 32, 32],
        "num_classes": 10,
    }
    assert isinstance(model.stage1[0].norm1, nn.GroupNorm)
    mlp = build_model("mlp", (1, 8, 8), 10, depth="0")
    assert [type(m) for m in mlp] == [nn.Flatten, nn.Linear]
    vgg = build_model("vgg", (1, 8, 8), 10, depth="13", bn="0")
    assert vgg.modescape_spec["args"] == {"depth": 13, "bn": False}


@pytest.mark.parametrize(
    "name, args, match",
    [
        ("llama", {}, "cnn, mlp, resnet, transformer, vgg"),
        ("mlp", {"heads": 2}, "depth, width, norm, activation"),
        ("mlp", {"norm": "batch"}, "'none', 'bn', 'ln'"),
        ("mlp", {"width": "wide"}, "integer"),
        ("mlp", {"width": 0}, "width"),
        ("mlp", {"depth": True}, "integer"),
        ("resnet", {"skip": "maybe"}, "true or false"),
        ("cnn", {"width": 2.5}, "integer"),
    ],
)
def test_model_user_errors(name: str, args: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        build_model(name, (1, 8, 8), 10, **args)


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_int_coercion_round_trips(value: int) -> None:
    def fn(*, n: int = 0, x: float = 0.0, s: str = "", flag: bool = False, o: int | None = None):
        return None  # only its signature is read

    assert coerce_args("f", fn, {"n": str(value)}) == {"n": value}
    assert coerce_args("f", fn, {"x": str(value)}) == {"x": float(value)}
    assert coerce_args("f", fn, {"o": str(value)}) == {"o": value}
    assert coerce_args("f", fn, {"o": "none", "flag": "yes", "s": "abc"}) == {
        "o": None,
        "flag": True,
        "s": "abc",
    }

"""Checkpoints: safetensors round trip, sidecars, safe loading of .pt files, clear errors, atomic writes."""

import json
import os
import pickle

import pytest
import torch

from modescape import io
from modescape.errors import UserError
from modescape.zoo import build_model


def net(**kw):
    torch.manual_seed(0)
    return build_model("cnn", (1, 8, 8), 10, width=4, **kw)


def test_round_trip(tmp_path):
    m = net()
    for b in m.buffers():
        if b.is_floating_point():
            b.add_(0.3)
    path = io.save_checkpoint(tmp_path / "a.safetensors", m, {"seed": 3, "data": {"name": "digits"}})
    assert path.exists() and (tmp_path / "a.json").exists()
    m2, meta = io.load_model(path)
    assert meta["seed"] == 3 and meta["model"]["name"] == "cnn" and meta["versions"]["torch"] == torch.__version__
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert len(meta["weights_hash"]) == 16
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_pt_state_dict_loads_and_pickled_code_is_refused(tmp_path):
    m = net()
    torch.save(m.state_dict(), tmp_path / "ok.pt")
    m2, _ = io.load_model(
        tmp_path / "ok.pt", model="cnn", model_args={"width": "4"}, data_shape=(1, 8, 8), num_classes=10
    )
    assert torch.equal(m2.state_dict()[next(iter(m.state_dict()))], next(iter(m.state_dict().values())))

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(UserError, match="never runs code from a checkpoint.*safetensors") as err:
        io.load_tensors(tmp_path / "evil.pt")
    assert not marker.exists() and "weights_only" not in str(err.value)  # no advice to turn the guard off
    torch.save({"w": torch.zeros(2), "x": Evil()}, tmp_path / "evil_zip.pt")  # torch's own format
    with pytest.raises(UserError, match=r"\(posix\.system\) besides tensors"):
        io.load_tensors(tmp_path / "evil_zip.pt")
    assert not marker.exists()


def test_mismatch_names_first_key_and_shapes(tmp_path):
    path = io.save_checkpoint(tmp_path / "a.safetensors", net())
    with pytest.raises(
        UserError, match=r"tensor 'conv0\.weight' has shape \[4, 1, 3, 3\]; the model expects \[8, 1, 3, 3\]"
    ):
        io.load_model(path, model="cnn", model_args={"width": "8"}, data_shape=(1, 8, 8), num_classes=10)


def test_nan_weights_refused(tmp_path):
    m = net()
    path = io.save_checkpoint(tmp_path / "a.safetensors", m)
    state = io.load_tensors(path)
    state["conv0.weight"][0, 0, 0, 0] = float("nan")
    io.save_tensors(path, state)
    with pytest.raises(UserError, match="'conv0.weight' has NaN"):
        io.load_model(path)
    with torch.no_grad():
        m.conv0.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(UserError, match="refusing to save"):
        io.save_checkpoint(tmp_path / "b.safetensors", m)
    assert not (tmp_path / "b.safetensors").exists()


def test_missing_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        io.load_model(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        io.load_tensors(tmp_path / "bad.safetensors")
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(UserError, match="unknown checkpoint type"):
        io.load_tensors(tmp_path / "x.npz")
    path = io.save_checkpoint(tmp_path / "a.safetensors", net())
    (tmp_path / "a.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        io.load_model(path)


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    target = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_import_specs(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def small(width=3):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, int(width)))\n"
        "NOT_CALLABLE = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = io.build_from_spec({"name": "mymodels:small", "args": {"width": 5}})
    assert m[1].out_features == 5
    path = io.save_checkpoint(tmp_path / "m.safetensors", m)
    m2, meta = io.load_model(path)
    assert meta["model"]["name"] == "mymodels:small" and m2[1].out_features == 5
    with pytest.raises(UserError, match="not an import spec"):
        io.resolve_spec("mymodels.small")
    with pytest.raises(UserError, match="cannot import module"):
        io.resolve_spec("no_such_module_xyz:f")
    with pytest.raises(UserError, match="has no attribute"):
        io.resolve_spec("mymodels:missing")
    with pytest.raises(UserError, match="not callable"):
        io.resolve_spec("mymodels:NOT_CALLABLE")
    with pytest.raises(UserError, match="key=value"):
        io.parse_args("depth3")

"""Reduced precision (issue 13): Evaluator(precision="bf16") against fp32, the precision check against a
hand recomputation, the precision recorded with results, the CLI options, and the compiled CPU path."""

import json
import shutil

import pytest
import torch
from conftest import run_cli

from modescape import space as sp
from modescape.directions import random_directions
from modescape.errors import UserError
from modescape.evaluate import Evaluator, compare_precision
from modescape.evaluate.precision import differences, sample_indices
from modescape.families import Plane
from modescape.landscape import sweep
from modescape.zoo import build_model


def _plane(net, seed=0):
    dx, dy = random_directions(net, 2, seed=seed)
    return Plane(sp.WeightSpace(net).point(net), dx, dy)


@pytest.mark.parametrize(
    "name,kwargs,bn,mode",
    [
        ("mlp", {"depth": 1, "width": 32}, "running", "loop"),
        ("mlp", {"depth": 1, "width": 32}, "running", "vmap"),
        ("cnn", {"width": 4}, "recompute", "loop"),
        ("cnn", {"width": 4}, "running", "vmap"),
    ],
)
def test_bf16_close_to_fp32(digits, name, kwargs, bn, mode):
    x, y = digits.train[0][:400], digits.train[1][:400]
    net = build_model(name, digits.input_shape, 10, **kwargs)
    plane = _plane(net)
    coords = torch.rand(5, 2, dtype=torch.float64) * 2 - 1
    ref = Evaluator(net, {"train": (x, y)}, bn=bn, mode=mode).evaluate_family(plane, coords)
    ev = Evaluator(net, {"train": (x, y)}, bn=bn, mode=mode, precision="bf16")
    low = ev.evaluate_family(plane, coords)
    assert low.precision == "bf16" and ref.precision == "fp32"
    assert low.values.dtype == torch.float64  # accumulated in float64
    loss_rel = ((low["train_loss"] - ref["train_loss"]).abs() / ref["train_loss"]).max()
    assert 0 < loss_rel < 5e-3  # bf16 really ran (not bit-equal) and stays within bf16's rounding
    assert (low["train_accuracy"] - ref["train_accuracy"]).abs().max() <= 0.02


def test_weights_cast_once_per_chunk_equal_autocast_per_call(digits):
    """The pre-cast Linear/Conv weights give the same bits as autocast casting them in every call."""
    x, y = digits.train[0][:300], digits.train[1][:300]
    net = build_model("cnn", digits.input_shape, 10, width=4)
    pts = [sp.WeightSpace(net).point(net)] * 2
    ev = Evaluator(net, {"train": (x, y)}, mode="loop", precision="bf16")
    assert ev.low_precision_names == {"conv0.weight", "conv1.weight", "conv2.weight", "fc.weight"}
    a = ev(pts)
    ev.low_precision_names = frozenset()  # autocast alone
    assert torch.equal(a.values, ev(pts).values)


def test_check_precision_equals_hand_recomputation(digits):
    x, y = digits.train[0][:300], digits.train[1][:300]
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=32)
    plane = _plane(net, seed=3)
    coords = torch.rand(20, 2, dtype=torch.float64) * 2 - 1
    ev = Evaluator(net, {"train": (x, y), "test": digits.test}, precision="bf16")
    check = compare_precision(ev, plane, coords, 4, seed=7)
    idx = sorted(torch.randperm(20, generator=torch.Generator().manual_seed(7))[:4].tolist())
    assert check["indices"] == idx and check["points"] == 4 and check["precision"] == "bf16"
    low_ev = Evaluator(net, {"train": (x, y), "test": digits.test}, precision="bf16")
    ref_ev = Evaluator(net, {"train": (x, y), "test": digits.test})
    low_ev.family_mode = ref_ev.family_mode = ev.family_mode  # the same path (its bf16 rounding differs)
    low, ref = low_ev.evaluate_family(plane, coords[idx]), ref_ev.evaluate_family(plane, coords[idx])
    for j, name in enumerate(ev.names):
        d = (low.values[:, j] - ref.values[:, j]).abs()
        assert check["max_abs_diff"][name] == pytest.approx(float(d.max()), rel=1e-12, abs=1e-15)
        rel = [float(d[i] / ref.values[i, j].abs()) if ref.values[i, j] != 0 else float(d[i]) for i in range(4)]
        assert check["max_rel_diff"][name] == pytest.approx(max(rel), rel=1e-12, abs=1e-15)
    assert check["max_abs_diff"]["train_loss"] > 0
    assert ev.precision == "bf16" and ev.autocast == torch.bfloat16  # restored after the fp32 pass


def test_differences_and_indices_by_hand():
    low = torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    ref = torch.tensor([[1.1, 0.5], [1.0, 0.25]])
    d = differences(low, ref, ("a", "b"))
    assert d["max_abs_diff"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.25)}
    assert d["max_rel_diff"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert sample_indices(5, 10, 0) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError):
        sample_indices(5, 0)


def test_precision_validated_and_recorded(digits, tmp_path):
    x, y = digits.train[0][:200], digits.train[1][:200]
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=8)
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        Evaluator(net, (x, y), precision="fp8")
    with pytest.raises(UserError, match="disagree"):
        Evaluator(net, (x, y), precision="fp32", autocast=torch.bfloat16)
    assert Evaluator(net, (x, y), autocast=torch.bfloat16).precision == "bf16"
    ev = Evaluator(net, {"train": (x, y)}, precision="bf16")
    ds = sweep(_plane(net), ev, {"x": "-1:1:3", "y": "-1:1:3"}, store=tmp_path / "r.zarr")
    assert ds.attrs["precision"] == "bf16"
    assert ev(sp.WeightSpace(net).point(net)).to_dict(None)["precision"] == "bf16"
    with pytest.raises(UserError, match="different settings"):  # a bf16 store does not resume in fp32
        sweep(_plane(net), Evaluator(net, {"train": (x, y)}), {"x": "-1:1:3", "y": "-1:1:3"}, store=tmp_path / "r.zarr")


def test_compiled_bf16_channels_last_chunk_on_cpu(digits):
    """The GPU path (torch.compile, bf16, channels_last, a chunk of points per compiled call) runs on the CPU
    too, and agrees with the eager bf16 and fp32 evaluations."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        raise AssertionError("torch.compile's CPU backend needs a C compiler (gcc) on the PATH")
    x, y = digits.train[0][:64], digits.train[1][:64]
    net = build_model("cnn", digits.input_shape, 10, width=4)
    plane = _plane(net)
    coords = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]], dtype=torch.float64)
    ev = Evaluator(net, {"train": (x, y)}, mode="vmap", precision="bf16", channels_last=True, compile=True, chunk=3)
    got = ev.evaluate_family(plane, coords)
    assert ev.family_mode == "vmap" and got.precision == "bf16"
    assert list(ev._compiled_chunks) == [True]  # the chunk of 3 points went through one compiled vmap
    eager = Evaluator(net, {"train": (x, y)}, mode="vmap", precision="bf16").evaluate_family(plane, coords)
    ref = Evaluator(net, {"train": (x, y)}, mode="loop").evaluate_family(plane, coords)
    assert torch.allclose(got["train_loss"], eager["train_loss"], rtol=1e-2)
    assert torch.allclose(got["train_loss"], ref["train_loss"], rtol=1e-2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    from modescape.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), "--epochs", "1", "--model-args", "depth=1,width=8", "--json"])
    assert e.value.code in (0, None)
    return out


def test_cli_precision_and_check(run_dir, tmp_path, capsys):
    ck = run_dir / "final.safetensors"
    code, out, err = run_cli(
        [
            "surface",
            ck,
            "--out",
            tmp_path / "s",
            "--x",
            "-1:1:4",
            "--y",
            "-1:1:4",
            "--precision",
            "bf16",
            "--check-precision",
            "3",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["precision"] == "bf16"
    check = summary["precision_check"]
    assert check["points"] == 3 and set(check["max_abs_diff"]) == {
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
    }
    assert "bf16 vs fp32 on 3 points" in err
    from modescape.store import load

    ds = load(tmp_path / "s" / "result.zarr")
    assert ds.attrs["precision"] == "bf16" and ds.attrs["precision_check"]["indices"] == check["indices"]


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--precision", "fp16"], "unknown --precision 'fp16': use one of fp32, bf16"),
        (["--check-precision", "3"], "--check-precision compares a reduced precision with fp32"),
        (["--precision", "bf16", "--check-precision", "-1"], "--check-precision must be 0"),
    ],
)
def test_cli_precision_errors(run_dir, tmp_path, capsys, argv, pattern):
    for cmd in (
        ["surface", run_dir / "final.safetensors", "--out", tmp_path / "s"],
        ["path", run_dir / "final.safetensors", run_dir / "final.safetensors"],
    ):
        code, out, err = run_cli(cmd + argv, capsys)
        assert code == 2, (out, err)
        assert "Traceback" not in err and pattern in err, err
        assert len([line for line in err.strip().splitlines() if line.strip()]) == 1 or "Usage" in err
    assert not (tmp_path / "s").exists()


def test_deep_ensemble_bf16_records_and_stays_close(digits):
    from modescape.ensembles import deep_ensemble

    nets = [build_model("mlp", digits.input_shape, 10, depth=1, width=16) for _ in range(2)]
    ref = deep_ensemble(nets[0], nets, digits)
    low = deep_ensemble(nets[0], nets, digits, precision="bf16")
    assert low.to_dict()["precision"] == "bf16" and ref.to_dict()["precision"] == "fp32"
    assert 0 < abs(low.metrics["nll"] - ref.metrics["nll"]) < 5e-3 * ref.metrics["nll"]
    assert abs(low.metrics["accuracy"] - ref.metrics["accuracy"]) <= 0.01

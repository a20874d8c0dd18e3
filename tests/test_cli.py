"""The command line: train/eval end to end, and every user error gives one line and exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from modescape import io
from modescape.zoo import build_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    from modescape.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), "--epochs", "2", "--model-args", "depth=1,width=16", "--json"])
    assert e.value.code in (0, None)
    return out


@pytest.mark.slow
def test_train_then_eval_json(run_dir, capsys):
    code, out, err = run_cli(["eval", run_dir / "final.safetensors", "--json", "--bn", "recompute"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["bn"] == "recompute" and 0.5 < rows[0]["test_accuracy"] <= 1.0
    side = json.loads((run_dir / "final.json").read_text())
    assert side["data"]["name"] == "digits" and side["model"]["args"] == {"depth": 1, "width": 16}
    assert side["metrics"]["test_accuracy"] == pytest.approx(rows[0]["test_accuracy"])


def test_help_everywhere(capsys):
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"]):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0 and "Usage" in out


def one_line_error(capsys, argv, pattern):
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 or "Usage" in err, err
    assert pattern in err, err
    return err


def test_user_errors(run_dir, tmp_path, capsys):
    one_line_error(capsys, ["eval", tmp_path / "missing.safetensors"], "not found")
    one_line_error(capsys, ["train", "--out", tmp_path / "x", "--model", "nopkg_zz:factory"], "cannot import module")
    one_line_error(capsys, ["train", "--out", tmp_path / "x", "--data", "imagenet"], "unknown dataset")
    one_line_error(
        capsys,
        ["eval", run_dir / "final.safetensors", "--model-args", "width=32"],
        "has shape [16, 64]; the model expects [32, 64]",
    )
    state = io.load_tensors(run_dir / "final.safetensors")
    state[next(iter(state))][0] = float("nan")
    io.save_tensors(tmp_path / "nan.safetensors", state)
    (tmp_path / "nan.json").write_text((run_dir / "final.json").read_text())
    one_line_error(capsys, ["eval", tmp_path / "nan.safetensors"], "NaN")
    one_line_error(capsys, ["eval", run_dir / "final.safetensors", "--bn", "fresh"], "unknown --bn")
    one_line_error(
        capsys, ["train", "--out", tmp_path / "x", "--data", "mnist", "--data-root", tmp_path / "nodata"], "mnist"
    )


@pytest.mark.slow
def test_interpolate_ends_range_errors_and_mismatched_inputs(run_dir, tmp_path, capsys):
    """interpolate reports A and B when the grid misses t = 0 and 1; a range error shows the A:B:N format
    (not an emoji); a folder as --out, two architectures, an unknown variable: one clear line each."""
    final = run_dir / "final.safetensors"
    # interpolate reports A and B even when the grid misses t = 0 and t = 1
    code, out, err = run_cli(
        [
            "interpolate",
            final,
            run_dir / "checkpoints" / "epoch-000.safetensors",
            "--steps",
            "4",
            "--range",
            "-0.5:1.5",
            "--out",
            tmp_path / "line",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    summary = summary.get("summary", summary)
    assert summary["train_loss_at_A"] == pytest.approx(
        json.loads((run_dir / "final.json").read_text())["metrics"]["train_loss"], rel=1e-5
    )
    # a range error shows the format, not an emoji
    err = one_line_error(capsys, ["surface", final, "--x", "-1:1", "--y", "-1:1:3", "--out", tmp_path / "s"], "A:B:N")
    assert "\N{NEGATIVE SQUARED LATIN CAPITAL LETTER B}" not in err
    # permute into an existing folder, align of different architectures, plot of an unknown variable
    one_line_error(capsys, ["permute", final, "--out", tmp_path], "is a folder")
    torch.manual_seed(0)
    other = build_model("mlp", (1, 8, 8), 10, depth=1, width=8)
    side = {k: v for k, v in json.loads((run_dir / "final.json").read_text()).items() if k != "model"}
    io.save_checkpoint(tmp_path / "w8.safetensors", other, side)
    one_line_error(capsys, ["align", final, tmp_path / "w8.safetensors", "--out", tmp_path / "al"], "has shape")
    one_line_error(capsys, ["plot", tmp_path / "line", "--var", "nope"], "no variable 'nope'")
    one_line_error(capsys, ["eval", run_dir], "is a folder")


@pytest.mark.slow
def test_console_script_has_no_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "modescape")
    r = subprocess.run([exe, "eval", str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr


@pytest.mark.slow
def test_values_the_parsers_accept_but_methods_cannot_use(run_dir, tmp_path, capsys):
    """Values the option parsers accept but the methods cannot use give one line, exit status 2 and no
    leftover folders; --params restricts --per groups; an overflowing loss is named."""
    final = run_dir / "final.safetensors"
    for argv, pattern in (
        (["surface", final, "--x", "0:0:1", "--y", "-1:1:5"], "at least 2 distinct values"),
        (["surface", final, "--x", "1:1:5", "--y", "-1:1:5"], "at least 2 distinct values"),
        (["surface", final, "--x", "-1:1:3", "--y", "-1:1:3", "--convexity", "-1"], "--convexity"),
        (["surface", final, "--x=-1:1:100000000", "--y", "-1:1:3"], "at most"),
        (["surface", final, "--x", "-1:1:3", "--y", "-1:1:3", "--batch-size", "0"], "--batch-size"),
        (["surface", final, "--x", "-1:1:3", "--y", "-1:1:3", "--data", "spirals"], "cannot run on data"),
        (["interpolate", final, final], "same weights"),
        (["interpolate", final, run_dir / "checkpoints" / "epoch-000.safetensors", "--steps", "0"], "--steps"),
        (["trajectory", run_dir, "--steps", "0"], "--steps"),
    ):
        out = tmp_path / "new" / "deeper"
        one_line_error(capsys, [*argv, "--out", out], pattern)
        assert not (tmp_path / "new").exists(), argv  # the folder it made for --out is gone again
    for argv, pattern in (
        (["--top-k", "100000"], "more than the"),
        (["--density", "--probes", "0"], "--probes"),
        (["--tol", "-1"], "positive"),
        (["--per", "0"], "at least 1"),
    ):
        one_line_error(capsys, ["hessian", final, "--n-train", "50", *argv], pattern)
    code, out, err = run_cli(
        ["hessian", final, "--n-train", "50", "--params", "biases", "--per", "layer", "--top-k", "1", "--json"], capsys
    )
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert {g: e["size"] for g, e in groups.items()} == {"fc0": 16, "out": 10}
    # a loss that overflows: one line instead of an eigensolver's traceback
    state = io.load_tensors(final)
    io.save_tensors(tmp_path / "big.safetensors", {k: v * 1e25 for k, v in state.items()})
    (tmp_path / "big.json").write_text((run_dir / "final.json").read_text())
    one_line_error(capsys, ["hessian", tmp_path / "big.safetensors", "--n-train", "50", "--top-k", "1"], "not finite")
    one_line_error(capsys, ["hessian", final, "--n-train", "20", "--out", "/proc/modescape-no"], "cannot create --out")


@pytest.mark.slow
def test_runs_are_portable_across_working_directories(tmp_path, capsys, monkeypatch):
    """A run trained with a relative --data-root is evaluated from another working directory (the sidecar
    stores the root absolute and relative to itself), and still after run and data move together;
    --data-root still overrides."""
    import shutil

    from test_zoo import make_mnist

    work = tmp_path / "work"
    make_mnist(work / "data" / "mnist", n_train=40, n_test=20)
    monkeypatch.chdir(work)
    code, _, err = run_cli(
        [
            "train",
            "--data",
            "mnist",
            "--data-root",
            "data/mnist",
            "--epochs",
            "1",
            "--model-args",
            "depth=1,width=8",
            "--out",
            "runs/m",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    side = json.loads((work / "runs" / "m" / "final.json").read_text())
    assert Path(side["data"]["root"]).is_absolute() and side["data"]["root_relative"] == "../../data/mnist"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(["eval", work / "runs" / "m" / "final.safetensors", "--json"], capsys)
    assert code == 0, err
    first = json.loads(out)[0]
    shutil.move(str(work), str(tmp_path / "moved"))  # run and data move together: the relative root holds
    code, out, err = run_cli(["eval", tmp_path / "moved" / "runs" / "m" / "final.safetensors", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["test_loss"] == first["test_loss"]
    code, _, err = run_cli(
        ["eval", tmp_path / "moved" / "runs" / "m" / "final.safetensors", "--data-root", tmp_path / "nowhere"], capsys
    )
    assert code == 2 and "nowhere" in err  # the override is used, and named when it is wrong

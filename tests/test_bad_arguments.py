"""Named bad inputs, arguments: unknown names, bad ``--model-args``/``--data-args``, grids and ranges, policies,
devices, counts, learning rates and seeds out of range, one command's inputs used wrongly (the same file
twice, ``--out`` onto an input, ``--through`` with one value, data of another shape), and outputs that
cannot be written (issue 14, item 9; the bad files are in `test_bad_inputs.py`, whose docstring says what
each case asserts). Also here: the command line starts without torch or numpy, so that ``--help`` and a user
error answer at once (item 10).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from badinput_helpers import FACTORIES_MODULE, run_bad_input, shared_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


F = FACTORIES_MODULE
GRID = ["--x", "-1:1:3", "--y", "-1:1:3"]
ONE = ["--epochs", "1"]
TINY = ["--data", f"{FACTORIES_MODULE}:tiny"]  # 40 samples: a training run that gets that far is short

# (argv, substrings the one line must hold). {NAME} is a path from make_inputs, {OUT} a fresh --out folder
# two levels below the test's tmp_path.
CASES = [
    # unknown names, bad --model-args / --data-args, user factories
    pytest.param(
        ["eval", "{a}", "--model", "resnet9000"],
        ["unknown model 'resnet9000'", "choose one of"],
        id="unknown-zoo-model",
    ),
    pytest.param(
        ["eval", "{a}", "--data", "imagenet"], ["unknown dataset 'imagenet'", "choose one of"], id="unknown-zoo-dataset"
    ),
    pytest.param(["study", "no-such-study"], ["unknown study", "--list"], id="unknown-study"),
    pytest.param(
        ["train", "--out", "{OUT}", "--model", "nopkg_zz:factory"],
        ["cannot import module 'nopkg_zz'"],
        id="factory-not-importable",
    ),
    pytest.param(
        ["eval", "{a}", "--model-args", "width"], ["'width' must look like key=value"], id="model-args-no-equals"
    ),
    pytest.param(
        ["eval", "{a}", "--model-args", "width=abc"], ["must be an integer", "'abc'"], id="model-args-not-an-integer"
    ),
    pytest.param(
        ["eval", "{a}", "--model-args", "nosuch=1"],
        ["unknown argument 'nosuch'", "valid arguments"],
        id="model-args-unknown",
    ),
    pytest.param(
        ["eval", "{a}", "--data-args", "n_train=5"],
        ["unknown argument 'n_train'", "valid arguments"],
        id="data-args-unknown",
    ),
    pytest.param(["eval", "{a}", "--data-args", "=,=="], ["unknown argument"], id="data-args-empty-key"),
    pytest.param(
        ["hessian", "{a}", "--curvature", "a\nb\x1b"],
        ["unknown --curvature 'a\\nb\\x1b'"],
        id="control-characters-in-a-value",
    ),
    # grids
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "-1:1", "--y", "-1:1:3"],
        ["A:B:N", "-1:1:51"],
        id="grid-without-count",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "-1:1:0", "--y", "-1:1:3"],
        ["0 points", "at least 1"],
        id="grid-zero-points",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "1:1:5", "--y", "-1:1:3"],
        ["at least 2 distinct values"],
        id="grid-one-value",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x=-1:1:100000000", "--y", "-1:1:3"],
        ["100,000,000 points", "use fewer points"],
        id="grid-huge",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "-1:1:3000", "--y", "-1:1:3000"],
        ["9,000,000 points", "fewer points"],
        id="grid-product-huge",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "a:b:c", "--y", "-1:1:3"], ["A:B:N"], id="grid-not-numbers"
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "-1:1:3", "--y", "nan:1:3"], ["non-finite end"], id="grid-nan-end"
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--x", "-1e308:1e308:3", "--y", "-1:1:3", "--data", "nope"],
        ["--x '-1e308:1e308:3' spans more than a float64"],
        id="grid-overflowing-span",
    ),
    pytest.param(
        ["interpolate", "{a}", "{b}", "--out", "{OUT}", "--range", "0:1:1000000000"], ["at most"], id="range-huge"
    ),
    pytest.param(
        ["interpolate", "{a}", "{b}", "--out", "{OUT}", "--range", "0:1:1e10"],
        ["A:B:N"],
        id="range-count-not-an-integer",
    ),
    # policies, devices, counts
    pytest.param(
        ["eval", "{a}", "--bn", "fresh"], ["unknown --bn 'fresh'", "running, recompute, train"], id="bn-unknown-eval"
    ),
    pytest.param(
        ["connect", "{a}", "{b}", "--out", "{OUT}", "--bn", "batch"], ["unknown --bn 'batch'"], id="bn-unknown-connect"
    ),
    pytest.param(
        ["eval", "{a}", "--device", "mps"], ["unsupported --device 'mps'", "cpu, cuda or cuda:N"], id="device-mps-eval"
    ),
    pytest.param(
        ["simplex", "{a}", "--out", "{OUT}", "--device", "mps"], ["unsupported --device 'mps'"], id="device-mps-simplex"
    ),
    pytest.param(
        ["interpolate", "{a}", "{b}", "--out", "{OUT}", "--steps", "0"], ["--steps must be at least 2"], id="steps-zero"
    ),
    pytest.param(
        ["trajectory", "{run}", "--out", "{OUT}", "--steps", "-3"], ["--steps must be at least 1"], id="steps-negative"
    ),
    pytest.param(
        ["connect", "{a}", "{b}", "--out", "{OUT}", "--points", "0"],
        ["--points must be at least 2"],
        id="points-zero-connect",
    ),
    pytest.param(
        ["wedge", "{a}", "{b}", "--out", "{OUT}", "--points", "-1"],
        ["--points must be at least 2"],
        id="points-negative-wedge",
    ),
    pytest.param(["eval", "{a}", "--batch-size", "0"], ["at least 1"], id="batch-size-zero"),
    pytest.param(
        ["connect", "{a}", "{b}", "--out", "{OUT}", "--batch-size", "-1"],
        ["--batch-size must be at least 1"],
        id="batch-size-negative",
    ),
    pytest.param(["train", "--out", "{OUT}", "--epochs", "0"], ["--epochs must be at least 1"], id="epochs-zero"),
    pytest.param(["fge", "{a}", "--epochs", "-2"], ["--epochs must be at least 1"], id="epochs-negative"),
    pytest.param(
        ["train", "--out", "{OUT}", "--lr", "inf", *ONE, *TINY],
        ["--lr must be a positive finite number"],
        id="lr-infinite",
    ),
    pytest.param(
        ["train", "--out", "{OUT}", "--wd", "nan", *ONE, *TINY], ["--wd must be a finite number"], id="wd-nan"
    ),
    pytest.param(
        ["train", "--out", "{OUT}", "--momentum", "nan", *ONE, *TINY],
        ["--momentum must be a finite number"],
        id="momentum-nan",
    ),
    pytest.param(
        ["interpolate", "{a}", "{b}", "--out", "{OUT}", "--seed", str(2**70)],
        ["--seed must be an integer from 0 to 4294967295"],
        id="seed-overflow",
    ),
    pytest.param(
        ["align", "{a}", "{b}", "--out", "{OUT}", "--seed", "-1"],
        ["--seed must be an integer from 0"],
        id="seed-negative",
    ),
    # one command's inputs used wrongly
    pytest.param(
        ["connect", "{a}", "{a}", "--out", "{OUT}"],
        ["A and B are the same file", "two different minima"],
        id="connect-a-a",
    ),
    pytest.param(
        ["connect", "{a}", "{a_copy}", "--out", "{OUT}"], ["hold the same weights"], id="connect-same-weights"
    ),
    pytest.param(
        ["interpolate", "{a}", "{a_copy}", "--out", "{OUT}"],
        ["hold the same weights", "single point"],
        id="interpolate-same-weights",
    ),
    pytest.param(
        ["permute", "{a}", "--out", "{a}"], ["would overwrite an input", "another file"], id="permute-out-onto-input"
    ),
    pytest.param(
        ["permute", "{a}", "--out", "{dir}/a.json"], ["would overwrite an input"], id="permute-out-onto-sidecar"
    ),
    pytest.param(["permute", "{a}", "--out", "{dir}"], ["is a folder", "give a file path"], id="permute-out-folder"),
    pytest.param(
        ["surface", "{a}", "--through", "{b}", "--out", "{OUT}"],
        ["--through takes two checkpoints"],
        id="through-one-value",
    ),
    pytest.param(
        ["surface", "{a}", "--out", "{OUT}", "--through", "{b}"],
        ["--through takes two checkpoints"],
        id="through-one-value-last",
    ),
    pytest.param(
        ["surface", "{a}", "--through", "{b}", "{a_copy}", "--directions", "hessian", "--out", "{OUT}"],
        ["give one of them"],
        id="through-and-hessian-directions",
    ),
    pytest.param(
        ["swap", "{a}", "--layer", "fc0", "--i", "0"], ["give either --i I --j J, or --best"], id="swap-i-without-j"
    ),
    pytest.param(
        ["eval", "{a}", "--data", "blobs"], ["cannot run on data", "--model / --data"], id="data-of-another-shape-eval"
    ),
    pytest.param(
        ["spec", "{a}", "--data", "blobs"],
        ["cannot run on an input of shape", "--model / --data"],
        id="data-of-another-shape-spec",
    ),
    # where the output goes
    pytest.param(
        ["surface", "{a}", "--out", "{unwritable}", *GRID],
        ["cannot create --out", "choose a folder"],
        id="out-unwritable",
    ),
    pytest.param(
        ["hessian", "{a}", "--n-train", "20", "--top-k", "1", "--out", "{unwritable}"],
        ["cannot create --out"],
        id="out-unwritable-hessian",
    ),
    pytest.param(
        ["permute", "{a}", "--out", "{unwritable}/p.safetensors"],
        ["cannot create --out", "choose a folder"],
        id="out-unwritable-permute",
    ),
    pytest.param(
        ["train", "--out", "{file}"], ["exists and is not a folder", "choose another path"], id="out-is-a-file"
    ),
]


@pytest.mark.parametrize("argv, expected", CASES)
def test_bad_argument(argv, expected, inputs, tmp_path, capsys):
    run_bad_input(argv, expected, inputs, tmp_path, capsys)


def test_there_are_at_least_40_named_bad_inputs():
    from test_bad_inputs import CASES as FILE_CASES

    ids = [c.id for c in CASES + FILE_CASES]
    assert len(set(ids)) == len(ids) >= 40
    assert not [c.id for c in CASES + FILE_CASES if c.marks], "no case may be marked (xfail, skip)"


LIGHT = """
import sys
import modescape.cli
HEAVY = ("torch", "numpy", "matplotlib", "scipy", "xarray", "zarr")
print("LIGHT import", None, sorted(m for m in HEAVY if m in sys.modules))
for argv in {argvs!r}:
    try:
        modescape.cli.main(argv)
    except SystemExit as e:
        print("LIGHT", argv[0], e.code, sorted(m for m in HEAVY if m in sys.modules))
"""
LIGHT_CALLS = [
    (["--help"], 0),
    (["surface", "--help"], 0),
    (["eval", "--bn", "fresh", "missing.safetensors"], 2),
    (["surface", "missing.safetensors", "--out", "o", "--x", "a:b:c"], 2),
    (["interpolate", "a", "b", "--out", "o", "--seed", "-1"], 2),
]


def test_the_command_line_starts_without_torch_or_numpy(tmp_path):
    """``import modescape.cli``, then ``modescape --help`` and user errors, in a fresh process, import neither
    torch nor numpy (nor the other heavy libraries): they answer at once (issue 14, item 10)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = LIGHT.format(argvs=[argv for argv, _ in LIGHT_CALLS])
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "MODESCAPE_PROGRESS": "0"},
    )
    assert p.returncode == 0, p.stderr
    expected = ["LIGHT import None []"] + [f"LIGHT {argv[0]} {code} []" for argv, code in LIGHT_CALLS]
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("LIGHT ")] == expected, (p.stdout, p.stderr)

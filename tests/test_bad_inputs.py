"""Named bad inputs, files: missing, empty, corrupt or truncated checkpoints and sidecars, pickles with code,
folders and FIFOs where a file belongs, checkpoints of two architectures, NaN weights, user factories that
fail and data they return that cannot be used, damaged result stores, curve folders and SWAG states
(issue 14, item 9; the bad arguments are in `test_bad_arguments.py`).

Each case runs the command line in-process (`conftest.run_cli`) on the tiny inputs of
`badinput_helpers.make_inputs` (untrained digits MLPs with sidecars, damaged copies of them, a small result
store, FIFOs, ...) and asserts, through `badinput_helpers.run_bad_input`, exit status 2, one line on stderr
that says what is wrong (and, where the message gives it, what to do), no traceback, and that no file was
created, changed or half-written: the inputs and the test's folder are snapshotted before and after (paths,
sizes, mtimes, content hashes; FIFOs by type only, never opened), and a ``--out`` folder the command was
given must not exist afterwards. A command that opens a FIFO is unblocked by a watchdog process and the case
fails as "hung". Warnings are shown on stderr as a shell shows them, so a ``RuntimeWarning`` printed before
the error line counts as a second line.
"""

from __future__ import annotations

import json
import shutil

import pytest
from badinput_helpers import FACTORIES_MODULE, run_bad_input, shared_inputs
from conftest import run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


F = FACTORIES_MODULE
GRID = ["--x", "-1:1:3", "--y", "-1:1:3"]
ONE = ["--epochs", "1"]

# (argv, substrings the one line must hold). {NAME} is a path from make_inputs, {OUT} a fresh --out folder
# two levels below the test's tmp_path.
CASES = [
    # missing, empty, corrupt, truncated checkpoints and sidecars
    pytest.param(["eval", "{missing}"], ["not found", "missing.safetensors"], id="checkpoint-missing"),
    pytest.param(
        ["interpolate", "{a}", "{missing}", "--out", "{OUT}"], ["checkpoint B not found"], id="checkpoint-b-missing"
    ),
    pytest.param(["eval", "{empty}"], ["not a readable safetensors file", "re-save it"], id="checkpoint-empty"),
    pytest.param(["eval", "{garbage}"], ["not a readable safetensors file", "re-save it"], id="checkpoint-corrupt"),
    pytest.param(
        ["surface", "{trunc}", "--out", "{OUT}", *GRID],
        ["not a readable safetensors file", "re-save"],
        id="checkpoint-truncated",
    ),
    pytest.param(
        ["eval", "{badside}"], ["badside.json is not valid JSON", "restore or delete it"], id="sidecar-corrupt"
    ),
    pytest.param(
        ["eval", "{listside}"], ["listside.json holds a JSON list, not an object"], id="sidecar-not-an-object"
    ),
    pytest.param(["eval", "{bare}"], ["no sidecar", "--model"], id="checkpoint-without-sidecar"),
    pytest.param(
        ["eval", "{evil}", "--model", "mlp", "--model-args", "depth=1,width=8"],
        ["pickled Python objects", "never runs code", "safetensors"],
        id="pickle-with-code",
    ),
    pytest.param(["eval", "{list_pt}", "--model", "mlp"], ["does not hold a state dict"], id="pt-not-a-state-dict"),
    pytest.param(
        ["eval", "{garbage_pt}", "--model", "mlp"],
        ["not a readable PyTorch state dict", "safetensors"],
        id="pt-corrupt",
    ),
    pytest.param(
        ["eval", "{npz}", "--model", "mlp"], ["unknown checkpoint type", ".safetensors"], id="checkpoint-unknown-suffix"
    ),
    pytest.param(["eval", "{run}"], ["is a folder", "final.safetensors"], id="folder-as-checkpoint"),
    pytest.param(
        ["connect", "{emptydir}", "{b}", "--out", "{OUT}"],
        ["is a folder", "pass a checkpoint A file"],
        id="folder-as-checkpoint-connect",
    ),
    pytest.param(
        ["interpolate", "{fifo}", "{b}", "--out", "{OUT}"],
        ["not a regular file", "pass a file"],
        id="fifo-checkpoint-interpolate",
    ),
    pytest.param(["sharpness", "{fifo}"], ["not a regular file"], id="fifo-checkpoint-sharpness"),
    pytest.param(["eval", "{fifo}"], ["not a regular file"], id="fifo-checkpoint-eval"),
    pytest.param(["eval", "{fifoside}"], ["fifoside.json", "not a regular file"], id="fifo-sidecar"),
    pytest.param(
        ["permute", "{a}", "--spec", "{fifo}", "--out", "{OUT}/p.safetensors"],
        ["--spec", "regular file"],
        id="fifo-spec-permute",
    ),
    pytest.param(
        ["permute", "{a}", "--spec", "{b}", "--out", "{OUT}/p.safetensors"],
        ["cannot read permutation spec", "not a text (JSON) file"],
        id="spec-binary-file",
    ),
    pytest.param(
        ["permute", "{a}", "--spec", "{garbage}", "--out", "{OUT}/p.safetensors"],
        ["cannot read permutation spec"],
        id="spec-not-json",
    ),
    # two models of different architectures
    pytest.param(
        ["interpolate", "{a}", "{w16}", "--out", "{OUT}"],
        ["same architecture as A", "has shape"],
        id="mismatch-interpolate",
    ),
    pytest.param(
        ["connect", "{a}", "{w16}", "--out", "{OUT}"],
        ["has shape [16, 64]", "check the model arguments"],
        id="mismatch-connect",
    ),
    pytest.param(["align", "{a}", "{w16}", "--out", "{OUT}"], ["against A", "has shape"], id="mismatch-align"),
    pytest.param(
        ["surface", "{a}", "--through", "{b}", "{w16}", "--out", "{OUT}"],
        ["C (", "same architecture"],
        id="mismatch-through",
    ),
    pytest.param(["ensemble", "{a}", "{w16}"], ["ensemble member", "has shape"], id="mismatch-ensemble"),
    pytest.param(
        ["ensemble", "{a}", "{w16}", "--out", "{OUT}"], ["ensemble member", "has shape"], id="mismatch-ensemble-out"
    ),
    # NaN weights
    pytest.param(
        ["eval", "{nan}"],
        ["'fc0.weight' has NaN or infinite values", "use an earlier checkpoint"],
        id="nan-weights-eval",
    ),
    pytest.param(["interpolate", "{a}", "{nan}", "--out", "{OUT}"], ["NaN or infinite"], id="nan-weights-b"),
    pytest.param(["hessian", "{nan}", "--out", "{OUT}"], ["NaN or infinite"], id="nan-weights-hessian"),
    # user factories and their data
    pytest.param(
        ["eval", "{a}", "--model", f"{F}:model_boom"],
        [f"model factory '{F}:model_boom' raised ValueError: no such layer size", "--debug"],
        id="model-factory-raises",
    ),
    pytest.param(
        ["train", "--out", "{OUT}", "--data", f"{F}:boom"],
        ["raised RuntimeError: the factory exploded", "--debug"],
        id="data-factory-raises",
    ),
    pytest.param(
        ["eval", "{a}", "--model", f"{F}:not_a_module"],
        ["returned str, not an nn.Module"],
        id="model-factory-not-a-module",
    ),
    pytest.param(
        ["eval", "{a}", "--data", f"{F}:not_data"], ["returned int", "return a DataSplit"], id="data-factory-not-data"
    ),
    pytest.param(
        ["eval", "{a}", "--data", f"{F}:nan_inputs"],
        ["1 of 40 inputs with NaN or infinite", "clean"],
        id="data-nan-inputs-eval",
    ),
    pytest.param(
        ["interpolate", "{a}", "{b}", "--out", "{OUT}", "--data", f"{F}:inf_inputs"],
        ["NaN or infinite"],
        id="data-inf-inputs-interpolate",
    ),
    pytest.param(
        ["train", "--out", "{OUT}", "--data", f"{F}:nan_inputs", *ONE],
        ["1 of 40 inputs with NaN"],
        id="data-nan-inputs-train",
    ),
    pytest.param(
        ["eval", "{a}", "--data", f"{F}:labels_out_of_range"],
        ["labels outside 0..9", "check the data's labels"],
        id="data-labels-out-of-range",
    ),
    pytest.param(
        ["hessian", "{a}", "--data", f"{F}:labels_out_of_range"],
        ["labels outside 0..9"],
        id="data-labels-out-of-range-hessian",
    ),
    pytest.param(["eval", "{a}", "--data", f"{F}:negative_labels"], ["labels must be >= 0"], id="data-negative-labels"),
    pytest.param(["eval", "{a}", "--data", f"{F}:empty"], ["N >= 1"], id="data-empty"),
    # result stores, curves, SWAG states
    pytest.param(
        ["plot", "{store_bad_root}"],
        ["not a readable modescape result", "delete it and rerun"],
        id="store-corrupt-metadata",
    ),
    pytest.param(
        ["topology", "{store_chunk_deleted}"], ["is damaged", "missing or corrupt", "rerun"], id="store-chunk-deleted"
    ),
    pytest.param(["plot", "{store_chunk_corrupt}", "--out", "{OUT}"], ["is damaged"], id="store-chunk-corrupt"),
    pytest.param(["plot", "{emptydir}"], ["no result at", "pass a result.zarr folder"], id="store-missing"),
    pytest.param(
        ["plot", "{store_coord_deleted}"], ["is damaged", "coordinates of x"], id="store-coordinate-deleted-plot"
    ),
    pytest.param(
        ["topology", "{store_coord_deleted}", "--no-figures"],
        ["is damaged", "coordinates of x", "rerun"],
        id="store-coordinate-deleted-topology",
    ),
    pytest.param(["plot", "{store}", "--var", "nope"], ["no variable 'nope'", "train_loss"], id="plot-unknown-var"),
    pytest.param(["topology", "{store}", "--threshold", "-5%"], ["finite number >= 0"], id="topology-bad-threshold"),
    pytest.param(["path", "{curve_bad}"], ["not a readable curve.json", "restore it"], id="curve-json-corrupt"),
    pytest.param(["swag", "{swag_bad}"], ["not a readable SWAG state"], id="swag-state-corrupt"),
    pytest.param(
        ["trajectory", "{emptydir}", "--out", "{OUT}"],
        ["no checkpoints", "--out folder of `modescape train`"],
        id="trajectory-no-checkpoints",
    ),
    pytest.param(["correlate", "{run}"], ["at least two runs"], id="correlate-one-run"),
    pytest.param(
        ["correlate", "{run}", "{run2}", "--measures", "keskar", "--n-train", "-1"],
        ["--n-train must be at least 1"],
        id="correlate-n-train-negative",
    ),
]


@pytest.mark.parametrize("argv, expected", CASES)
def test_bad_input(argv, expected, inputs, tmp_path, capsys):
    run_bad_input(argv, expected, inputs, tmp_path, capsys)


def test_json_output_is_strict_when_results_are_not_finite(inputs, capsys):
    """--json with a non-finite result (weights whose loss overflows) prints strict JSON: null plus a
    `nonfinite` flag, never a bare NaN or Infinity."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    for argv in (
        ["eval", inputs["big"], "--json"],
        ["path", inputs["a"], inputs["big"], "--points", "3", "--json"],
        ["ensemble", inputs["a"], inputs["big"], "--json"],
    ):
        code, out, err = run_cli(argv, capsys)
        assert code == 0, err
        doc = json.loads(out, parse_constant=refuse)
        assert "nonfinite" in json.dumps(doc), out
        if argv[0] == "eval":
            assert doc[0]["train_loss"] is None and doc[0]["nonfinite"]["train_loss"] in ("nan", "inf", "-inf")


def test_lost_coordinates_are_refused_then_rewritten_on_resume(inputs, tmp_path):
    """A deleted coordinate chunk is damage, not NaN coordinates: `load` refuses the result in one line, and
    reopening it with its grid (a rerun with the same --out) rewrites them; the values are kept bit for bit."""
    import numpy as np

    from modescape.errors import UserError
    from modescape.store import ResultStore, load

    good = load(inputs["store"] / "result.zarr")
    damaged = tmp_path / "result.zarr"
    shutil.copytree(inputs["store_coord_deleted"] / "result.zarr", damaged)
    with pytest.raises(UserError, match="coordinates of x are missing or corrupt"):
        load(damaged)
    old = ResultStore(damaged, mode="r")
    assert old.damaged_coords() == ["x"]
    coords = {d: good[d].values for d in old.dims}
    reopened = ResultStore.open_or_create(damaged, coords, old.names, old.attrs["settings"])
    assert reopened.damaged_coords() == [] and reopened.repaired == []
    again = load(damaged)
    for d in old.dims:
        np.testing.assert_array_equal(again[d].values, good[d].values)
    for n in old.names:
        np.testing.assert_array_equal(again[n].values, good[n].values)

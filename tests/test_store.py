"""The result store: labelled zarr, settings check, corruption, and kill-and-resume bit equality."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from modescape.errors import UserError
from modescape.store import DONE, ResultStore, load

from conftest import SWEEP_SCRIPT_HEAD

SRC = str(Path(__file__).resolve().parents[1] / "src")
COORDS = {"x": np.linspace(-1, 1, 3), "y": np.linspace(0, 1, 7)}


def test_create_write_reopen_and_load(tmp_path):
    p = tmp_path / "result.zarr"
    st = ResultStore.open_or_create(p, COORDS, ["a", "b"], {"k": 1}, {"seed": 3, "bn": "running"}, unit_rows=2)
    assert st.n_units == 2 and not st.done().any()
    vals = np.arange(28, dtype=np.float64).reshape(14, 2)
    st.write_unit(0, vals)
    again = ResultStore.open_or_create(p, COORDS, ["a", "b"], {"k": 1})
    assert again.done().tolist() == [True, False]
    ds = load(p)
    np.testing.assert_array_equal(ds.a.values[:2], vals[:, 0].reshape(2, 7))
    assert np.isnan(ds.a.values[2]).all() and not ds.attrs["complete"]
    with pytest.raises(UserError, match="not computed"):
        again.finish()
    again.write_unit(1, np.ones((7, 2)))
    again.finish()
    ds = load(tmp_path)  # the folder holding result.zarr also works when named so
    assert ds.attrs["complete"] and ds.attrs["seed"] == 3 and ds.attrs["bn"] == "running"
    np.testing.assert_array_equal(ds.x.values, COORDS["x"])
    assert DONE not in ds
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left behind
    import warnings

    import xarray as xr

    with warnings.catch_warnings():  # a finished result opens with plain xarray, without a warning
        warnings.simplefilter("error")
        plain = xr.open_zarr(str(p))
    assert plain.attrs["complete"] and float(plain.a.values[0, 0]) == 0.0


def test_other_settings_are_refused(tmp_path):
    p = tmp_path / "r.zarr"
    ResultStore.open_or_create(p, COORDS, ["a"], {"grid": 1, "bn": "running"})
    with pytest.raises(UserError, match="bn differ"):
        ResultStore.open_or_create(p, COORDS, ["a"], {"grid": 1, "bn": "recompute"})


def test_corrupt_store_is_a_one_line_user_error(tmp_path):
    p = tmp_path / "r.zarr"
    ResultStore.open_or_create(p, COORDS, ["a"], {})
    (p / "zarr.json").write_text("{ not json")
    with pytest.raises(UserError) as err:
        load(p)
    assert "\n" not in str(err.value) and "delete it" in str(err.value)
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    with pytest.raises(UserError, match="not a readable modescape result"):
        ResultStore(junk)


SCRIPT = SWEEP_SCRIPT_HEAD + textwrap.dedent("""
    ev = Evaluator(net, {{"train": (split.train[0][:300], split.train[1][:300]),
                          "test": (split.test[0][:100], split.test[1][:100])}}, progress=False)
    delay = float(sys.argv[2])
    if sys.argv[3] != "auto":
        ev.family_mode = sys.argv[3]  # else: a resumed run takes the mode recorded in the store
    if delay:
        slow = ev.evaluate_family
        def evaluate_family(*a, **k):
            time.sleep(delay)
            return slow(*a, **k)
        ev.evaluate_family = evaluate_family
    sweep(Plane(sp.WeightSpace(net).point(net), dx, dy), ev, {{"x": "-1:1:12", "y": "0:1:3"}}, store=sys.argv[1],
          rows=1, progress=False)
""")


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_bit_for_bit(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(src=SRC))
    env = {**os.environ, "MODESCAPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    run = lambda out, delay, mode: [sys.executable, str(script), str(out), str(delay), mode]  # noqa: E731
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(run(killed, 0.4, "shared-vmap"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    n_done = 0
    while time.time() < deadline and proc.poll() is None:
        if (killed / DONE / "zarr.json").exists():
            try:  # the writer may be halfway through a chunk while we poll: read again next time
                n_done = int(np.asarray(zarr.open_array(str(killed / DONE), mode="r")[:]).sum())
            except Exception:
                n_done = 0
            if n_done >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ResultStore(killed)
    done = partial.done()
    assert 3 <= done.sum() < partial.n_units and not partial.attrs["complete"]
    resumed = subprocess.run(run(killed, 0, "auto"), env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run(run(tmp_path / "fresh.zarr", 0, "shared-vmap"), env=env, capture_output=True, text=True,
                           timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    a, b = load(killed), load(tmp_path / "fresh.zarr")
    assert a.attrs["complete"] and a.attrs["eval_mode"] == b.attrs["eval_mode"]
    for v in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert a[v].values.tobytes() == b[v].values.tobytes(), v

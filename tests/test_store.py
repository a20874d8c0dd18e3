"""The result store: labelled zarr, settings check, corruption, damage detection and repair, and
kill-and-resume bit equality (one process, and torchrun with a rank killed)."""

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
from conftest import SWEEP_SCRIPT_HEAD

from modescape.errors import UserError
from modescape.store import CHECKSUMS, DONE, ResultStore, load

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
    assert DONE not in ds and CHECKSUMS not in ds
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
    fresh = subprocess.run(
        run(tmp_path / "fresh.zarr", 0, "shared-vmap"), env=env, capture_output=True, text=True, timeout=120
    )
    assert fresh.returncode == 0, fresh.stderr
    a, b = load(killed), load(tmp_path / "fresh.zarr")
    assert a.attrs["complete"] and a.attrs["eval_mode"] == b.attrs["eval_mode"]
    for v in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert a[v].values.tobytes() == b[v].values.tobytes(), v


# -- damage: detected by load, recomputed on rerun ------------------------------------------------------
@pytest.fixture(scope="module")
def plane_sweep():
    """A digits MLP plane on 6 x 3 points, one unit (3 points) per x row: (run(store) -> Dataset, calls)."""
    import torch

    from modescape import landscape
    from modescape import space as sp
    from modescape.directions import random_directions
    from modescape.evaluate import Evaluator
    from modescape.families import Plane
    from modescape.zoo import build_model, load_dataset

    split = load_dataset("digits")
    torch.manual_seed(0)
    net = build_model("mlp", split.input_shape, 10, depth=1, width=16)
    ev = Evaluator(
        net,
        {"train": (split.train[0][:200], split.train[1][:200]), "test": (split.test[0][:100], split.test[1][:100])},
        progress=False,
    )
    plane = Plane(sp.WeightSpace(net).point(net), *random_directions(net, 2, seed=0))
    calls = []

    def run(store, **kw):
        real = landscape.evaluate_coords

        def counting(family, evaluator, c):
            calls.append(np.asarray(c).copy())
            return real(family, evaluator, c)

        landscape.evaluate_coords = counting
        try:
            return landscape.sweep(plane, ev, {"x": "-1:1:6", "y": "0:1:3"}, store=store, rows=1, **kw)
        finally:
            landscape.evaluate_coords = real

    return run, calls


METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def test_damaged_chunks_are_refused_by_load_then_recomputed_bit_for_bit(tmp_path, plane_sweep, capsys):
    run, calls = plane_sweep
    p = tmp_path / "result.zarr"
    run(p)
    clean = {v: load(p)[v].values.tobytes() for v in METRICS}
    kept = {f: f.read_bytes() for f in p.glob("*/c/*/0") if f.parts[-3] != "1"}
    (p / "train_loss" / "c" / "1" / "0").unlink()  # unit 1: a deleted chunk (read as NaN before)
    # unit 4: another unit's chunk, which decodes fine: only the checksum can tell
    (p / "test_accuracy" / "c" / "4" / "0").write_bytes((p / "test_accuracy" / "c" / "3" / "0").read_bytes())
    chunk = p / "train_accuracy" / "c" / "5" / "0"  # unit 5: a truncated chunk, which does not decode
    chunk.write_bytes(chunk.read_bytes()[:7])
    for target in (p, tmp_path):  # the store, or the --out folder holding it (as `modescape plot` reads it)
        with pytest.raises(UserError) as err:
            load(target)
        msg = str(err.value)
        assert msg == (
            f"result {p} is damaged: units 1, 4-5 (points 3-5, 12-17) are missing or corrupt; "
            f"rerun the command that made it with the same --out to recompute them"
        )
    capsys.readouterr()
    calls.clear()
    again = run(p)
    err = capsys.readouterr().err
    assert f"{p}: units 1, 4-5 (points 3-5, 12-17) were missing or corrupt: computing again" in err
    assert "resuming: 9 of 18 points done" in err
    xs = np.linspace(-1, 1, 6)
    assert sorted({float(c[0, 0]) for c in calls}) == [xs[1], xs[4], xs[5]]  # exactly the damaged units
    assert again.attrs["complete"]
    for v in METRICS:
        assert again[v].values.tobytes() == clean[v] == load(p)[v].values.tobytes(), v
    for f, data in kept.items():  # the undamaged units' chunks are the same files as before
        if f.parts[-3] not in ("4", "5"):
            assert f.read_bytes() == data, f
    calls.clear()
    run(p)  # a finished result: nothing computed, and it says so
    assert not calls and "resuming: 18 of 18 points done" in capsys.readouterr().err


def test_damaged_bookkeeping_and_stores_without_checksums(tmp_path):
    p = tmp_path / "r.zarr"
    st = ResultStore.open_or_create(p, COORDS, ["a", "b"], {}, unit_rows=1)
    for u in range(3):
        st.write_unit(u, np.full((7, 2), np.nan) if u == 1 else np.arange(14.0).reshape(7, 2) + u)
    st.finish()
    assert st.damaged() == []  # an all-NaN unit (zarr writes no chunk for it) is not damage
    (p / DONE / "c" / "2").unlink()  # a lost done mark in a complete result
    (p / CHECKSUMS / "c" / "0").write_bytes(b"junk")  # an unreadable checksum
    assert ResultStore(p, mode="r").damaged() == [0, 2]
    with pytest.raises(UserError, match=r"units 0, 2 \(points 0-6, 14-20\) are missing"):
        load(p)
    st = ResultStore.open_or_create(p, COORDS, ["a", "b"], {})
    assert st.repaired == [0, 2] and st.done().tolist() == [False, True, False] and not st.attrs["complete"]
    assert ResultStore(p).damaged() == []  # now simply unfinished: load shows NaN there, as for a killed run
    assert np.isnan(load(p).a.values[[0, 2]]).all()

    # a store written before checksums: a done unit whose chunks are gone reads as NaN and counts as damaged
    q = tmp_path / "old.zarr"
    st = ResultStore.open_or_create(q, COORDS, ["a"], {}, unit_rows=1)
    import shutil

    shutil.rmtree(q / CHECKSUMS)
    st = ResultStore(q)
    assert not st.has_checksums
    for u in range(3):
        st.write_unit(u, np.arange(7.0) + u)
    (q / "a" / "c" / "1" / "0").unlink()
    with pytest.raises(UserError, match=r"unit 1 \(points 7-13\) is missing or corrupt"):
        load(q)
    st = ResultStore.open_or_create(q, COORDS, ["a"], {})  # reopening adds checksums and marks unit 1 not done
    assert st.has_checksums and st.repaired == [1] and st.done().tolist() == [True, False, True]
    st.write_unit(1, np.arange(7.0) + 1)
    st.finish()
    assert ResultStore(q, mode="r").damaged() == []
    np.testing.assert_array_equal(load(q).a.values, np.arange(7.0)[None] + np.arange(3.0)[:, None])
    (q / "a" / "c" / "2" / "0").write_bytes((q / "a" / "c" / "0" / "0").read_bytes())
    with pytest.raises(UserError, match="unit 2 "):  # the checksums added on reopening catch a swapped chunk
        load(q)


# -- torchrun with a rank killed ---------------------------------------------------------------------
KILL_SCRIPT = SWEEP_SCRIPT_HEAD + textwrap.dedent("""
    from modescape.store import ResultStore
    if sys.argv[2] == "kill" and os.environ.get("RANK") == "1":  # rank 1 dies right after its first unit
        write = ResultStore.write_unit
        def write_then_die(self, u, values):
            write(self, u, values)
            os._exit(1)
        ResultStore.write_unit = write_then_die
    ev = Evaluator(net, {{"train": (split.train[0][:300], split.train[1][:300])}}, progress=False)
    ev.family_mode = "loop"
    if sys.argv[2] == "kill" and os.environ.get("RANK") == "0":  # rank 0 takes longer: still at work when killed
        slow = ev.evaluate_family
        def evaluate_family(*a, **k):
            time.sleep(0.3)
            return slow(*a, **k)
        ev.evaluate_family = evaluate_family
    sweep(Plane(sp.WeightSpace(net).point(net), dx, dy), ev, {{"x": "-1:1:6", "y": "0:1:3"}}, store=sys.argv[1],
          rows=1)
    from modescape import distributed
    distributed.finish()
""")


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # one torchrun job at a time: each starts 3 processes on 2 cores
def test_torchrun_with_a_rank_killed_reruns_to_one_process_result(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(KILL_SCRIPT.format(src=SRC))
    env = {**os.environ, "MODESCAPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.zarr"), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    two = tmp_path / "two.zarr"
    killed = subprocess.run(torchrun + [str(two), "kill"], env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode != 0
    done = ResultStore(two).done()
    assert done[1] and not done[3] and not done.all()  # rank 1 wrote unit 1, and died before unit 3
    k = 3 * int(done.sum())
    rerun = subprocess.run(torchrun + [str(two), "run"], env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming: {k} of 18 points done" in rerun.stderr
    a, b = load(tmp_path / "one.zarr"), load(two)
    assert b.attrs["complete"] and b.attrs["world_size"] == 2 and a.attrs["world_size"] == 1
    for v in ("train_loss", "train_accuracy"):
        assert a[v].values.tobytes() == b[v].values.tobytes(), v
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".lock")]  # rank 0 released its lock

"""Locks on output folders: a second process is refused with the holder's pid, the lock dies with its
holder (SIGKILL included), ranks of one torchrun job are not refused, and a locked store is not touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modescape import locks
from modescape.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src")

HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from modescape import locks
    getattr(locks, sys.argv[1])(sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes the pipe, or kills this process
""")


def hold(kind: str, target: Path) -> subprocess.Popen:
    """A process holding ``locks.<kind>(target)`` (a light one: the lock module imports no torch)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(src=SRC), kind, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_until_the_holder_is_killed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = hold("lock_out", out)
    try:
        with pytest.raises(UserError) as err:
            locks.lock_out(out)
        assert str(err.value) == (
            f"--out {out} is in use by another modescape process (pid {proc.pid}): "
            f"wait for it to finish, or choose another --out"
        )
        with pytest.raises(UserError, match="in use"):  # waiting a little is not enough either
            locks.lock_out(out, wait=0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / locks.LOCK_NAME).exists()  # left behind by the killed holder: not a stale lock
    lock = locks.lock_out(out)
    assert (out / locks.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert locks.lock_out(out) is lock and lock.count == 2  # reentrant within a process
    lock.release()
    assert (out / locks.LOCK_NAME).exists()
    lock.release()
    assert not (out / locks.LOCK_NAME).exists()  # released: no lock file left


def test_wait_takes_the_lock_when_the_holder_ends(tmp_path):
    proc = hold("lock_out", tmp_path)
    import threading

    threading.Timer(0.3, proc.stdin.close).start()  # the holder exits a moment later
    lock = locks.lock_out(tmp_path, wait=30)
    proc.wait()
    with lock:
        assert (tmp_path / locks.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / locks.LOCK_NAME).exists()


def test_other_ranks_of_a_torchrun_job_take_no_lock(tmp_path, monkeypatch):
    proc = hold("lock_out", tmp_path)  # rank 0 of the job holds it
    try:
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert locks.lock_out(tmp_path) is None and locks.lock_store(tmp_path / "result.zarr") is None
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            locks.lock_out(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_a_locked_store_is_refused_before_anything_is_written(tmp_path):
    from modescape.landscape import Grid, run_units

    store = tmp_path / "out" / "result.zarr"
    proc = hold("lock_store", store)
    grid = Grid({"x": np.linspace(0, 1, 4)})
    measure = lambda c: np.asarray(c, dtype=np.float64)[:, :1] * 2  # noqa: E731
    try:
        with pytest.raises(UserError) as err:
            run_units(grid, ["v"], measure, store, {"k": 1}, rows=2, progress=False)
        assert str(err.value) == (
            f"result {store} is in use by another modescape process (pid {proc.pid}): "
            f"wait for it to finish, or write to another folder"
        )
        assert not store.exists()
    finally:
        proc.kill()
        proc.wait()
    ds = run_units(grid, ["v"], measure, store, {"k": 1}, rows=2, progress=False)
    np.testing.assert_array_equal(ds.v.values, np.linspace(0, 1, 4) * 2)
    assert sorted(os.listdir(store.parent)) == ["result.zarr"]  # the lock file went with the lock


def test_a_forked_child_does_not_hold_or_remove_its_parents_lock(tmp_path):
    lock = locks.lock_out(tmp_path)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock is forgotten (it is refused too), its exit removes nothing
            try:
                locks.lock_out(tmp_path)
                code = 1
            except UserError:
                code = 0
            locks.release_all()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (tmp_path / locks.LOCK_NAME).read_text().split()[0] == str(os.getpid())
        proc = subprocess.run(
            [sys.executable, "-c", HOLDER.format(src=SRC), "lock_out", str(tmp_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and f"pid {os.getpid()}" in proc.stderr  # still held by this process
    finally:
        lock.release()

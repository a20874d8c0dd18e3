"""Shared by the bad-input tests (`test_bad_inputs.py`, `test_bad_arguments.py`) and the fuzz (`test_fuzz.py`):
the tiny inputs they run commands on, snapshots that show whether a command changed any file, warnings
shown as a shell shows them, a watchdog that unblocks a command reading a FIFO, and the one-line check.

`shared_inputs` builds the inputs once per test process (each xdist worker), whichever module asks first;
no test writes into them (the fuzz works on private copies), and each bad-input case checks that.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
import sys
import time
import warnings
from pathlib import Path

import torch
from conftest import run_cli

FACTORIES_MODULE = "_modescape_bad_inputs_factories"
FACTORIES_SOURCE = '''
"""User factories for the bad-input tests: models and data that fail in the ways users' code does."""
import torch


def _digits_like(n=40, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % classes


def _split(x, y):
    return {"train": (x, y), "test": (x[:20].clone(), y[:20].clone())}


def boom(**kwargs):
    raise RuntimeError("the factory exploded\\nwith a second line")


def model_boom(**kwargs):
    raise ValueError("no such layer size")


def not_a_module(**kwargs):
    return "hello"


def not_data(**kwargs):
    return 42


def nan_inputs(**kwargs):
    x, y = _digits_like()
    x[3, 0, 0, 0] = float("nan")
    return _split(x, y)


def inf_inputs(**kwargs):
    x, y = _digits_like()
    x[5] = float("inf")
    return _split(x, y)


def labels_out_of_range(**kwargs):
    x, y = _digits_like(classes=15)
    return _split(x, y)


def negative_labels(**kwargs):
    x, y = _digits_like()
    return _split(x, y - 1)


def empty(**kwargs):
    x = torch.zeros(0, 1, 8, 8)
    y = torch.zeros(0, dtype=torch.long)
    return {"train": (x, y), "test": (x, y)}


def tiny(**kwargs):
    x, y = _digits_like()
    return _split(x, y)
'''


class _Evil:
    """A pickle payload that would create ``marker`` if it ever ran (it must not)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_inputs(root: Path) -> dict[str, Path]:
    """Build the inputs every bad-input case (and the fuzz) uses, in ``root/inputs``; user factories go to
    ``root/factories`` (import it with `FACTORIES_MODULE` once that folder is on sys.path). Returns the paths
    by name; ``unwritable`` is a folder path no command can create (under a read-only folder, or, where
    running as root makes chmod ineffective, under a regular file)."""
    from modescape import io
    from modescape import space as sp
    from modescape.directions import random_directions
    from modescape.evaluate import Evaluator
    from modescape.families import Plane
    from modescape.landscape import sweep
    from modescape.zoo import build_model, load_dataset

    d = root / "inputs"
    d.mkdir(parents=True)
    fac = root / "factories"
    fac.mkdir()
    (fac / f"{FACTORIES_MODULE}.py").write_text(FACTORIES_SOURCE)
    split = load_dataset("digits")
    meta = {"data": split.meta}
    p: dict[str, Path] = {"dir": d, "factories": fac}

    def mlp(width=8, seed=0):
        torch.manual_seed(seed)
        return build_model("mlp", split.input_shape, split.num_classes, depth=1, width=width)

    def save(name, net, **extra):
        p[name] = io.save_checkpoint(d / f"{name}.safetensors", net, {**meta, **extra})
        return p[name]

    a, b = mlp(seed=0), mlp(seed=1)
    save("a", a)
    save("b", b)
    save("a_copy", a)  # the same weights as A in another file
    save("w16", mlp(width=16, seed=2))  # another architecture
    state = {k: v.clone() for k, v in a.state_dict().items()}
    sidecar = (d / "a.json").read_text()

    def raw(name, tensors, side=True):  # tensors written directly (save_checkpoint refuses NaN)
        p[name] = d / f"{name}.safetensors"
        io.save_tensors(p[name], tensors)
        if side:
            (d / f"{name}.json").write_text(sidecar)
        return p[name]

    nan = {k: v.clone() for k, v in state.items()}
    nan["fc0.weight"][0, 0] = float("nan")
    raw("nan", nan)
    raw("big", {k: v * 1e25 for k, v in state.items()})  # finite weights whose loss is not finite
    raw("bare", state, side=False)  # no sidecar
    raw("badside", state)
    (d / "badside.json").write_text('{"model": {"name": "mlp", ')  # a sidecar cut mid-write
    raw("listside", state)
    (d / "listside.json").write_text('["mlp", 1]')  # valid JSON, not an object
    blob = p["a"].read_bytes()
    for name, content in (("empty", b""), ("garbage", b"\x00garbage" * 10), ("trunc", blob[: len(blob) // 2])):
        p[name] = d / f"{name}.safetensors"
        p[name].write_bytes(content)
        (d / f"{name}.json").write_text(sidecar)
    p["marker"] = root / "pickle-code-ran"
    torch.save({"fc0.weight": _Evil(str(p["marker"]))}, d / "evil.pt")
    torch.save([1, 2, 3], d / "list.pt")
    (d / "garbage.pt").write_bytes(b"PK\x03\x04junk" * 5)
    (d / "weights.npz").write_bytes(b"\x93NUMPY")
    p.update(evil=d / "evil.pt", list_pt=d / "list.pt", garbage_pt=d / "garbage.pt", npz=d / "weights.npz")
    # a training run folder: final.safetensors and three epoch checkpoints
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    io.save_checkpoint(run / "final.safetensors", a, meta)
    for e, net in enumerate((b, mlp(seed=3), a)):
        io.save_checkpoint(run / "checkpoints" / f"epoch-{e:03d}.safetensors", net, meta)
    p["run"] = run
    p["run2"] = d / "run2"  # a second run (correlate needs two)
    shutil.copytree(run, p["run2"])
    p["emptydir"] = d / "empty-folder"
    p["emptydir"].mkdir()
    # FIFOs: as a checkpoint (with a good sidecar) and as the sidecar of a good checkpoint
    p["fifo"] = d / "pipe.safetensors"
    os.mkfifo(p["fifo"])
    (d / "pipe.json").write_text(sidecar)
    raw("fifoside", state, side=False)
    os.mkfifo(d / "fifoside.json")
    p["fifos"] = [p["fifo"], d / "fifoside.json"]
    # a small result store, and damaged copies of it
    ev = Evaluator(a, {"train": split.train}, progress=False)
    dx, dy = random_directions(a, 2, seed=0)
    store = d / "store"
    sweep(
        Plane(sp.WeightSpace(a).point(a), dx, dy),
        ev,
        {"x": "-1:1:3", "y": "-1:1:3"},
        store=store / "result.zarr",
        progress=False,
        attrs={"models": {"labels": ["model"], "coords": [[0.0, 0.0]]}},
    )
    p["store"] = store

    def damaged(name, fn):
        q = d / f"store-{name}"
        shutil.copytree(store, q)
        fn(q / "result.zarr")
        p[f"store_{name.replace('-', '_')}"] = q

    damaged("bad-root", lambda z: (z / "zarr.json").write_text("{not json"))
    damaged("chunk-deleted", lambda z: (z / "train_loss" / "c" / "0" / "0").unlink())
    damaged("chunk-corrupt", lambda z: (z / "train_loss" / "c" / "0" / "0").write_bytes(b"\xff" * 81))
    damaged("coord-deleted", lambda z: (z / "x" / "c" / "0").unlink())
    # a curve folder whose curve.json is cut, and a SWAG folder whose state is junk
    (d / "curve-bad").mkdir()
    (d / "curve-bad" / "curve.json").write_text('{"a": "a.safetensors", ')
    p["curve_bad"] = d / "curve-bad"
    (d / "swag-bad").mkdir()
    io.save_checkpoint(d / "swag-bad" / "swa.safetensors", a, meta)
    (d / "swag-bad" / "swag.safetensors").write_bytes(b"junk")
    p["swag_bad"] = d / "swag-bad"
    p["file"] = d / "notes.txt"
    p["file"].write_text("a regular file\n")
    # a folder path nobody can create: under a read-only folder (chmod 0o500), or, where running as root
    # makes chmod ineffective, under a regular file
    ro = root / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    p["read_only"] = ro
    p["unwritable"] = (ro if not os.access(ro, os.W_OK) else p["file"]) / "out"
    p["missing"] = d / "missing.safetensors"
    return p


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` (not following links): files by size, mtime and content hash, folders
    and FIFOs by type only (a FIFO is never opened)."""
    snap: dict[str, tuple] = {}

    def walk(path: Path) -> None:
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return
        for e in entries:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                snap[e.path] = ("dir",)
                walk(Path(e.path))
            elif stat.S_ISREG(st.st_mode):
                with open(e.path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                snap[e.path] = ("file", st.st_size, st.st_mtime_ns, digest)
            else:
                snap[e.path] = (stat.S_IFMT(st.st_mode),)

    for r in roots:
        walk(Path(r))
    return snap


def diff(before: dict, after: dict) -> list[str]:
    """What changed between two snapshots, one line per path."""
    out = [f"created {k}" for k in after.keys() - before.keys()]
    out += [f"removed {k}" for k in before.keys() - after.keys()]
    out += [f"changed {k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    return sorted(out)


@contextlib.contextmanager
def shell_warnings():
    """Warnings printed on stderr with Python's default filters, as a user running `modescape` sees them
    (pytest records warnings instead of printing them)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category in (
            ("ignore", DeprecationWarning),
            ("ignore", PendingDeprecationWarning),
            ("ignore", ImportWarning),
            ("ignore", ResourceWarning),
        ):
            warnings.simplefilter(action, category)

        def show(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


_WATCHDOG = r"""
import os, sys, time
time.sleep(float(sys.argv[1]))
while True:  # until the test stops us: unblock whoever is blocked opening one of the FIFOs
    for f in sys.argv[2:]:
        try:
            fd = os.open(f, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when nobody is reading it
        except OSError:
            continue
        print(f, flush=True)
        os.close(fd)
    time.sleep(0.2)
"""


@contextlib.contextmanager
def fifo_watchdog(fifos, after: float = 1.0):
    """Yields a list that, once the block ends, names each FIFO a command was still blocked on ``after``
    seconds in (a correct command never opens a FIFO at all: it refuses it after a stat, so a short delay
    cannot fire for a slow but correct run). A separate process (a thread would need the GIL, which a reader
    blocked inside native code may hold) opens such a FIFO for writing and closes it again, so the reader
    sees end-of-file and the test goes on."""
    import subprocess

    fired: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(after), *map(str, fifos)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield fired
    finally:
        proc.kill()
        fired.extend(line.strip() for line in proc.communicate()[0].splitlines() if line.strip())


def check_one_line(code: int, err: str, argv) -> None:
    """Exit status 2 with exactly one non-empty line on stderr, ``error: ...``, and no traceback."""
    lines = [ln for ln in err.split("\n") if ln.strip()]  # a terminal's lines (not str.splitlines: U+0085 ...)
    assert code == 2, f"exit status {code} for {argv}; stderr:\n{err}"
    assert "Traceback" not in err, f"a traceback for {argv}:\n{err}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr for {argv}:\n{err}"
    assert lines[0].startswith("error: "), f"not an error line for {argv}: {lines[0]!r}"


# -- the inputs, built once per process ---------------------------------------------------------------

_SHARED: dict[str, dict] = {}


def shared_inputs(tmp_path_factory) -> dict:
    """`make_inputs` under the session's temporary folder, built on first use in this process; the user
    factories' folder is put on sys.path (for ``FACTORIES_MODULE:name`` specs)."""
    if "inputs" not in _SHARED:
        p = make_inputs(tmp_path_factory.mktemp("bad-inputs"))
        sys.path.insert(0, str(p["factories"]))
        atexit.register(p["read_only"].chmod, 0o700)  # so that pytest can remove it in a later session
        _SHARED["inputs"] = p
    return _SHARED["inputs"]


def expand(argv, paths: dict, out: Path) -> list[str]:
    """``{NAME}`` -> the input of that name, ``{OUT}`` -> ``out``."""
    names = {k: v for k, v in paths.items() if isinstance(v, Path)}
    return [a.format(OUT=out, **names) for a in argv]


def run_bad_input(argv, expected, inputs: dict, tmp_path: Path, capsys) -> None:
    """One named bad input: exit status 2, one line holding each of ``expected``, no file created or
    changed (the inputs, the test's folder; a ``--out`` folder must not remain), no pickle code run, no
    FIFO opened (watched when the command line names one, or the inputs' folder that holds them)."""
    out = tmp_path / "out" / "deeper"
    args = expand(argv, inputs, out)
    watched = [tmp_path, inputs["dir"], inputs["read_only"]]
    before = snapshot(*watched)
    t0 = time.perf_counter()
    fifo_near = any(name in a for a in argv for name in ("{fifo}", "{fifoside}", "{dir}"))
    with fifo_watchdog(inputs["fifos"]) if fifo_near else contextlib.nullcontext([]) as fired, shell_warnings():
        code, _, err = run_cli(args, capsys)
    assert not fired, f"hung on the FIFO {fired} ({time.perf_counter() - t0:.1f} s, unblocked by the watchdog)"
    check_one_line(code, err, args)
    for text in expected:
        assert text in err, f"{text!r} not in the message: {err.strip()}"
    changes = diff(before, snapshot(*watched))
    assert not changes, "files changed:\n" + "\n".join(changes)
    assert not (tmp_path / "out").exists()
    assert not inputs["marker"].exists(), "the pickle's code ran"

"""The fuzz's harness (`test_fuzz.py`): run one symbolic command line in-process, in a fresh folder with
private copies of the inputs it names, under a per-call limit, and judge what happened.

How a call that reaches the limit is judged: at ``limit`` seconds the stack is looked at. A call inside a
module that computes (`WORK_FILES`: training, sweeps, evaluation, curvature, symmetry, paths, ensembles,
SWA, simplices, subspaces, topology, the result store, plots, studies, the report, the zoo's data and
models; torch, numpy or matplotlib may be below it) is stopped there, and passes: it got past the argument
checks into real work. A call inside an import is let finish it (an import cut short can leave the process
in a state no user's process is in: torch scripts functions while importing, and CPython's compiler then
fails for good with "AST constructor recursion depth mismatch"). A call anywhere else (the command line,
argument checks, checkpoint or sidecar reading, locks) is given until `HANG_LIMIT_S`, looked at again every
0.25 s (a loaded machine may still be loading), and fails if it is still outside any computation then (an
import still running then passes): that is a hang or a loop where a user error should be. An interruption
is repeated every 0.25 s until the call ends (one can land where Python swallows it), and an import it cut
short is forgotten again. A traceback or a wrong exit status is confirmed in a fresh process (``python -m
modescape``) before it counts; the message is then the fresh process's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from badinput_helpers import shell_warnings
from conftest import run_cli

CALL_LIMIT_S = float(os.environ.get("MODESCAPE_FUZZ_LIMIT", "1.0"))
HANG_LIMIT_S = 20.0
LOG = os.environ.get("MODESCAPE_FUZZ_LOG")

# where a call that reached the limit was computing (see the module docstring)
WORK_FILES = re.compile(
    r"modescape/(train|landscape|connect|ensembles|swa|sam|simplex|subspace|sharpness|"
    r"correlate|paths|topology|store|directions|barrier|hf)\.py$|"
    r"modescape/(evaluate|curvature|symmetry|families|plots|studies|report|zoo)/"
)


class CallTimeout(BaseException):
    """Raised by the per-call timer (a BaseException: `except Exception` in the code must not swallow it)."""


class Timer:
    """The per-call limit (see the module docstring): SIGALRM after ``limit`` seconds, then every 0.25 s until
    disarmed. A firing inside real work (and not inside an import) stops the call; elsewhere the call goes on
    until `HANG_LIMIT_S`. Once stopping, every firing raises again (an interruption that lands where Python
    swallows exceptions, e.g. in a gc callback, is simply repeated). ``stack``: where the call was stopped;
    ``working``: whether that was inside real work."""

    armed = False
    stopping = False
    working = True
    started = 0.0
    stack: list = []

    @classmethod
    def handler(cls, signum, frame):
        if not cls.armed:
            return
        if not cls.stopping:
            stack = [f for f in traceback.extract_stack(frame) if not f.filename.endswith(HARNESS_FILES)]
            working = any(WORK_FILES.search(f.filename.replace(os.sep, "/")) for f in stack)
            importing = any(f.filename.startswith("<frozen importlib") for f in stack)
            if (importing or not working) and time.monotonic() - cls.started < HANG_LIMIT_S:
                return  # outside any computation, or inside an import: looked at again in 0.25 s
            cls.stack, cls.working, cls.stopping = stack, working or importing, True
        raise CallTimeout()

    @classmethod
    def arm(cls, seconds: float) -> None:
        cls.stack, cls.stopping, cls.working, cls.started = [], False, True, time.monotonic()
        cls.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)

    @classmethod
    def disarm(cls) -> None:
        while True:
            try:
                cls.armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                return
            except CallTimeout:  # it fired just before `armed` was cleared
                continue

    @classmethod
    def verdict(cls) -> tuple[bool, str]:
        """Whether the stopped call was computing, and its innermost frames (for the message)."""
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(cls.stack[-8:]))
        return cls.working, where


HARNESS_FILES = ("fuzz_harness.py", "test_fuzz.py", "conftest.py")


def _copy_inputs(master: dict, work: Path, argv: list[str]) -> dict:
    """Private copies, for one example, of the inputs its command line names (a file with its sidecar, a
    folder without FIFOs); ``{fresh}`` is a path that does not exist yet, ``{unwritable}`` the master's (no
    command can write under it)."""
    src, dst = master["dir"], work / "inputs"
    used = set(re.findall(r"\{(\w+)\}", " ".join(argv)))

    def ignore(folder, names):
        return [
            n
            for n in names
            if not (stat.S_ISREG(os.lstat(os.path.join(folder, n)).st_mode) or os.path.isdir(os.path.join(folder, n)))
        ]

    dst.mkdir(parents=True)
    paths = {"fresh": work / "fresh", "unwritable": master["unwritable"]}
    for name in used - set(paths):
        if name == "dir":
            shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=ignore)
            paths["dir"] = dst
            continue
        orig = master.get(name)
        if not isinstance(orig, Path) or not orig.is_relative_to(src):
            continue
        copy = dst / orig.relative_to(src)
        if orig.is_dir():
            shutil.copytree(orig, copy, ignore=ignore, dirs_exist_ok=True)
        elif orig.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            for f in (orig, orig.with_suffix(".json")):
                if f.exists() and stat.S_ISREG(os.lstat(f).st_mode) and not (copy.parent / f.name).exists():
                    shutil.copy2(f, copy.parent / f.name)
        paths[name] = copy
    return paths


def _interrupted(exc: BaseException) -> BaseException | None:
    """The `CallTimeout` behind ``exc`` (its cause or context, at any depth), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CallTimeout):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _drop_half_imported() -> None:
    """After an interruption: forget modules whose import it cut short (a later import would find them
    half initialised, a failure of the harness, not of the command)."""
    for name, mod in list(sys.modules.items()):
        spec = getattr(mod, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            del sys.modules[name]


def _expand(argv: list[str], paths: dict) -> list[str]:
    names = {k: str(v) for k, v in paths.items() if isinstance(v, Path)}
    return [re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), a) for a in argv]


def _is_usage_error(err: str) -> bool:
    """click's own usage message (a missing argument, a value of the wrong type): `Usage:` ... `Error:`."""
    lines = [ln for ln in err.split("\n") if ln.strip()]  # a terminal's lines (not str.splitlines: U+0085 ...)
    return bool(lines) and lines[0].startswith("Usage:") and any(ln.startswith("Error:") for ln in lines)


def run_example(argv: list[str], master: dict, capsys, limit: float = CALL_LIMIT_S) -> dict:
    """Run one symbolic command line in a fresh folder; returns what happened (for the assertions)."""
    work = Path(tempfile.mkdtemp(dir=master["scratch"]))
    cwd, path, debug = os.getcwd(), list(sys.path), os.environ.pop("MODESCAPE_DEBUG", None)
    paths = _copy_inputs(master, work, argv)
    args = _expand(argv, paths)
    old = signal.signal(signal.SIGALRM, Timer.handler)
    result: dict = {"argv": argv, "args": args, "timeout": None, "exception": None, "limit": limit}
    t0 = time.perf_counter()
    try:
        os.chdir(work)
        with shell_warnings():
            try:
                Timer.arm(limit)
                result["code"], result["out"], result["err"] = run_cli(args, capsys)
            finally:
                Timer.disarm()
    except CallTimeout:
        result["timeout"] = Timer.verdict()
        _drop_half_imported()
        capsys.readouterr()
    except Exception as e:  # noqa: BLE001 - a traceback the user would see, unless the timer caused it
        cause = _interrupted(e)
        if cause is not None:  # the code turned our interruption into another exception
            result["timeout"] = Timer.verdict()
            _drop_half_imported()
        else:
            result["exception"] = traceback.format_exc()
        capsys.readouterr()
    finally:
        Timer.disarm()
        signal.signal(signal.SIGALRM, old)
        result["seconds"] = time.perf_counter() - t0
        os.chdir(cwd)
        sys.path[:] = path
        os.environ.pop("MODESCAPE_DEBUG", None)
        if debug is not None:
            os.environ["MODESCAPE_DEBUG"] = debug
        from modescape.cli import common

        common.release_locks()
        common.CREATED.clear()
        shutil.rmtree(work, ignore_errors=True)
    if LOG:  # MODESCAPE_FUZZ_LOG=FILE: one JSON line per call (what the fuzz reached, and how long it took)
        import json

        with open(LOG, "a") as f:
            f.write(
                json.dumps(
                    {
                        "argv": argv,
                        "code": result.get("code"),
                        "seconds": round(result["seconds"], 3),
                        "timeout": result["timeout"],
                        "exception": (result["exception"] or "")[-2000:] or None,
                        "err": (result.get("err") or "")[-300:],
                    }
                )
                + "\n"
            )
    return result


def run_fresh(argv: list[str], master: dict, limit: float = 60.0) -> dict:
    """Run one symbolic command line as a user does: ``python -m modescape`` in a new process, in a fresh
    folder; returns what happened in the form `run_example` does (no stack: a call still running after
    ``limit`` seconds is a hang)."""
    import subprocess

    work = Path(tempfile.mkdtemp(dir=master["scratch"]))
    try:
        args = _expand(argv, _copy_inputs(master, work, argv))
        env = {
            **os.environ,
            "MODESCAPE_PROGRESS": "0",
            "PYTHONPATH": os.pathsep.join([str(master["factories"]), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("MODESCAPE_DEBUG", None)
        result: dict = {"argv": argv, "args": args, "timeout": None, "exception": None, "limit": limit}
        try:
            p = subprocess.run(
                [sys.executable, "-m", "modescape", *args],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
            )
            result.update(code=p.returncode, out=p.stdout, err=p.stderr)
        except subprocess.TimeoutExpired:
            result["timeout"] = (False, f"a fresh process gave no result in {limit} s")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_confirmed(argv: list[str], master: dict, capsys) -> None:
    """`check_result` of one in-process run; a failure is confirmed in a fresh process before it counts (an
    earlier call the timer interrupted can leave the test process in a state no user's process is in, and
    a loaded machine can reach the limit in a command's last cleanup)."""
    r = run_example(argv, master, capsys)
    try:
        check_result(r)
    except AssertionError:
        check_result(run_fresh(argv, master))


def check_result(r: dict) -> None:
    args = " ".join(map(repr, r["args"]))
    assert r["exception"] is None, f"a traceback for modescape {args}:\n{r['exception'][-3000:]}"
    if r["timeout"] is not None:
        working, where = r["timeout"]
        assert working, (
            f"modescape {args} was stopped outside any computation after {HANG_LIMIT_S} s (a hang "
            f"or loop where a user error should be): {where}"
        )
        return
    code, err = r["code"], r["err"]
    assert code in (0, 2), f"exit status {code} for modescape {args}; stderr:\n{err[-3000:]}"
    if code == 2:
        assert "Traceback" not in err, f"a traceback for modescape {args}:\n{err[-3000:]}"
        lines = [ln for ln in err.split("\n") if ln.strip()]  # a terminal's lines (not str.splitlines: U+0085 ...)
        if _is_usage_error(err):  # click's usage message, as in test_cli.one_line_error
            return
        assert len(lines) == 1 and lines[0].startswith("error: "), (
            f"{len(lines)} lines on stderr (one `error: ...` line expected) for modescape {args}:\n{err[-3000:]}"
        )


def warm_up() -> None:
    """Import what the commands import on first use (modescape's modules, matplotlib, torch._dynamo that the
    optimisers load): the first import is slow, is not the command's work, and an interruption in the middle
    of one would leave it half done."""
    import importlib
    import pkgutil

    import modescape

    for info in pkgutil.walk_packages(modescape.__path__, "modescape."):
        if not info.name.endswith("__main__") and info.name != "modescape.hf":
            importlib.import_module(info.name)
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401

    with warnings.catch_warnings():  # it scripts functions: "torch.jit.script is deprecated"
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401  (forward-mode AD loads it on first use)

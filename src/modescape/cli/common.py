"""Helpers shared by the CLI commands: loading checkpoints and data, output, seeds, provenance.

Conventions every command follows: ``--out DIR`` for what it writes, ``--seed``, ``--device``,
``--json`` (machine-readable summary on stdout; progress goes to stderr), and a checkpoint's sidecar
supplies the model and the data unless ``--model`` / ``--data`` / ``--data-root`` override them.

This module is light at import (no torch): the command line must start at once (see `modescape.lazy`).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..checks import check_seed
from ..errors import UserError
from ..lazy import lazy
from ..provenance import command_line  # noqa: F401  (re-exported for commands)

torch = lazy("torch")
if TYPE_CHECKING:
    from torch import device as Device
io = lazy("modescape.io")


def seed_everything(seed: int) -> None:
    import numpy as np

    check_seed(seed)

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_checkpoint(*args, **kwargs):
    """`modescape.io.load_checkpoint`: model, sidecar and data of a checkpoint."""
    return io.load_checkpoint(*args, **kwargs)


def load_data(*args, **kwargs):
    """`modescape.io.load_data`: a zoo dataset or a user's data factory."""
    return io.load_data(*args, **kwargs)


def check_device(device: str | None) -> None:
    """The --device text names a device modescape runs on: cpu, cuda, cuda:N (or auto); checked without torch."""
    if device in (None, "", "auto", "cpu", "cuda"):
        return
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return
    raise UserError(f"unsupported --device '{device}': use cpu, cuda or cuda:N (modescape runs on CPUs and CUDA GPUs)")


def resolve_device(device: str | None) -> Device:
    """``None``/"auto" -> cuda when available else cpu; otherwise checked (cpu, cuda, cuda:N)."""
    check_device(device)
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return dev


def print_json(obj: Any) -> None:
    sys.stdout.write(io.json_dumps(obj, indent=2) + "\n")


# folders this process created for --out: removed again, if still empty, when the command fails
CREATED: list[Path] = []


def out_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} exists and is not a folder: choose another path")
    new = [q for q in [p, *p.parents] if not q.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {p}: {e.strerror or e}; choose a folder you can write to") from None
    if new:
        CREATED.append(new[-1])  # the outermost folder made here
    from ..locks import lock_out

    lock_out(p)  # one writer per --out: a second process is refused with one line (rank 0 only under torchrun)
    return p


def release_locks() -> None:
    """Release the --out locks this process holds (when a command ends; the kernel also does at exit)."""
    if "modescape.locks" in sys.modules:
        from ..locks import release_all

        release_all()


def remove_created_if_empty() -> None:
    """After a failed command: remove the --out folders it created that hold nothing (no empty leftovers)."""
    release_locks()  # first: the lock file would keep a failed command's folder "non-empty"
    for top in reversed(CREATED):
        if not top.is_dir():
            continue
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
        if any(f.is_file() or f.is_symlink() for f in top.rglob("*")):
            continue
        for d in [*dirs, top]:
            try:
                d.rmdir()
            except OSError:
                break
    CREATED.clear()


# -- options every command that reads a checkpoint shares (one definition, one help text) -----------
MODEL = typer.Option(None, "--model", help="Override the sidecar's model: a zoo name or package.module:factory.")
MODEL_ARGS = typer.Option("", "--model-args", help="Model arguments, e.g. depth=2,width=64.")
DATA = typer.Option(None, "--data", help="Override the sidecar's dataset: a zoo name or package.module:factory.")
DATA_ROOT = typer.Option(None, "--data-root", help="Folder with the data files (mnist, cifar10).")
DATA_ARGS = typer.Option("", "--data-args", help="Dataset arguments, e.g. n_train=10000 (mnist, cifar10).")


def _device_checked(value: str | None) -> str | None:
    check_device(value)  # at parse time: an unsupported device is one line before any work
    return value


DEVICE = typer.Option(
    None, "--device", help="cpu, cuda or cuda:N (default: cuda when available).", callback=_device_checked
)
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout.")


def _precision_checked(value: str) -> str:
    from ..checks import check_precision

    return check_precision(value, "--precision")  # at parse time: one line, exit 2


PRECISION = typer.Option(
    "fp32",
    "--precision",
    callback=_precision_checked,
    help="fp32 or bf16: the forwards of the evaluation in bf16 (torch.autocast, CPU and GPU; "
    "losses still summed in float64). Recorded with the result.",
)
CHECK_PRECISION = typer.Option(
    0,
    "--check-precision",
    metavar="N",
    help="With --precision bf16: also evaluate N random points (seeded by --seed) of the "
    "same grid or path in fp32, and store and print the largest absolute and "
    "relative difference per metric (0: no check).",
)


def check_precision_options(precision: str, check: int) -> None:
    """``--check-precision N`` is a count, and compares a reduced precision with fp32."""
    if check < 0:
        raise UserError(f"--check-precision must be 0 (no check) or a number of points; got {check}")
    if check and precision == "fp32":
        raise UserError("--check-precision compares a reduced precision with fp32: give --precision bf16 too")


def precision_check(ev, family, coords, n: int, seed: int) -> dict | None:
    """``--check-precision``: `modescape.evaluate.compare_precision` on ``n`` points (None when 0); printed
    on stderr."""
    if not n:
        return None
    from ..evaluate import compare_precision, format_check

    check = compare_precision(ev, family, coords, n, seed)
    sys.stderr.write(format_check(check) + "\n")
    return check

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
from typing import Any

import typer

from ..errors import UserError
from ..provenance import command_line  # noqa: F401  (re-exported for commands)
from ..lazy import lazy

torch = lazy("torch")
io = lazy("modescape.io")


def seed_everything(seed: int) -> None:
    import numpy as np

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


def resolve_device(device: str | None) -> "torch.device":
    """``None``/"auto" -> cuda when available else cpu; otherwise checked (cpu, cuda, cuda:N)."""
    check_device(device)
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                        f"numbered from 0")
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


DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available).",
                      callback=_device_checked)
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout.")

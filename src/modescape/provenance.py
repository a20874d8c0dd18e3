"""Provenance: what produced a number, assembled in one place and saved with every result.

A result (a landscape store's attributes, a checkpoint's sidecar, a method's JSON) records how to
reproduce it: the versions of modescape and of the libraries that computed it, the git commit of the
source tree when it runs from a checkout, the thread count and device, the world size under torchrun,
the command line, and hashes of the weights and data it was computed on. `model_hash` is the same hash a
checkpoint's sidecar stores as ``weights_hash`` (`modescape.io.tensor_hash` over the state dict's names),
so a result can be matched to the checkpoint it came from.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `command_line` serves the light command line
    import torch

    from .evaluate import Evaluator


def versions() -> dict[str, str]:
    """Versions of modescape, torch, numpy and Python (and xarray / zarr when installed)."""
    import numpy
    import torch

    from . import __version__

    out = {
        "modescape": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    for name in ("xarray", "zarr"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = module.__version__
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree modescape runs from (``+dirty`` with local changes); None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> str:
    """The command as typed (``modescape ...``), quoted for a shell."""
    return " ".join(shlex.quote(a) for a in ["modescape", *sys.argv[1:]])


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, git commit, thread count, device (with the GPU's name) and torchrun world size."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    env: dict[str, Any] = {
        "versions": versions(),
        "git_commit": git_commit(),
        "threads": torch.get_num_threads(),
        "device": dev.type,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(dev)
    return env


def model_hash(evaluator: Evaluator) -> str:
    """Hash of the evaluator's model (parameters and buffers, named as in its state dict): the
    ``weights_hash`` of the checkpoint it was loaded from, when the dtype is unchanged."""
    from .io import tensor_hash

    return tensor_hash({**evaluator.point0, **evaluator.buffers})


def data_hash(evaluator: Evaluator) -> str:
    """Content hash of every data source the evaluator holds (materialised ones; streamed: by name and size)."""
    import torch

    from .io import tensor_hash

    tensors = {}
    for name, src in evaluator.sources.items():
        if src.materialised and src.batches is not None:
            tensors[f"{name}/x"] = torch.cat([b[0].reshape(b[0].shape[0], -1) for b in src.batches])
            tensors[f"{name}/y"] = torch.cat([b[1] for b in src.batches])
        else:
            tensors[f"{name}/n"] = torch.tensor([src.n])
    return tensor_hash(tensors)


__all__ = ["command_line", "data_hash", "environment", "git_commit", "model_hash", "versions"]

"""Helpers shared by the CLI commands: loading checkpoints and data, output, seeds, provenance.

Conventions every command follows: ``--out DIR`` for what it writes, ``--seed``, ``--device``,
``--json`` (machine-readable summary on stdout; progress goes to stderr), and a checkpoint's sidecar
supplies the model and the data unless ``--model`` / ``--data`` / ``--data-root`` override them.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import typer
import torch
from torch import nn

from .. import io
from ..errors import UserError
from ..zoo import DataSplit, as_split, load_dataset

DEFAULT_DATA = "digits"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; otherwise checked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}': use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return dev


def load_data(name: str | None, root: str | None = None, args: Mapping[str, Any] | None = None) -> DataSplit:
    """A zoo dataset by name, or a user's ``package.module:factory`` (called with ``**args``)."""
    name = name or DEFAULT_DATA
    args = dict(args or {})
    if ":" in name:
        factory = io.resolve_spec(name)
        kwargs = dict(args)
        if root is not None:
            kwargs["root"] = root
        try:
            split = as_split(factory(**kwargs), name)
        except TypeError as e:
            raise UserError(f"data factory '{name}' rejected its arguments {kwargs}: {e}") from None
        split.meta.update({"name": name, "args": args, "root": root})
        return split
    return load_dataset(name, root=root, **args)


def data_from_meta(meta: Mapping[str, Any], data: str | None = None, data_root: str | None = None,
                   data_args: str | None = None) -> DataSplit:
    """The data a checkpoint was trained on (its sidecar), unless overridden on the command line."""
    saved = dict(meta.get("data") or {})
    if data is not None:
        return load_data(data, data_root, io.parse_args(data_args))
    name = saved.get("name") or DEFAULT_DATA
    root = data_root if data_root is not None else saved.get("root")
    args = {**saved.get("args", {}), **io.parse_args(data_args)}
    return load_data(name, root, args)


def load_checkpoint(path: str | Path, model: str | None = None, model_args: str | None = None,
                    data: str | None = None, data_root: str | None = None, data_args: str | None = None,
                    device: torch.device | None = None) -> tuple[nn.Module, dict[str, Any], DataSplit]:
    """Model, sidecar and data for a checkpoint argument."""
    meta = io.read_meta(path) if Path(path).exists() else {}
    split = data_from_meta(meta, data, data_root, data_args)
    module, meta = io.load_model(path, model=model, model_args=io.parse_args(model_args), device=device,
                                 data_shape=split.input_shape, num_classes=split.num_classes)
    return module, meta, split


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["modescape", *sys.argv[1:]])


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=io._json_default) + "\n")


def out_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} exists and is not a folder: choose another path")
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- options every command that reads a checkpoint shares (one definition, one help text) -----------
MODEL = typer.Option(None, "--model", help="Override the sidecar's model: a zoo name or package.module:factory.")
MODEL_ARGS = typer.Option("", "--model-args", help="Model arguments, e.g. depth=2,width=64.")
DATA = typer.Option(None, "--data", help="Override the sidecar's dataset: a zoo name or package.module:factory.")
DATA_ROOT = typer.Option(None, "--data-root", help="Folder with the data files (mnist, cifar10).")
DATA_ARGS = typer.Option("", "--data-args", help="Dataset arguments, e.g. n_train=10000.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available).")
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout.")

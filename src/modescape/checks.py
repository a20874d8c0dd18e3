"""Argument checks that need neither torch nor data, run before anything heavy is imported or allocated.

The command line validates every argument it can here first, so a typo is one line in milliseconds, not
after seconds of imports or minutes of training. The methods use the same functions (one home for each
rule): the BN policies, choices among names, positive counts, and input files (present, a regular file:
a FIFO would hang a reader, a folder is not a checkpoint).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

BN_POLICIES = ("running", "recompute", "train")
NORMALIZATIONS = ("filter", "layer", "model", "head", "none")  # of random directions (modescape.directions)
IGNORES = ("biasbn", "none")
PRECISIONS = ("fp32", "bf16")  # of the evaluator's forwards (modescape.evaluate.Evaluator(precision=...))


def check_policy(bn: str, option: str = "BN policy") -> str:
    """``bn`` when it names a policy, else a `UserError` listing them (``option``: how the caller names it)."""
    return check_choice(bn, BN_POLICIES, option)


def check_precision(precision: str, option: str = "precision") -> str:
    """``precision`` when it is one of `PRECISIONS`, else a `UserError` listing them."""
    return check_choice(precision, PRECISIONS, option)


def check_choice(value: str, choices: Iterable[str], option: str) -> str:
    """``value`` when it is one of ``choices``, else a `UserError` naming the option and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"unknown {option} '{value}': use one of {', '.join(choices)}")
    return value


def check_positive(**values: int | None) -> None:
    """Each given count is at least 1 (``None`` means not given); the option is named ``--name-with-dashes``."""
    for name, v in values.items():
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1; got {v}")


SEED_MAX = 2**32 - 1  # numpy's legacy range; seeds derived from it (seed + j, seed * k + i) stay within torch's


def check_seed(seed: int | None, option: str = "--seed") -> int | None:
    """``seed`` when it is an integer from 0 to `SEED_MAX` (``None``: not given), else a `UserError`."""
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UserError(f"{option} must be an integer from 0 to {SEED_MAX} (2**32 - 1); got {seed}")
    return seed


def check_finite(**values: float | None) -> None:
    """Each given number is finite (``None``: not given); the option is named ``--name-with-dashes``."""
    for name, v in values.items():
        if v is not None and not math.isfinite(v):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number; got {v}")


def parse_directions(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``"random"`` -> ``("random", None)``; ``"hessian"`` -> ``("hessian", (0, 1))``; ``"hessian:2,5"`` ->
    ``("hessian", (2, 5))`` (distinct indices >= 0, 0 the largest eigenvalue). Pure text: no torch needed."""
    kind, _, rest = text.strip().partition(":")
    if kind == "random" and not rest:
        return "random", None
    if kind == "hessian":
        if not rest:
            return "hessian", (0, 1)
        try:
            idx = tuple(int(s) for s in rest.split(","))
        except ValueError:
            idx = ()
        if len(idx) == 2 and min(idx) >= 0 and idx[0] != idx[1]:
            return "hessian", idx
    raise UserError(
        f"unknown directions '{text}': use random, hessian (the top two eigenvectors) or hessian:I,J "
        f"(two distinct eigenvector indices, 0 = the largest eigenvalue, e.g. hessian:2,5)"
    )


def input_file(path: str | os.PathLike, what: str = "checkpoint", folder_hint: str | None = None) -> Path:
    """``path`` as a `Path` when it is an existing regular file; else one line saying what is wrong.

    ``folder_hint``: a file name to suggest when a folder is given (e.g. ``final.safetensors``).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {p}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        hint = p / folder_hint if folder_hint else None
        raise UserError(f"{p} is a folder: pass a {what} file" + (f", e.g. {hint}" if hint and hint.exists() else ""))
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {p} is not a regular file (a pipe or device?): pass a file")
    return p


def output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a `Path` when a file can be written there: not a folder, and its nearest existing parent
    is a folder this process may write into (checked before any work; nothing is created)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p} is a folder: give a file path")
    for parent in p.parents:
        try:
            st = parent.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise UserError(
                f"cannot create {option} {p}: {parent}: {e.strerror or e}; choose a folder you can write to"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"cannot create {option} {p}: {parent} is not a folder; choose a folder you can write to")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot create {option} {p}: {parent} is not writable; choose a folder you can write to")
        break
    return p


__all__ = [
    "BN_POLICIES",
    "IGNORES",
    "NORMALIZATIONS",
    "PRECISIONS",
    "SEED_MAX",
    "check_choice",
    "check_finite",
    "check_policy",
    "check_positive",
    "check_precision",
    "check_seed",
    "input_file",
    "output_file",
    "parse_directions",
]

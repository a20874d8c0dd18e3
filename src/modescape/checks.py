"""Argument checks that need neither torch nor data, run before anything heavy is imported or allocated.

The command line validates every argument it can here first, so a typo is one line in milliseconds, not
after seconds of imports or minutes of training. The methods use the same functions (one home for each
rule): the BN policies, choices among names, positive counts, and input files (present, a regular file:
a FIFO would hang a reader, a folder is not a checkpoint).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from .errors import UserError

BN_POLICIES = ("running", "recompute", "train")
NORMALIZATIONS = ("filter", "layer", "model", "head", "none")  # of random directions (modescape.directions)
IGNORES = ("biasbn", "none")


def check_policy(bn: str, option: str = "BN policy") -> str:
    """``bn`` when it names a policy, else a `UserError` listing them (``option``: how the caller names it)."""
    return check_choice(bn, BN_POLICIES, option)


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
    raise UserError(f"unknown directions '{text}': use random, hessian (the top two eigenvectors) or hessian:I,J "
                    f"(two distinct eigenvector indices, 0 = the largest eigenvalue, e.g. hessian:2,5)")


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


__all__ = ["BN_POLICIES", "IGNORES", "NORMALIZATIONS", "check_choice", "check_policy", "check_positive", "input_file",
           "parse_directions"]

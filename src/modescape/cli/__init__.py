"""The `modescape` command line: a thin shell over the Python API.

Every module in this package defines its commands on the one typer ``app`` (see `app.py`); importing
the package imports them all. `main` runs the app and turns a `UserError` into one line on stderr and
exit status 2, without a traceback.

Command modules import nothing heavy at module level (torch, numpy, the methods): they bind modules with
`modescape.lazy` or import inside the command, after checking the arguments (`modescape.checks`,
`modescape.grid`), so ``modescape --help`` and a user error answer in a fraction of a second.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

from rich.text import Text

from ..checks import check_seed
from ..errors import UserError
from . import common
from .app import app, debugging, err_console

# the order of the help listing: the foundation first, then the methods in the order of the docs
_ORDER = ["train", "landscape", "connect", "symmetry", "curvature"]
_found = {m.name for m in pkgutil.iter_modules(__path__)} - {"app", "common"}
for _mod in [m for m in _ORDER if m in _found] + sorted(_found - set(_ORDER)):
    importlib.import_module(f"{__name__}.{_mod}")


def _seed_checked(value: int | None) -> int | None:
    return check_seed(value)  # at parse time: a seed torch or numpy would refuse is one line before any work


def _check_seed_options() -> None:
    """Every command's ``--seed`` is checked at parse time (`modescape.checks.check_seed`), also in commands
    that declare their own option without the check."""
    for command in app.registered_commands:
        if command.callback is None:
            continue
        for param in inspect.signature(command.callback).parameters.values():
            info = param.default
            if "--seed" in (getattr(info, "param_decls", None) or ()) and getattr(info, "callback", None) is None:
                info.callback = _seed_checked


_check_seed_options()


def one_line(text: str) -> str:
    """``text`` with line breaks and other control or invisible characters escaped (a value the user typed,
    quoted in a message, must not break the one line or reach the terminal as a control sequence)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _finish_ranks(code: int) -> None:
    """Leave a torchrun process group, if one was started (only then is torch.distributed loaded)."""
    if "torch.distributed" in sys.modules:
        from .. import distributed

        distributed.finish(code)


# options that take several values: the parser would swallow a following option as a value
MULTI_VALUE_OPTIONS = {"--through": (2, "two checkpoints, B and C")}


def _check_multi_value_options(argv: list[str]) -> None:
    for i, arg in enumerate(argv):
        if arg in MULTI_VALUE_OPTIONS:
            n, what = MULTI_VALUE_OPTIONS[arg]
            values = argv[i + 1 : i + 1 + n]
            if len(values) < n or any(v.startswith("-") for v in values):
                got = " ".join(values) or "nothing"
                raise UserError(f"{arg} takes {what}; got {got}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        _check_multi_value_options(list(sys.argv[1:] if argv is None else argv))
        app(args=argv, prog_name="modescape", standalone_mode=True)
    except SystemExit as e:
        if e.code not in (0, None):
            common.remove_created_if_empty()
        _finish_ranks(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        raise
    except UserError as e:
        common.remove_created_if_empty()
        if debugging():
            import traceback

            traceback.print_exception(e, file=sys.stderr)
        # a Text is printed as is: no markup, no emoji in paths or in "A:B:N"
        err_console.print(Text.assemble(("error: ", "bold red"), one_line(str(e))), soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except BaseException:
        common.remove_created_if_empty()
        raise
    finally:
        common.release_locks()


__all__ = ["app", "main"]

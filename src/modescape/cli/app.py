"""The typer application that every CLI module adds its commands to, and the shared consoles."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="modescape",
    help="Geometry of neural-network loss landscapes: train, evaluate, slice, connect, align, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help text: "A:B:N" must not turn into an emoji
    context_settings={"help_option_names": ["-h", "--help"]},
)
# wide enough for result tables when stdout is a file or a pipe (rich would assume 80 columns)
# emoji=False: "A:B:N" in a message must not become an emoji
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=160, emoji=False)
err_console = Console(stderr=True, emoji=False)


def debugging() -> bool:
    """Whether user errors also print the traceback of their cause (``--debug`` or MODESCAPE_DEBUG=1)."""
    import os

    return os.environ.get("MODESCAPE_DEBUG", "").lower() in ("1", "true", "yes")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"modescape {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(
        False,
        "--debug",
        help="On a user error, also print the traceback of what "
        "caused it (e.g. inside your own model or data "
        "factory); the same as MODESCAPE_DEBUG=1.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Geometry of neural-network loss landscapes: train, evaluate, slice, connect, align, measure."""
    if debug:
        import os

        os.environ["MODESCAPE_DEBUG"] = "1"


from . import common  # noqa: E402  (re-exported for command modules: `from .app import app, common`)

__all__ = ["app", "common", "console", "debugging", "err_console"]

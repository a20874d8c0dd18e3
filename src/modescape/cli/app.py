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

from . import common  # noqa: E402  (re-exported for command modules: `from .app import app, common`)

__all__ = ["app", "common", "console", "err_console"]

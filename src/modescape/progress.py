"""Progress bars for every long loop (rich), in one place so they look and behave the same.

Bars go to stderr so that ``--json`` output on stdout stays clean. ``MODESCAPE_PROGRESS=0`` turns them
off (tests do this); they are also off when a caller passes ``enabled=False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
_console = Console(stderr=True, emoji=False)


def enabled_by_default() -> bool:
    return os.environ.get("MODESCAPE_PROGRESS", "1") not in ("0", "false", "no")


@contextmanager
def bar(description: str, total: int | None, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A context giving ``advance(n=1, **fields)``; draws a rich bar with ETA when enabled."""
    if enabled is None:
        enabled = enabled_by_default()
    if not enabled:
        yield lambda n=1, **_: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    # the finished bar stays: on a terminal as drawn, in a log file as one line with the count and time
    with Progress(*columns, console=_console, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            if info is None:
                prog.update(task, advance=n)
            else:
                prog.update(task, advance=n, info=info)

        yield advance


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total, enabled) as advance:
        for item in items:
            yield item
            advance()

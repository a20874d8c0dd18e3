"""Modules imported on first use, so that the command line starts in a fraction of a second.

``torch`` alone takes about two seconds to import here; ``modescape --help`` and a mistyped argument must
answer at once. A command module (and the light modules it needs, such as `modescape.grid`) therefore
binds its heavy modules with `lazy` (``torch = lazy("torch")``): the name is a stand-in that imports the
module the first time one of its attributes is used, inside a command, after the arguments were checked
(as in the scientific Python ecosystem's SPEC 1, ``lazy_loader``).
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A stand-in for the module ``name``: ``stand_in.attr`` imports it (once) and returns ``module.attr``."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """A stand-in for the module ``name`` (absolute, e.g. ``"modescape.io"``), imported on first use."""
    return LazyModule(name)


__all__ = ["LazyModule", "lazy"]

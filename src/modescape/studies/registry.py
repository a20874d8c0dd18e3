"""The registry of studies: one small module per claim of the field, each described by a `Study`.

A study is a claim from a paper (who found what, at which scale), the settings that test it here
(``presets``: ``cpu``, on built-in digits or MNIST, in at most ten minutes on two cores; ``gpu``, at the
paper's scale; ``smoke``: a few seconds, for the test suite), and a ``run(ctx) -> Outcome`` that measures
it through the package's methods. The `Outcome` is what the report shows: the numbers, a table of
*measured here* next to *published* with the setting of each, the figures, and a verdict (reproduced,
partly, not reproduced) with the reason. Running a study (`modescape.studies.runner`) writes all of it.

This module is light (no torch): ``modescape study --list`` answers at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

VERDICTS = ("reproduced", "partly", "not reproduced")
PRESETS = ("cpu", "gpu")


@dataclass(frozen=True)
class Row:
    """One line of a study's table: a quantity measured here next to the published one, each with its setting."""

    quantity: str
    measured: str
    measured_setting: str
    published: str = "-"
    published_setting: str = "-"

    def to_dict(self) -> dict[str, str]:
        return {
            "quantity": self.quantity,
            "measured": self.measured,
            "measured_setting": self.measured_setting,
            "published": self.published,
            "published_setting": self.published_setting,
        }


@dataclass(frozen=True)
class Figure:
    """A figure file (relative to the study folder) and its one-line caption; ``docs``: the name of the docs
    figure it regenerates (``--figures docs/figures`` writes it under that name), if any."""

    file: str
    caption: str
    docs: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "caption": self.caption, **({"docs": self.docs} if self.docs else {})}


@dataclass
class Outcome:
    """What a study's ``run`` returns: ``numbers`` (JSON-able, what a rerun must reproduce), the ``table``,
    the ``verdict`` (one of `VERDICTS`) and ``why``, the ``figures``, interactive charts for the report
    (``interactive``: ``{"kind": "lines" | "contour" | "bars", ...}`` specs of numbers, drawn by the
    report with the local plotly) and an optional written ``conclusion``."""

    numbers: dict[str, Any]
    table: list[Row]
    verdict: str
    why: str
    figures: list[Figure] = field(default_factory=list)
    interactive: list[dict[str, Any]] = field(default_factory=list)
    conclusion: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Study:
    """A claim and how it is tested here.

    ``run(ctx) -> Outcome`` measures it (`modescape.studies.context.Context`; heavy imports inside it, so
    that the registry stays light). ``presets``: ``{"cpu": settings, "gpu": settings}`` and optionally
    ``"cpu-mnist"`` (what ``--preset cpu`` runs when ``--data-root`` is given: the MNIST variant); ``smoke``:
    overrides of any preset for the test suite; ``tour``: overrides of ``cpu`` for `modescape tour` (the
    studies in `modescape.studies.TOUR`). ``stages``: the names of the stages ``run`` caches, and of the
    points it may stop at (a rerun continues after the last finished one). ``needs``: the modules it uses
    beyond the core; ``docs``: the docs pages that link it.
    """

    name: str
    title: str
    paper: str
    claim: str
    run: Callable[[Any], Outcome]
    presets: dict[str, dict[str, Any]]
    smoke: dict[str, Any]
    stages: tuple[str, ...]
    summary: str = ""
    tour: dict[str, Any] | None = None
    needs: tuple[str, ...] = ()
    docs: tuple[str, ...] = ()

    def settings(
        self, preset: str = "cpu", smoke: bool = False, mnist: bool = False, tour: bool = False
    ) -> dict[str, Any]:
        """The settings of a run: the preset (its MNIST variant for ``cpu`` with a data root), then the
        tour's or the smoke overrides."""
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}': use {' or '.join(PRESETS)}")
        if smoke and preset != "cpu":
            raise UserError("--smoke shrinks the cpu preset (seconds, for tests): use it with --preset cpu")
        key = "cpu-mnist" if preset == "cpu" and mnist and "cpu-mnist" in self.presets else preset
        base = dict(self.presets[key])
        if tour and self.tour is not None:
            base.update(self.tour)
        if smoke:
            base.update(self.smoke)
        return base


REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    if study.name in REGISTRY:
        raise ValueError(f"study {study.name!r} registered twice")
    REGISTRY[study.name] = study
    return study


def get(name: str) -> Study:
    """The study called ``name`` (a `UserError` naming the others when there is none)."""
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise UserError(
            f"unknown study '{name}': `modescape study --list` shows the {len(REGISTRY)} studies "
            f"({', '.join(REGISTRY)})"
        )
    return REGISTRY[name]


def all_studies() -> list[Study]:
    """Every registered study, in the order of the seed's argument."""
    from . import load_all

    load_all()
    return list(REGISTRY.values())


def describe(study: Study) -> Mapping[str, Any]:
    return {
        "name": study.name,
        "title": study.title,
        "paper": study.paper,
        "claim": study.claim,
        "summary": study.summary,
        "stages": list(study.stages),
        "docs": list(study.docs),
        "presets": study.presets,
        "smoke": study.smoke,
        "tour": study.tour,
    }


__all__ = [
    "Figure",
    "Outcome",
    "PRESETS",
    "REGISTRY",
    "Row",
    "Study",
    "VERDICTS",
    "all_studies",
    "describe",
    "get",
    "register",
]

"""The field's claims as runnable studies: one small module per claim, in a registry.

Each module registers a `Study` (`registry`): the paper and its claim, settings per preset (``cpu``:
built-in digits, or MNIST from a data root, in minutes on two cores; ``gpu``: the paper's scale; ``smoke``:
seconds, for the tests), and ``run(ctx)``, which measures the claim with the package's methods and returns
an `Outcome`: numbers, a *measured here* versus *published* table with the setting of each, figures and a
verdict. `run_study` (`context`) runs one into a folder, resumably; `modescape.report` turns folders into
a static site.

>>> from modescape.studies import run_study
>>> result = run_study("goodfellow-interpolation", preset="cpu", out="runs/goodfellow")
>>> result["verdict"], result["numbers"]["init_to_trained"]["max_rise_train_loss"]

The registry is light to import (no torch); a study's heavy imports happen inside its ``run``.
"""

from __future__ import annotations

import importlib

from .registry import PRESETS, REGISTRY, VERDICTS, Figure, Outcome, Row, Study, all_studies, describe, get, register

# in the order of the seed's argument
STUDY_MODULES = (
    "goodfellow_interpolation",
    "li_filter_normalisation",
    "li_trajectory",
    "brea_permutation",
    "garipov_curves",
    "fge",
    "rebasin_width",
    "repair",
    "sharpness_generalisation",
    "li_skip_connections",
    "depth_vs_width",
    "fort_subspaces",
    "benton_simplex",
    "swa_flatness",
    "sam_flatness",
    "grokking",
    "swa_sam_ensembles",
)

TOUR = ("goodfellow-interpolation", "li-filter-normalisation", "garipov-curves", "rebasin-width", "fge")
"""The studies `modescape tour` runs (interpolation, a filter-normalised surface and Hessian spectra, a
curve, an alignment, a small ensemble), with each study's ``tour`` settings."""

_loaded = False


def load_all() -> None:
    """Import every study module (each registers itself)."""
    global _loaded
    if _loaded:
        return
    for name in STUDY_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    _loaded = True


def run_study(*args, **kwargs):
    """`modescape.studies.context.run_study` (imported on first use)."""
    from .context import run_study as _run

    return _run(*args, **kwargs)


__all__ = [
    "Figure",
    "Outcome",
    "PRESETS",
    "REGISTRY",
    "Row",
    "STUDY_MODULES",
    "Study",
    "TOUR",
    "VERDICTS",
    "all_studies",
    "describe",
    "get",
    "load_all",
    "register",
    "run_study",
]

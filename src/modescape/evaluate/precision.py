"""How far a reduced-precision evaluation is from fp32: the same points evaluated both ways.

``Evaluator(precision="bf16")`` runs the forwards in bf16 (losses and counts still summed in float64).
`compare_precision` draws ``n`` points of the same grid or path (seeded), evaluates them at the
evaluator's precision and in fp32 (`Evaluator.at_precision`, same data, BN policy and path), and returns
the largest absolute and relative difference per metric. The command line stores it in the result's
attributes (``precision_check``) for ``--check-precision N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UserError

if TYPE_CHECKING:
    from .evaluator import Evaluator


def sample_indices(k: int, n: int, seed: int = 0) -> list[int]:
    """``min(n, k)`` distinct indices of ``range(k)``, drawn with ``seed`` (sorted)."""
    if n < 1:
        raise UserError(f"the number of points to check must be at least 1; got {n}")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(k, generator=g)[: min(n, k)].tolist())


def differences(low: torch.Tensor, ref: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{"max_abs_diff": {name: ...}, "max_rel_diff": {name: ...}}`` between two [K, M] tables; the
    relative difference is ``|low - ref| / |ref|`` (``ref`` of 0: the absolute difference)."""
    low, ref = low.double(), ref.double()
    d = (low - ref).abs()
    rel = torch.where(ref != 0, d / ref.abs().clamp_min(1e-300), d)
    return {
        "max_abs_diff": {n: float(d[:, j].max()) for j, n in enumerate(names)},
        "max_rel_diff": {n: float(rel[:, j].max()) for j, n in enumerate(names)},
    }


def compare_precision(evaluator: Evaluator, family: Any, coords: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """Evaluate ``n`` seeded points of ``family(coords)`` at ``evaluator.precision`` and in fp32.

    ``coords``: [K, dim] (or [K] for a 1-d family): the grid or path the result covers; the points are
    drawn from it with ``seed``. Returns ``{"precision", "reference": "fp32", "points", "seed",
    "indices", "max_abs_diff": {metric: v}, "max_rel_diff": {metric: v}}``.
    """
    c, _ = family.as_coords(coords)
    idx = sample_indices(c.shape[0], n, seed)
    pts = c[idx]
    low = evaluator.evaluate_family(family, pts, progress=False)
    with evaluator.at_precision("fp32"):
        ref = evaluator.evaluate_family(family, pts, progress=False)
    return {
        "precision": low.precision,
        "reference": "fp32",
        "points": len(idx),
        "seed": int(seed),
        "indices": idx,
        **differences(low.values, ref.values, evaluator.names),
    }


def format_check(check: dict[str, Any]) -> str:
    """One line per metric: the largest absolute and relative difference."""
    head = f"{check['precision']} vs {check['reference']} on {check['points']} points:"
    rows = [
        f"  {n}: max abs {check['max_abs_diff'][n]:.3g}, max rel {check['max_rel_diff'][n]:.3g}"
        for n in check["max_abs_diff"]
    ]
    return "\n".join([head, *rows])


__all__ = ["compare_precision", "differences", "format_check", "sample_indices"]

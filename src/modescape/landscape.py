"""Loss landscapes: sweep a family of points over a grid into a labelled, resumable result.

    grid = Grid.parse(x="-1:1:51", y="-1:1:51")          # "A:B:N": N points from A to B inclusive
    plane = Plane(origin, *random_directions(model, 2))   # or Line(a, b), PlaneThrough(a, b, c)
    ds = sweep(plane, Evaluator(model, {"train": tr, "test": te}), grid, store="out/result.zarr")
    ds.train_loss.sel(x=0, y=0)

The pieces compose: the family maps coordinates to points, the Evaluator measures points (it owns the
BN policy and the loop/vmap choice), the store keeps the numbers with coordinates and provenance and
makes the sweep resumable, and `modescape.distributed` shards the grid's units across ``torchrun``
ranks. `Grid` is the one home of grid order: row-major over its dimensions, in order (for a plane,
``x`` outer and ``y`` inner), with the coordinates stored explicitly.

Also here: the trajectory plane (`trajectory_plane`, PCA of a run's checkpoints, Li et al. 2018 sec. 7)
and the convexity map (`convexity`, largest and smallest Hessian eigenvalue at each grid point).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from . import distributed as dd
from . import io
from . import space as sp
from .directions import PCAResult, pca_directions
from .evaluate import Evaluator, Metrics
from .families.base import Family, LinearFamily
from .families.lines import Plane
from .grid import MAX_POINTS, Grid, as_grid, auto_range, parse_range  # noqa: F401  (the grid API, here too)
from .progress import bar
from .provenance import data_hash, environment, model_hash
from .store import ResultStore, empty_dataset


def family_dims(family: Family) -> list[str]:
    describe = getattr(family, "describe", None)
    if describe is not None:
        return list(describe()["coords"])
    return ["t"] if family.dim == 1 else [f"c{i}" for i in range(family.dim)]


def hash_family(family: LinearFamily) -> str:
    """Content hash of what a family contributes to the numbers: its anchors, and the buffers it carries."""
    tensors = {"W": family.matrix().detach()}
    buffers = family.buffers_matrix() if family.carries_buffers else None
    if buffers is not None:
        tensors["B"] = buffers.detach()
    return io.tensor_hash(tensors)


# -- sweeping ------------------------------------------------------------------------------------

Measure = Callable[[np.ndarray], np.ndarray]  # coords [k, d] -> values [k, M]


def _default_rows(grid: Grid, numel: int) -> int:
    """Rows of the first dimension per unit (one store chunk, one resume step): about 128 points, fewer
    for very large models so that a unit's results stay a small part of a run."""
    inner = int(np.prod(grid.shape[1:])) if len(grid.shape) > 1 else 1
    cap = max(1, (2**28 // 4) // max(1, numel))
    return max(1, min(max(128, inner) // inner, max(1, cap // inner)))


def run_units(
    grid: Grid,
    names: Sequence[str],
    measure: Measure,
    store: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    rows: int = 1,
    progress: bool | None = None,
    description: str = "sweep",
    on_create: Callable[[], Mapping[str, Any]] | None = None,
) -> xr.Dataset:
    """Compute ``measure`` over the grid unit by unit into a Dataset (and a resumable store when given).

    Under torchrun, unit u is computed by rank ``u % world``; all ranks return the full result.
    ``on_create``, called on rank 0 only when a new store is made, returns extra attributes (e.g. the
    evaluation mode it picked); on resume the stored ones are used.

    With a store, rank 0 holds its lock (`modescape.locks.lock_store`: another process writing it is
    refused with one line) until the result is finished. Reopening checks every finished unit; units
    found missing or corrupt are computed again. Unless ``progress`` is False, rank 0 then prints
    "resuming: k of n points done" on stderr (and a line naming the damaged units, if any).
    """
    ctx = dd.context()
    if store is None:
        out = np.full((grid.size, len(names)), np.nan)
        inner = grid.size // grid.shape[0]
        n_units = -(-grid.shape[0] // rows)
        units = ctx.shard(n_units)
        total = sum(min(rows, grid.shape[0] - u * rows) * inner for u in units)
        with bar(description, total, enabled=progress if ctx.is_main else False) as advance:
            for u in units:
                sl = slice(u * rows, min((u + 1) * rows, grid.shape[0]))
                vals = measure(grid.points(sl))
                out[sl.start * inner : sl.stop * inner] = vals
                advance(vals.shape[0])
        out = dd.combine_units(out)
        ds = empty_dataset(grid.coords, names, {**dict(attrs or {}), "complete": True})
        for j, n in enumerate(names):
            ds[n].values[...] = out[:, j].reshape(grid.shape)
        return ds

    from .errors import UserError
    from .locks import lock_store

    path = Path(store)
    lock, error = None, None
    if ctx.is_main:
        try:
            lock = lock_store(path)  # before anything is created or repaired
            extra = {}
            if not path.exists() and on_create is not None:
                extra = dict(on_create())
            st = ResultStore.open_or_create(
                path, grid.coords, names, settings or {}, {**dict(attrs or {}), **extra}, unit_rows=rows
            )
        except UserError as e:
            error = e
    # every rank learns whether rank 0 could open the store (else the others would wait or write alone)
    message = dd.broadcast_object(None if error is None else str(error))
    try:
        if error is not None:
            raise error
        if message is not None:
            raise UserError(message)
        if not ctx.is_main:
            st = ResultStore(path)
        elif st.reopened and progress is not False:
            from rich.console import Console

            console = Console(stderr=True, emoji=False, highlight=False)
            if st.repaired:
                console.print(
                    f"{path}: {st.describe_units(st.repaired)} "
                    f"{'was' if len(st.repaired) == 1 else 'were'} missing or corrupt: computing again",
                    markup=False,
                    soft_wrap=True,
                )
            console.print(f"resuming: {st.points_done()} of {grid.size} points done", markup=False, soft_wrap=True)
        done = st.done()
        inner = grid.size // grid.shape[0]
        todo = [u for u in ctx.shard(st.n_units) if not done[u]]
        total = sum((st.unit_slice(u).stop - st.unit_slice(u).start) * inner for u in todo)
        with bar(description, total, enabled=progress if ctx.is_main else False) as advance:
            for u in todo:
                sl = st.unit_slice(u)
                vals = measure(grid.points(sl))
                st.write_unit(u, vals)
                advance(vals.shape[0])
        dd.barrier()
        if ctx.is_main:
            st.finish()
        dd.barrier()
        return st.dataset()
    finally:
        if lock is not None:
            lock.release()


def sweep(
    family: LinearFamily,
    evaluator: Evaluator,
    grid: Grid | Mapping[str, Any] | str,
    store: str | os.PathLike | None = None,
    attrs: Mapping[str, Any] | None = None,
    rows: int | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Evaluate ``family`` at every grid point with ``evaluator``; returns an ``xarray.Dataset``.

    ``grid``: a `Grid`, a dict ``{dim: "A:B:N" | values}`` (dims as the family names them: ``t`` for a
    line, ``x``, ``y`` for a plane) or, for a line, one range. ``store``: a ``.zarr`` path makes the
    sweep resumable (rerun with the same path to continue; see `modescape.store`). ``rows``: rows of the
    first dimension per unit (default: about 128 points). Points are made and measured one unit at a
    time, so the K points of a big grid never all exist at once. Variables are the evaluator's metric
    names (``train_loss``, ``test_accuracy``, ...); attributes hold the BN policy, the precision, the evaluation
    mode, the family, hashes of model, data and family, versions, and ``attrs``.
    """
    dd.init(evaluator.device)  # under torchrun: join the process group (gloo on CPU, nccl on GPU)
    dims = family_dims(family)
    g = as_grid(grid, dims)
    g = Grid(dict(zip(dims, g.coords.values(), strict=True)))
    rows = int(rows) if rows else _default_rows(g, family.layout.numel)
    family_hash = hash_family(family)
    describe = getattr(family, "describe", None)  # every shipped family has one; a user's may not
    desc = describe() if describe is not None else {"family": type(family).__name__}
    settings = {
        "grid": {d: g.coords[d] for d in dims},
        "family": desc,
        "family_hash": family_hash,
        "model_hash": model_hash(evaluator),
        "data_hash": data_hash(evaluator),
        "metrics": list(evaluator.names),
        "bn": evaluator.bn,
        "dtype": str(evaluator.dtype),
        "rows": rows,
    }
    precision = getattr(evaluator, "precision", "fp32")
    if precision != "fp32":  # part of what determines the numbers (fp32 left out: older stores still resume)
        settings["precision"] = precision
    attrs = {**settings, "precision": precision, **environment(evaluator.device), **dict(attrs or {})}
    attrs.pop("grid")

    def pick_mode() -> dict:
        if evaluator.family_mode is None:
            evaluator.choose_family_mode(family, torch.as_tensor(g.points(slice(0, rows))))
        return {"eval_mode": evaluator.family_mode}

    if store is not None:
        # one evaluation mode for the whole run, fixed at creation: the same bits on resume and on every rank
        mode = None
        if dd.context().is_main:
            if Path(store).exists():
                mode = ResultStore(store).attrs.get("eval_mode")
            else:
                mode = pick_mode()["eval_mode"]
        mode = dd.broadcast_object(mode)
        if mode:
            evaluator.family_mode = mode
        on_create = lambda: {"eval_mode": evaluator.family_mode}  # noqa: E731
    else:
        attrs.update(pick_mode())
        on_create = None

    def measure(c: np.ndarray) -> np.ndarray:
        return evaluate_coords(family, evaluator, c).values.numpy()

    return run_units(
        g,
        list(evaluator.names),
        measure,
        store,
        settings,
        attrs,
        rows,
        progress,
        f"{desc['family'].lower()} {'x'.join(map(str, g.shape))}",
        on_create,
    )


def evaluate_coords(family: LinearFamily, evaluator: Evaluator, coords: np.ndarray) -> Metrics:
    """Metrics at family(coords), through the evaluator's family-aware entry point."""
    return evaluator.evaluate_family(family, torch.as_tensor(coords, dtype=torch.float64), progress=False)


# -- trajectory plane ----------------------------------------------------------------------------


def trajectory_plane(
    points: Sequence[Mapping[str, torch.Tensor]],
    final: Mapping[str, torch.Tensor] | None = None,
    ignore: str = "none",
    space: sp.WeightSpace | None = None,
) -> tuple[Plane, PCAResult]:
    """The PCA plane of a trajectory: origin the final point, directions the top-2 principal components
    of ``(checkpoint - final)``. Returns the `Plane` and the `PCAResult` (explained variance, path [T, 2]).
    """
    pca = pca_directions(points, final, n=2, ignore=ignore, space=space)
    return Plane(pca.origin, pca.directions[0], pca.directions[1]), pca


# -- convexity map -------------------------------------------------------------------------------

CONVEXITY_NAMES = ("lambda_max", "lambda_min", "convexity_ratio")


def convexity(
    family: LinearFamily,
    evaluator: Evaluator,
    grid: Grid | Mapping[str, Any] | str,
    store: str | os.PathLike | None = None,
    source: str | None = None,
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    start: str = "gradient",
    params: str = "all",
    attrs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Li et al.'s convexity map: at each grid point the largest and smallest Hessian eigenvalues of the
    mean loss on ``source`` (default the evaluator's first), by Lanczos on Hessian-vector products
    (`modescape.curvature.extreme_eigenvalues`: one run, both ends, residuals at most ``tol * max|theta|``),
    and ``|lambda_min / lambda_max|`` (near 0: locally convex; large: strong negative curvature).
    Variables ``lambda_max``, ``lambda_min``, ``convexity_ratio``, ``n_hvp``; resumable like `sweep`.
    ``start``: Lanczos's first vector at each point (see `modescape.curvature.eigenvalues`); ``params``: the
    parameter filter of the Hessian (`modescape.curvature.select_params`; the reference code uses
    ``"weights"``, the tensors with dim > 1).
    """
    from . import curvature

    dd.init(evaluator.device)
    dims = family_dims(family)
    g = as_grid(grid, dims)
    g = Grid(dict(zip(dims, g.coords.values(), strict=True)))
    settings = {
        "grid": {d: g.coords[d] for d in dims},
        "family_hash": hash_family(family),
        "model_hash": model_hash(evaluator),
        "data_hash": data_hash(evaluator),
        "bn": evaluator.bn,
        "source": source,
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "start": start,
        "params": params,
        "what": "convexity",
    }
    all_attrs = {k: v for k, v in settings.items() if k != "grid"}
    all_attrs.update(
        {**environment(evaluator.device), "family": getattr(family, "describe", dict)(), **dict(attrs or {})}
    )

    def measure(c: np.ndarray) -> np.ndarray:
        out = []
        for row in c:
            point = family(torch.as_tensor(row, dtype=torch.float64))
            point = {k: v.detach().to(evaluator.device, evaluator.dtype) for k, v in point.items()}
            lo, hi, n = curvature.extreme_eigenvalues(
                evaluator, point=point, source=source, tol=tol, max_iter=max_iter, seed=seed, start=start, params=params
            )
            out.append([hi, lo, abs(lo / hi) if hi != 0 else float("nan"), n])
        return np.asarray(out, dtype=np.float64)

    return run_units(
        g, list(CONVEXITY_NAMES) + ["n_hvp"], measure, store, settings, all_attrs, 1, progress, "convexity"
    )

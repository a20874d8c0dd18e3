"""`modescape topology RESULT`: the shape of a stored landscape in numbers (`modescape.topology`).

Reads a result (``result.zarr`` or the ``--out`` folder of a sweep), computes the sublevel-set persistence
of one metric on the grid graph, its merge tree and basins, prints the numbers and writes, beside the
result (or into ``--out``): ``topology.json`` (``topology_<metric>.json`` for another metric than
train_loss) and three figures, ``<metric>_persistence.png``, ``<metric>_merge_tree.png`` and
``<metric>_minima.png``. `write_topology` is the same in one call, for other commands (``surface
--topology``).

Only typer, pathlib and typing are imported here: everything else is imported inside the command, so
``modescape --help`` starts at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .app import app, console


def write_topology(
    ds: Any,
    out: Path,
    metric: str = "train_loss",
    threshold: str | None = None,
    neighbourhood: str = "axis",
    figures: bool = True,
    source: str | None = None,
) -> dict:
    """Compute the topology of ``ds[metric]``, draw it and store ``topology.json`` in ``out``.

    Returns the summary (the numbers of `TopologyResult.summary`) with the paths written (``json``,
    ``figures``). ``threshold``: loss units or ``"P%"`` of the loss range (default 1%); ``neighbourhood``:
    axis (4 in 2-D) or full (8 in 2-D), or a neighbour count.
    """
    from .. import io
    from ..provenance import command_line
    from ..topology import persistence

    topo = persistence(ds, metric, neighbourhood=neighbourhood, threshold=threshold)
    out = Path(out)
    name = "topology.json" if metric == "train_loss" else f"topology_{metric}.json"
    attrs = getattr(ds, "attrs", {}) or {}
    record = {
        **topo.to_dict(),
        "source": source,
        "command": command_line(),
        "result_attrs": {
            k: attrs[k]
            for k in ("model_hash", "data_hash", "family_hash", "bn", "settings_hash", "complete")
            if k in attrs
        },
    }
    paths = []
    if figures:
        from ..plots.topology import plot_topology

        paths = plot_topology(topo, out, prefix=metric)
    io.write_json(out / name, record)
    return {**topo.summary(), "json": str(out / name), "figures": [str(p) for p in paths]}


def check_neighbourhood(value: str) -> str:
    """The spelling of ``--neighbourhood`` (the dimension is checked once the result is read)."""
    from ..errors import UserError

    v = value.strip().lower()
    if v in ("axis", "full") or v.isdigit():
        return v
    raise UserError(f"unknown --neighbourhood '{value}': use axis (4 in 2-D) or full (8 in 2-D), or a neighbour count")


@app.command("topology")
def topology_cmd(
    result: Path = typer.Argument(..., help="A result.zarr, or the --out folder of a sweep that holds one."),
    metric: str = typer.Option("train_loss", "--metric", help="The variable to analyse (train_loss, test_loss, ...)."),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="Basins count minima with persistence above this: loss units (0.01) or a "
        "percentage of the loss range (2%). Default 1%.",
    ),
    neighbourhood: str = typer.Option(
        "axis",
        "--neighbourhood",
        help="Grid graph: axis (4 neighbours in 2-D, the default) or full (8 in 2-D, "
        "3^N-1 in N-D); the counts 4 and 8 work too.",
    ),
    figures: bool = typer.Option(
        True,
        "--figures/--no-figures",
        help="Draw the persistence diagram, the merge tree and the minima on the landscape.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for topology.json and the figures (default: beside the result)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Persistence, merge tree and basins of a landscape: how many minima, how deep, how smooth."""
    check_neighbourhood(neighbourhood)
    from ..store import load
    from ..topology import resolve_threshold
    from . import common

    if threshold is not None:
        resolve_threshold(threshold, 1.0)  # its spelling, before the result is read
    ds = load(result)
    res = result if result.name.endswith(".zarr") else result / "result.zarr"
    target = common.out_dir(out) if out is not None else res.parent
    summary = write_topology(ds, target, metric, threshold, neighbourhood, figures, source=str(res))
    if as_json:
        common.print_json(summary)
        return
    ds_ = summary["deepest_spurious"]
    console.print(
        f"{summary['metric']} on a {' x '.join(map(str, summary['shape']))} grid "
        f"({', '.join(summary['dims'])}), {summary['neighbourhood']} neighbourhood "
        f"({summary['n_neighbours']} neighbours)"
    )
    console.print(
        f"values: {summary['value_min']:.6g} to {summary['value_max']:.6g}; global minimum at "
        + ", ".join(f"{k} = {v:.4g}" for k, v in summary["global_minimum"].items())
    )
    console.print(
        f"local minima: {summary['n_minima']}; basins with persistence > {summary['threshold']:.4g}: "
        f"{summary['basins']}"
    )
    if ds_ is None:
        console.print("deepest spurious basin: none (one minimum)")
    else:
        where = ", ".join(f"{k} = {v:.4g}" for k, v in ds_["coords"].items())
        console.print(
            f"deepest spurious basin: depth {ds_['persistence']:.4g} (minimum {ds_['birth']:.4g} at {where}, "
            f"saddle {ds_['death']:.4g})"
        )
    console.print(
        f"roughness (total spurious persistence / range): {summary['roughness']:.4g}; "
        f"smoothness 1/(1+roughness): {summary['smoothness']:.4f}"
    )
    figs = f" and {len(summary['figures'])} figures" if summary["figures"] else ""
    console.print(f"wrote {summary['json']}{figs}")

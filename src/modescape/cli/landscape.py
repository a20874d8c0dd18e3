"""`modescape interpolate | surface | trajectory | plot`: loss landscapes from the command line.

Each sweep writes ``--out DIR`` with ``result.zarr`` (resumable: rerun with the same ``--out`` after an
interruption and it continues where it stopped), PNG figures and ``landscape.html`` (interactive). Under
``torchrun --nproc_per_node=N modescape surface ...`` the grid is sharded across ranks. ``A:B:N`` means
N points from A to B inclusive.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..checks import IGNORES, NORMALIZATIONS, check_choice, check_policy, check_positive, input_file, parse_directions
from ..errors import UserError
from ..grid import MAX_POINTS, Grid, auto_range, parse_range
from ..lazy import lazy
from .app import app, common, console

np = lazy("numpy")
torch = lazy("torch")
dd = lazy("modescape.distributed")
io = lazy("modescape.io")
sp = lazy("modescape.space")
landscape = lazy("modescape.landscape")
families = lazy("modescape.families")
plots = lazy("modescape.plots")
if TYPE_CHECKING:
    from torch import device as Device

    from ..distributed import Context

_BN = typer.Option(
    None,
    "--bn",
    help="BatchNorm policy: running, recompute or train (default: recompute for a "
    "BatchNorm model at points between checkpoints, where no stored statistics "
    "belong to the point; running for a plane around one model).",
)
_OUT = typer.Option(..., "--out", help="Output folder: result.zarr, figures, landscape.html (rerun to resume).")


def _setup(device: str | None, bn: str | None) -> tuple[Device, Context]:
    if bn is not None:
        check_policy(bn, "--bn")
    dev = common.resolve_device(device)
    ctx = dd.init(dev)
    return dd.rank_device(dev), ctx


def _between_models_bn(net) -> str:
    """The default policy at points between checkpoints: fresh statistics for a BatchNorm model."""
    from ..evaluate import default_bn

    return default_bn(net)


def _evaluator(net, split, bn: str, dev, batch_size: int, mode: str, precision: str = "fp32"):
    from ..evaluate import Evaluator

    return Evaluator(
        net,
        {"train": split.train, "test": split.test},
        bn=bn,
        device=dev,
        batch_size=batch_size,
        mode=mode,
        progress=False,
        precision=precision,
    )


def _precision_attrs(ev, family, coords, check: int, seed: int) -> dict:
    """The precision, and with ``--check-precision N`` its measured difference to fp32 (attrs and summary)."""
    out: dict = {"precision": ev.precision}
    checked = common.precision_check(ev, family, coords, check, seed)
    if checked is not None:
        out["precision_check"] = checked
    return out


def _load_other(path: Path, like, dev, role: str = "") -> tuple[dict, dict]:
    """The parameters and buffers of another checkpoint of the same architecture."""
    try:
        net, _ = io.load_model(path, model=copy.deepcopy(like).cpu(), device=dev)
    except UserError as e:
        if role and "model expects" in str(e):
            raise UserError(f"{role} ({path}) must have the same architecture as A: {e}") from None
        raise
    space = sp.WeightSpace(net)
    return space.point(net), space.buffers(net)


def _finish(ds, out: Path, ctx, vtk: bool, as_json: bool, summary: dict) -> None:
    if not ctx.is_main:
        return
    figures = plots.plot_result(ds, out, vtk=vtk)
    summary = {**summary, "out": str(out), "result": str(out / "result.zarr"), "figures": [str(f) for f in figures]}
    io.write_json(out / "summary.json", summary)
    if as_json:
        common.print_json(summary)
    else:
        for k, v in summary.items():
            if k not in ("figures",):
                console.print(f"{k}: {v}")
        console.print(f"figures and landscape.html in {out}")


def _check_grid(grid: Grid, options: dict[str, str]) -> Grid:
    """A grid the figures can show: at least 2 distinct values per axis, and not absurdly many points."""
    for d, values in grid.coords.items():
        opt = options.get(d, f"--{d}")
        if values.size < 2 or float(values.max()) == float(values.min()):
            raise UserError(
                f"{opt} gives {values.size} point(s) from {values.min():g} to {values.max():g}: a figure "
                f"needs at least 2 distinct values per axis, e.g. -1:1:51"
            )
    if grid.size > MAX_POINTS:
        raise UserError(f"the grid has {grid.size:,} points (at most {MAX_POINTS:,}): use fewer points per axis")
    return grid


def _provenance(seed: int, **extra) -> dict:
    return {"seed": seed, "command": common.command_line(), **extra}


@app.command("interpolate")
def interpolate_cmd(
    a: Path = typer.Argument(..., help="Checkpoint A (t = 0)."),
    b: Path = typer.Argument(..., help="Checkpoint B (t = 1), same architecture."),
    out: Path = _OUT,
    steps: int = typer.Option(51, "--steps", help="Number of points along the line."),
    range_: str = typer.Option("-0.5:1.5", "--range", help="A:B (with --steps) or A:B:N: the values of t."),
    bn: str | None = _BN,
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    batch_size: int = typer.Option(1024, "--batch-size"),
    mode: str = typer.Option("auto", "--mode", help="Evaluator mode: auto, loop or vmap."),
    precision: str = common.PRECISION,
    check_precision: int = common.CHECK_PRECISION,
    seed: int = typer.Option(0, "--seed"),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Loss and accuracy along the straight line (1 - t) A + t B (Goodfellow et al. 2015)."""
    check_positive(batch_size=batch_size)
    common.check_precision_options(precision, check_precision)
    if range_.count(":") == 1 and steps < 2:
        raise UserError(f"--steps must be at least 2; got {steps}")
    grid = _check_grid(Grid({"t": parse_range(range_, steps, what="--range")}), {"t": "--range"})
    input_file(a, "checkpoint A", "final.safetensors"), input_file(b, "checkpoint B", "final.safetensors")
    dev, ctx = _setup(device, bn)
    common.seed_everything(seed)
    net, meta, split = common.load_checkpoint(a, model, model_args, data, data_root, data_args, dev)
    bn = bn or _between_models_bn(net)
    space = sp.WeightSpace(net)
    pa, ba = space.point(net), space.buffers(net)
    pb, bb = _load_other(b, net, dev, "B")
    if all(torch.equal(pa[k], pb[k]) for k in pa):
        raise UserError(f"{a} and {b} hold the same weights: the line between them is a single point")
    ev = _evaluator(net, split, bn, dev, batch_size, mode, precision)
    out = common.out_dir(out) if ctx.is_main else Path(out)
    dd.barrier()
    line = families.Line(pa, pb, buffers=[ba, bb] if ba else None)  # each point carries A's and B's buffers
    from ..paths import evaluate_path

    prec = _precision_attrs(ev, line, grid.coords["t"], check_precision, seed)
    res = evaluate_path(
        line,
        ev,
        t=grid.coords["t"],
        name="line",
        store=out / "result.zarr",
        attrs=_provenance(
            seed,
            checkpoints=[str(a), str(b)],
            data=split.meta,
            models={"labels": ["A", "B"], "coords": [[0.0, 0.0], [1.0, 0.0]]},
            **prec,
        ),
    )
    sm = res.summary()  # start / end: A and B themselves, whether or not the grid holds t = 0 and t = 1
    _, inside = res.on_unit("train_loss")
    summary = {
        "points": int(res.t.numel()),
        "bn": bn,
        **prec,
        **{f"{name}_at_{end}": sm[name][key] for name in ev.names for end, key in (("A", "start"), ("B", "end"))},
        "max_train_loss_between": float(inside.max()),
        "barriers": res.barriers(),
    }
    _finish(res.to_xarray(), out, ctx, False, as_json, summary)


@app.command("surface")
def surface_cmd(
    checkpoint: Path = typer.Argument(..., help="The model at the centre (or model A with --through)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder: result.zarr, figures, landscape.html (rerun to resume). Required."
    ),
    x: str | None = typer.Option(
        None,
        "--x",
        help="A:B:N along the first direction (default -1:1:51). With "
        "--through: distances in weight space along the plane's orthonormal basis (A at 0, "
        "B and C at the coordinates printed; default: around the three models).",
    ),
    y: str | None = typer.Option(
        None, "--y", help="A:B:N along the second direction (default -1:1:51; with --through as for --x)."
    ),
    norm: str = typer.Option(
        "filter",
        "--norm",
        help="Direction normalisation: filter, layer, model, head (each "
        "attention head as one block; docs/transformers.md) or none.",
    ),
    ignore: str = typer.Option("biasbn", "--ignore", help="biasbn: zero directions on biases and norm layers; none."),
    orthogonal: bool = typer.Option(False, "--orthogonal", help="Make the second direction orthogonal to the first."),
    directions: str = typer.Option(
        "random",
        "--directions",
        help="random (seeded, normalised by --norm), hessian (the Hessian's top two "
        "eigenvectors at the checkpoint, unit length, used exactly) or hessian:I,J "
        "(eigenvectors I and J, 0 = the largest eigenvalue).",
    ),
    topology: bool = typer.Option(
        False,
        "--topology",
        help="Also the persistence, merge tree and basins of the train loss (modescape topology) in the same run.",
    ),
    topology_threshold: str | None = typer.Option(
        None,
        "--topology-threshold",
        help="With --topology: basins deeper than this (loss units, or P% of the loss range; default 1%).",
    ),
    neighbourhood: str = typer.Option(
        "axis", "--neighbourhood", help="With --topology: axis (4 neighbours) or full (8 neighbours)."
    ),
    through: tuple[Path, Path] | None = typer.Option(
        None, "--through", help="Two more checkpoints B C: the plane through A, B, C."
    ),
    steps: int = typer.Option(41, "--steps", help="Points per axis for --through when --x/--y are not given."),
    convexity_points: int = typer.Option(0, "--convexity", help="Also a convexity map on an N x N grid (0: no)."),
    vtk: bool = typer.Option(False, "--vtk", help="Also write a .vtk surface for ParaView."),
    bn: str | None = _BN,
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    batch_size: int = typer.Option(1024, "--batch-size"),
    mode: str = typer.Option("auto", "--mode", help="Evaluator mode: auto, loop or vmap."),
    precision: str = common.PRECISION,
    check_precision: int = common.CHECK_PRECISION,
    seed: int = typer.Option(0, "--seed", help="Seed of the random directions (direction j uses seed + j)."),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """A 2-D slice: filter-normalised random plane (Li et al. 2018) or the plane through three models."""
    if out is None:
        raise UserError("surface needs --out DIR: the folder for result.zarr, the figures and landscape.html")
    check_choice(norm, NORMALIZATIONS, "--norm")
    check_choice(ignore, IGNORES, "--ignore")
    kind, eig_indices = parse_directions(directions)
    if kind == "hessian" and through:
        raise UserError(
            "--directions hessian spans a plane around one model; --through spans the plane through "
            "three: give one of them"
        )
    if topology:
        from .topology import check_neighbourhood

        neighbourhood = check_neighbourhood(neighbourhood)
    check_positive(batch_size=batch_size, steps=steps)
    common.check_precision_options(precision, check_precision)
    if convexity_points < 0 or convexity_points == 1:
        raise UserError(f"--convexity must be 0 (none) or at least 2 points per axis; got {convexity_points}")
    xs, ys = (parse_range(r, what=w) if r else None for r, w in ((x, "--x"), (y, "--y")))  # checked before loading
    input_file(checkpoint, "checkpoint", "final.safetensors")
    for p in through or ():
        input_file(p, "--through checkpoint", "final.safetensors")
    dev, ctx = _setup(device, bn)
    common.seed_everything(seed)
    net, meta, split = common.load_checkpoint(checkpoint, model, model_args, data, data_root, data_args, dev)
    bn = bn or (_between_models_bn(net) if through else "running")
    p0 = sp.WeightSpace(net).point(net)
    extra: dict = {"checkpoints": [str(checkpoint)], "data": split.meta}
    if through:
        (pb, bb), (pc, bc) = (_load_other(p, net, dev, role) for p, role in zip(through, "BC", strict=True))
        b0 = sp.WeightSpace(net).buffers(net)
        family = families.PlaneThrough(
            p0, pb, pc, buffers=[b0, bb, bc] if b0 else None
        )  # barycentric mix of the buffers
        mc = family.model_coords.numpy()
        grid = Grid(
            {
                "x": xs if xs is not None else auto_range(mc[:, 0], steps),
                "y": ys if ys is not None else auto_range(mc[:, 1], steps),
            }
        )
        extra.update(
            checkpoints=[str(checkpoint), *map(str, through)], models={"labels": ["A", "B", "C"], "coords": mc.tolist()}
        )
    elif kind == "hessian":  # unit eigenvectors at the point, used exactly (not renormalised per tensor)
        from ..directions import hessian_directions
        from ..evaluate import Evaluator

        hev = Evaluator(net, {"train": split.train}, bn=bn, device=dev, batch_size=batch_size, progress=False)
        assert eig_indices is not None  # parse_directions gives indices for hessian:I,J
        hd = hessian_directions(hev, point=p0, indices=eig_indices, seed=seed)
        family = families.Plane(p0, *hd.directions)
        grid = Grid(
            {
                "x": xs if xs is not None else parse_range("-1:1:51"),
                "y": ys if ys is not None else parse_range("-1:1:51"),
            }
        )
        extra.update(
            directions=hd.to_dict(), axis_labels=hd.labels(), models={"labels": ["model"], "coords": [[0.0, 0.0]]}
        )
    else:
        from ..directions import random_directions

        dx, dy = random_directions(net, 2, normalization=norm, ignore=ignore, seed=seed, orthogonal=orthogonal)
        family = families.Plane(p0, dx, dy)
        grid = Grid(
            {
                "x": xs if xs is not None else parse_range("-1:1:51"),
                "y": ys if ys is not None else parse_range("-1:1:51"),
            }
        )
        extra.update(
            directions={"normalization": norm, "ignore": ignore, "seed": seed, "orthogonal": orthogonal},
            models={"labels": ["model"], "coords": [[0.0, 0.0]]},
        )
    _check_grid(grid, {"x": "--x" if x or not through else "--steps", "y": "--y" if y or not through else "--steps"})
    ev = _evaluator(net, split, bn, dev, batch_size, mode, precision)
    out = common.out_dir(out) if ctx.is_main else Path(out)
    dd.barrier()
    prec = _precision_attrs(ev, family, grid.points(), check_precision, seed)
    ds = landscape.sweep(family, ev, grid, store=out / "result.zarr", attrs=_provenance(seed, **extra, **prec))
    summary = {
        "points": int(ds["train_loss"].size),
        "grid": [len(ds.x), len(ds.y)],
        "bn": bn,
        **prec,
        "min_train_loss": float(ds["train_loss"].min()),
        "eval_mode": ds.attrs.get("eval_mode"),
    }
    if through:  # where A, B and C lie on the plane (the --x / --y coordinates)
        summary["model_coords"] = {
            k: [round(float(v), 6) for v in c] for k, c in zip("ABC", extra["models"]["coords"], strict=True)
        }
    if convexity_points:
        cgrid = Grid(
            {
                "x": np.linspace(grid.coords["x"][0], grid.coords["x"][-1], convexity_points),
                "y": np.linspace(grid.coords["y"][0], grid.coords["y"][-1], convexity_points),
            }
        )
        from ..evaluate import Evaluator

        cev = Evaluator(net, {"train": split.train}, bn=bn, device=dev, batch_size=batch_size, progress=False)
        cds = landscape.convexity(family, cev, cgrid, store=out / "convexity.zarr", attrs=_provenance(seed, **extra))
        if ctx.is_main:
            plots.plot_result(cds, out / "convexity", plotlyjs=out)
        summary["max_convexity_ratio"] = float(cds["convexity_ratio"].max())
    if topology and ctx.is_main:
        from .topology import write_topology

        summary["topology"] = write_topology(
            ds, out, "train_loss", topology_threshold, neighbourhood, source=str(out / "result.zarr")
        )
    _finish(ds, out, ctx, vtk, as_json, summary)


@app.command("trajectory")
def trajectory_cmd(
    run_dir: Path = typer.Argument(..., help="A training run folder (with checkpoints/epoch-NNN.safetensors)."),
    out: Path = _OUT,
    x: str | None = typer.Option(None, "--x", help="A:B:N along PC1 (default: the path's extent plus margins)."),
    y: str | None = typer.Option(None, "--y", help="A:B:N along PC2."),
    steps: int = typer.Option(41, "--steps", help="Points per axis when --x/--y are not given."),
    ignore: str = typer.Option("none", "--ignore", help="biasbn: leave biases and norm layers out of the PCA."),
    vtk: bool = typer.Option(False, "--vtk", help="Also write a .vtk surface for ParaView."),
    bn: str | None = _BN,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    batch_size: int = typer.Option(1024, "--batch-size"),
    mode: str = typer.Option("auto", "--mode", help="Evaluator mode: auto, loop or vmap."),
    precision: str = common.PRECISION,
    check_precision: int = common.CHECK_PRECISION,
    seed: int = typer.Option(0, "--seed"),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """The loss on the PCA plane of a training trajectory, with the path drawn (Li et al. 2018, sec. 7)."""
    check_positive(batch_size=batch_size, steps=steps)
    common.check_precision_options(precision, check_precision)
    xs, ys = (parse_range(r, what=w) if r else None for r, w in ((x, "--x"), (y, "--y")))  # checked before loading
    dev, ctx = _setup(device, bn)
    files = sorted((run_dir / "checkpoints").glob("epoch-*.safetensors"))
    final_path = run_dir / "final.safetensors"
    if not final_path.exists():
        if not files:
            raise UserError(f"no checkpoints in {run_dir / 'checkpoints'}: pass the --out folder of `modescape train`")
        final_path = files[-1]
    if len(files) < 3:
        raise UserError(f"{run_dir / 'checkpoints'} has {len(files)} checkpoints; a PCA plane needs at least 3")
    net, meta, split = common.load_checkpoint(final_path, None, "", data, data_root, data_args, dev)
    bn = bn or _between_models_bn(net)
    final = sp.WeightSpace(net).point(net)
    points = [_load_other(f, net, dev)[0] for f in files]
    plane, pca = landscape.trajectory_plane(points, final, ignore=ignore, space=sp.WeightSpace(net))
    path = pca.path.numpy()
    grid = Grid(
        {
            "x": xs if xs is not None else auto_range(path[:, 0], steps, 0.2),
            "y": ys if ys is not None else auto_range(path[:, 1], steps, 0.2),
        }
    )
    _check_grid(grid, {"x": "--x" if x else "--steps", "y": "--y" if y else "--steps"})
    ev = _evaluator(net, split, bn, dev, batch_size, mode, precision)
    out = common.out_dir(out) if ctx.is_main else Path(out)
    dd.barrier()
    prec = _precision_attrs(ev, plane, grid.points(), check_precision, seed)
    ds = landscape.sweep(
        plane,
        ev,
        grid,
        store=out / "result.zarr",
        attrs=_provenance(
            seed,
            run_dir=str(run_dir),
            checkpoints=[str(f) for f in files],
            data=split.meta,
            path=path.tolist(),
            explained_variance=pca.explained.tolist(),
            path_residual=pca.residual.tolist(),
            ignore=ignore,
            **prec,
        ),
    )
    summary = {
        "checkpoints": len(files),
        "explained_variance": [round(float(v), 4) for v in pca.explained],
        "grid": [len(ds.x), len(ds.y)],
        "bn": bn,
        **prec,
        "min_train_loss": float(ds["train_loss"].min()),
    }
    _finish(ds, out, ctx, vtk, as_json, summary)


@app.command("plot")
def plot_cmd(
    result: Path = typer.Argument(..., help="A result.zarr, or the --out folder that holds one."),
    out: Path | None = typer.Option(None, "--out", help="Where to write the figures (default: beside the result)."),
    var: str | None = typer.Option(None, "--var", help="Variable to plot (default train_loss)."),
    vtk: bool = typer.Option(False, "--vtk", help="Also write a .vtk surface for ParaView."),
    as_json: bool = common.JSON,
) -> None:
    """Redraw the figures and the interactive HTML of a stored result."""
    from ..store import load

    ds = load(result)
    res = result if result.name.endswith(".zarr") else result / "result.zarr"
    target = common.out_dir(out) if out is not None else res.parent
    if not ds.attrs.get("complete", False):
        console.print(
            "[yellow]note:[/] the result is not complete; missing points are blank (rerun the sweep to finish)"
        )
    figures = plots.plot_result(ds, target, vtk=vtk, var=var)
    if as_json:
        common.print_json({"figures": [str(f) for f in figures]})
    else:
        console.print(f"wrote {len(figures)} files to {target}")

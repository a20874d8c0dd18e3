"""`modescape hessian | sharpness | correlate`: curvature and sharpness of minima from the command line.

* ``hessian CHECKPOINT``: top-k eigenvalues (Lanczos or power), optionally the trace (Hutchinson /
  Hutch++) and the spectral density (SLQ, plotted), per parameter filter or per layer / block; of the
  Hessian, the generalised Gauss-Newton matrix or the empirical Fisher (``--curvature``). Under
  ``torchrun`` every rank takes its shard of the data and the products are all-reduced (docs/curvature.md).
* ``sharpness CHECKPOINT...``: the measures of `modescape.sharpness` (all, or ``--measures a,b``).
* ``correlate RUN_DIR...``: every measure and the generalisation gap over trained runs, Kendall's tau,
  a table and a plot.

``--n-train N`` uses the first N training samples (curvature costs one pass over the data per product).
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from ..checks import check_choice, check_policy, check_positive, input_file
from ..errors import UserError
from ..lazy import lazy
from .app import app, common, console

cv = lazy("modescape.curvature")
ddp = lazy("modescape.distributed")
io = lazy("modescape.io")
sh = lazy("modescape.sharpness")
plots = lazy("modescape.plots")

_BN = typer.Option(
    "running", "--bn", help="BatchNorm policy: running (eval mode, stored statistics), recompute or train."
)


def _setup(
    checkpoint: Path,
    bn: str,
    split_name: str,
    n_train: int | None,
    batch_size: int,
    device,
    model,
    model_args,
    data,
    data_root,
    data_args,
    shard: bool = False,
) -> tuple:
    from ..evaluate import Evaluator

    check_policy(bn, "--bn")
    check_choice(split_name, ("train", "test"), "--split")
    input_file(checkpoint, "checkpoint", "final.safetensors")
    dev = common.resolve_device(device)
    net, meta, split = common.load_checkpoint(checkpoint, model, model_args, data, data_root, data_args, dev)
    x, y = getattr(split, split_name)
    if n_train is not None:
        if n_train < 1:
            raise UserError("--n-train must be at least 1")
        x, y = x[:n_train], y[:n_train]
    if shard:  # under torchrun: this rank's samples (rank, rank + world, ...); one process: all of them
        x, y = cv.shard((x, y))
    ev = Evaluator(
        net,
        {split_name: (x, y)},
        metrics=("loss", "accuracy"),
        bn=bn,
        device=dev,
        batch_size=batch_size,
        progress=False,
    )
    return ev, meta


@app.command("hessian")
def hessian_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.safetensors with its sidecar)."),
    top_k: int = typer.Option(5, "--top-k", help="Number of eigenvalues."),
    which: str = typer.Option("largest", "--which", help="largest (algebraic), smallest (algebraic) or magnitude."),
    tol: float = typer.Option(1e-4, "--tol", help="Ritz residual tolerance, relative to the largest |eigenvalue|."),
    method: str = typer.Option("lanczos", "--method", help="lanczos or power."),
    max_iter: int | None = typer.Option(None, "--max-iter", help="Lanczos steps (power: products per pair) at most."),
    do_trace: bool = typer.Option(False, "--trace", help="Also estimate the trace."),
    trace_method: str = typer.Option(
        "hutch++",
        "--trace-method",
        help="hutch++ (default: exact on the top subspace, far fewer products on network Hessians) or hutchinson.",
    ),
    rtol: float = typer.Option(0.01, "--rtol", help="Trace: stop when stderr <= rtol * |trace|."),
    max_samples: int = typer.Option(
        1000, "--max-samples", help="Trace: probes at most (then reported as not converged)."
    ),
    do_density: bool = typer.Option(False, "--density", help="Also the spectral density (SLQ), plotted into --out."),
    probes: int = typer.Option(5, "--probes", help="Density: number of SLQ probes."),
    steps: int = typer.Option(80, "--steps", help="Density: Lanczos steps per probe."),
    params: str = typer.Option(
        "all", "--params", help="all, weights, biases, norms, or a layer-name prefix (comma list)."
    ),
    per: str | None = typer.Option(None, "--per", help="Per layer or per block: layer, block or a depth 1, 2, ..."),
    hvp: str = typer.Option("auto", "--hvp", help="HVP method: auto, double-backward or forward-over-reverse."),
    curvature: str = typer.Option(
        "hessian",
        "--curvature",
        help="The matrix: hessian, ggn (generalised Gauss-Newton) or fisher (empirical Fisher).",
    ),
    start: str = typer.Option(
        "gradient", "--start", help="First Lanczos/power vector: gradient (seeded noise plus the gradient) or random."
    ),
    bn: str = _BN,
    split_name: str = typer.Option("train", "--split", help="Data the loss is averaged over: train or test."),
    n_train: int | None = typer.Option(None, "--n-train", help="Use only the first N samples."),
    batch_size: int = typer.Option(1024, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", help="Folder for hessian.json and density.png."),
    seed: int = typer.Option(0, "--seed"),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Hessian (or GGN, empirical Fisher) eigenvalues, trace and spectral density of the loss at a checkpoint."""
    check_choice(curvature, ("hessian", "ggn", "fisher"), "--curvature")
    if hvp != "auto" and curvature != "hessian":
        raise UserError(f"--hvp {hvp} applies to --curvature hessian only (GGN and Fisher products are jvp + vjp)")
    if which not in cv.WHICH:
        raise UserError(f"unknown --which '{which}': use largest, smallest or magnitude")
    if hvp not in cv.HVP_METHODS:
        raise UserError(f"unknown --hvp '{hvp}': use one of {', '.join(cv.HVP_METHODS)}")
    if start not in ("gradient", "random"):
        raise UserError(f"unknown --start '{start}': use gradient or random")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1; got {top_k}")
    if not tol > 0 or not rtol > 0:
        raise UserError("--tol and --rtol must be positive")
    for name, value, least in (
        ("--max-iter", max_iter, 1),
        ("--max-samples", max_samples, 2),
        ("--probes", probes, 1),
        ("--steps", steps, 2),
    ):
        if value is not None and value < least:
            raise UserError(f"{name} must be at least {least}; got {value}")
    common.seed_everything(seed)
    dev = ddp.rank_device(common.resolve_device(device))
    ctx = ddp.init(dev)  # several ranks under torchrun: each its shard of the data, products all-reduced
    ev, meta = _setup(
        checkpoint,
        bn,
        split_name,
        n_train,
        batch_size,
        str(dev),
        model,
        model_args,
        data,
        data_root,
        data_args,
        shard=True,
    )
    outdir = common.out_dir(out) if out is not None and ctx.is_main else None
    chosen = cv.select_params(ev.space, params)
    groups = {params: chosen}
    if per:  # each layer / block, restricted to what --params selects
        groups = {g: tuple(n for n in names if n in chosen) for g, names in cv.param_groups(ev.space, per).items()}
        groups = {g: names for g, names in groups.items() if names}
    sizes = {g: sum(math.prod(ev.space.shapes[n]) for n in names) for g, names in groups.items()}
    for g, size in sizes.items():
        if top_k > size:
            raise UserError(f"--top-k {top_k} is more than the {size} parameters of '{g}': ask for at most {size}")
    result = {
        "checkpoint": str(checkpoint),
        "curvature": curvature,
        "bn": bn,
        "split": split_name,
        "n": ev.sources[split_name].n,
        "ranks": ctx.world,
        "which": which,
        "tol": tol,
        "method": method,
        "groups": {},
        "command": common.command_line(),
    }
    kind = "Hessian"
    for g, names in groups.items():
        H = cv.curvature_operator(curvature, ev, params=list(names), method=hvp, source=split_name)
        kind, result["n"] = H.kind, H.n_total
        r = cv.eigenvalues(H, k=top_k, which=which, tol=tol, method=method, max_iter=max_iter, seed=seed, start=start)
        entry = {
            "size": H.size,
            "hvp_method": getattr(H, "method", "jvp+vjp"),
            "retained_graph": H.retained,
            "start": start,
            "eigenvalues": r.to_dict(),
        }
        if do_trace:
            entry["trace"] = cv.trace(H, method=trace_method, rtol=rtol, seed=seed, max_samples=max_samples).to_dict()
        if do_density:
            d = cv.density(H, n_probes=probes, steps=steps, seed=seed)
            entry["density"] = {"sigma": d.sigma, "trace": d.trace, "moment2": d.moment(2)}
            if outdir is not None:
                safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in g)
                png = outdir / (f"density-{safe}.png" if per else "density.png")
                plots.plot_density(
                    d, png, label=checkpoint, title=f"{kind} density: {plots.base.run_names([checkpoint])[0]} ({g})"
                )
                io.write_json(png.with_suffix(".json"), d.to_dict())
                entry["density"]["plot"] = str(png)
        H.release()
        result["groups"][g] = entry
    if not ctx.is_main:  # every rank computed the same numbers; rank 0 reports them
        return
    if outdir is not None:
        io.write_json(outdir / "hessian.json", result)
    if as_json:
        common.print_json(result)
        return
    ranks = f", {ctx.world} ranks" if ctx.world > 1 else ""
    table = Table(title=f"{kind} at {checkpoint.name} ({which}, bn={bn}, {split_name} n={result['n']}{ranks})")
    for col in ("parameters", "size", "eigenvalues", "HVPs", "trace", "stderr", "trace HVPs"):
        table.add_column(col, justify="left" if col in ("parameters", "eigenvalues") else "right")
    notes = []
    for g, e in result["groups"].items():
        ev_ = e["eigenvalues"]
        tr = e.get("trace", {})
        mark = "" if all(ev_["converged"]) else " *"
        table.add_row(
            g,
            str(e["size"]),
            ", ".join(f"{v:.4g}" for v in ev_["values"]) + mark,
            str(ev_["n_hvp"]),
            (f"{tr['estimate']:.4g}" + ("" if tr["converged"] else " *")) if tr else "",
            f"{tr['stderr']:.2g}" if tr else "",
            str(tr["n_hvp"]) if tr else "",
        )
        if mark:
            notes.append(
                f"{g}: {sum(not c for c in ev_['converged'])} of {len(ev_['converged'])} eigenvalues did not "
                f"reach --tol {tol} in {ev_['iterations']} steps (raise --max-iter)"
            )
        if tr and not tr["converged"]:
            notes.append(
                f"{g}: the trace's standard error {tr['stderr']:.2g} did not reach --rtol {rtol} of it in "
                f"{tr['n_samples']} probes (raise --max-samples, loosen --rtol, or try --trace-method hutch++)"
            )
    console.print(table)
    for note in notes:
        console.print(f"* not converged: {note}", style="yellow")
    if outdir is not None:
        console.print(f"results in {outdir}")


def _parse_measures(text: str | None) -> list[str] | None:
    if not text or text == "all":
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        if m not in sh.MEASURES:
            raise UserError(f"unknown measure '{m}': use any of {', '.join(sh.MEASURES)}")
    return names


@app.command("sharpness")
def sharpness_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoints (.safetensors with sidecars)."),
    measures: str | None = typer.Option(
        None,
        "--measures",
        help="Comma list of measures (default all: lambda_max, "
        "trace, keskar, worst_*, adaptive_worst_*, avg_*, adaptive_avg_*, "
        "pacbayes_mag, filter_1d; docs/curvature.md defines each).",
    ),
    params: str = typer.Option("all", "--params", help="Perturbed parameters: all, weights, or a layer-name prefix."),
    bn: str = _BN,
    split_name: str = typer.Option("train", "--split", help="train or test."),
    n_train: int | None = typer.Option(None, "--n-train", help="Use only the first N samples."),
    batch_size: int = typer.Option(1024, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", help="Folder for sharpness.json."),
    seed: int = typer.Option(0, "--seed"),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Sharpness and flatness measures (Keskar, worst/average case, adaptive, PAC-Bayes, filter-normalised)."""
    names = _parse_measures(measures)
    common.seed_everything(seed)
    rows = []
    for ckpt in checkpoints:
        ev, _ = _setup(ckpt, bn, split_name, n_train, batch_size, device, model, model_args, data, data_root, data_args)
        values = sh.measure_all(ev, measures=names, params=params, seed=seed)
        rows.append({"checkpoint": str(ckpt), "bn": bn, "split": split_name, **values})
    if out is not None:
        io.write_json(common.out_dir(out) / "sharpness.json", {"rows": rows, "command": common.command_line()})
    if as_json:
        common.print_json(rows)
        return
    cols = names or list(sh.MEASURES)
    table = Table(title=f"sharpness (bn={bn}, {split_name})")
    table.add_column("measure")
    for r in rows:
        p = Path(r["checkpoint"])
        table.add_column(f"{p.parent.name}/{p.name}" if p.parent.name else p.name, justify="right")
    for c in [*(["loss"] if all("loss" in r for r in rows) else []), *cols]:  # lambda_max, trace: no base loss
        table.add_row(c, *(f"{r[c]:.4g}" for r in rows))
    console.print(table)


@app.command("correlate")
def correlate_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders of `modescape train --out` (final.safetensors inside)."),
    measures: str | None = typer.Option(None, "--measures", help="Comma list of measures (default all)."),
    gap: str = typer.Option("error", "--gap", help="Generalisation gap of: error or loss (test minus train)."),
    params: str = typer.Option("all", "--params"),
    bn: str = _BN,
    n_train: int | None = typer.Option(
        None, "--n-train", help="Measures on the first N training samples (the gap uses all data)."
    ),
    batch_size: int = typer.Option(1024, "--batch-size"),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for correlate.csv, .json and .png (default: print the table only)."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Every measure and the generalisation gap over runs; Kendall's tau of each measure with the gap."""
    check_policy(bn, "--bn")
    check_positive(n_train=n_train, batch_size=batch_size)
    names = _parse_measures(measures)
    common.seed_everything(seed)
    dev = common.resolve_device(device)
    from ..correlate import correlate as run_correlate

    res = run_correlate(
        runs,
        measures=names,
        gap=gap,
        bn=bn,
        params=params,
        n_train=n_train,
        batch_size=batch_size,
        device=dev,
        seed=seed,
    )
    report = res.to_dict()
    if out is not None:
        out = common.out_dir(out)
        io.write_text(out / "correlate.csv", res.to_csv())
        io.write_json(out / "correlate.json", {**report, "command": common.command_line()})
        plots.plot_correlation(res, out / "correlate.png")
        report["files"] = [str(out / f) for f in ("correlate.csv", "correlate.json", "correlate.png")]
    if as_json:
        common.print_json(report)
        return
    table = Table(title=f"Kendall tau with the {gap} gap over {len(res.rows)} runs (bn={bn})")
    table.add_column("measure")
    table.add_column("tau", justify="right")
    table.add_column("p", justify="right")
    for m in res.measures:
        t, p = res.tau[m]
        table.add_row(m, f"{t:+.3f}", f"{p:.3g}")
    console.print(table)
    if out is not None:
        console.print(f"table and plot in {out}")

"""`modescape spec | permute | align | swap`: permutation symmetry from the command line.

Thin wrappers over `modescape.symmetry`: print a checkpoint's inferred permutation spec, write a
randomly permuted (functionally identical) copy, align one checkpoint to another and measure the
straight line before and after, and walk the path that swaps two units of a layer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..checks import check_choice, check_policy, check_positive, input_file, output_file
from ..errors import UserError
from ..lazy import lazy
from .app import app, common, console

torch = lazy("torch")
io = lazy("modescape.io")
sp = lazy("modescape.space")
sy = lazy("modescape.symmetry")
plots = lazy("modescape.plots")

METHODS = ("weights", "activations", "ste")  # modescape.symmetry.align.METHODS (checked there too)


def _spec(net, split, spec_file: Path | None):
    if spec_file is not None:
        return sy.PermutationSpec.load(spec_file)
    return sy.infer_spec(net, input_shape=split.input_shape)


@app.command("spec")
def spec_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.safetensors with its sidecar)."),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    as_json: bool = common.JSON,
) -> None:
    """Print the permutation spec inferred from the model's torch.fx graph."""
    input_file(checkpoint, "checkpoint", "final.safetensors")
    net, _, split = common.load_checkpoint(checkpoint, model, model_args, data, data_root, data_args)
    spec = sy.infer_spec(net, input_shape=split.input_shape)
    if as_json:
        common.print_json(spec.to_dict())
    else:
        console.print(spec.summary(), highlight=False)
        console.print(f"{len(spec.sizes)} permutations, {sum(spec.sizes.values())} units", highlight=False)


@app.command("permute")
def permute_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to permute."),
    out: Path = typer.Option(..., "--out", help="Output checkpoint file (.safetensors)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random permutations."),
    spec_file: Path | None = typer.Option(None, "--spec", help="Hand-written spec (JSON) instead of inferring it."),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    as_json: bool = common.JSON,
) -> None:
    """Write a randomly permuted copy of a checkpoint that computes the same function."""
    checkpoint = input_file(checkpoint, "checkpoint", "final.safetensors")
    if spec_file is not None:
        input_file(spec_file, "--spec file")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file path, e.g. {out / 'permuted.safetensors'}")
    target = output_file(out if out.suffix == ".safetensors" else out.with_suffix(".safetensors"))
    reads = {checkpoint, checkpoint.with_suffix(".json")} | ({spec_file} if spec_file else set())
    if any(target.resolve() == r.resolve() or target.with_suffix(".json").resolve() == r.resolve() for r in reads):
        raise UserError(
            f"--out {out} would overwrite an input ({checkpoint} or its sidecar): write the permuted "
            f"copy to another file"
        )
    net, meta, split = common.load_checkpoint(checkpoint, model, model_args, data, data_root, data_args)
    spec = _spec(net, split, spec_file)
    perms = sy.random_perms(spec, seed)
    state = sy.apply(spec, net.state_dict(), perms)
    x = split.test[0][:256]
    net.eval()
    with torch.no_grad():
        before = net(x)
        net.load_state_dict(state)
        diff = float((net(x) - before).abs().max())
    path = io.save_checkpoint(
        out, net, {**meta, "permuted": {"from": str(checkpoint), "seed": seed}, "command": common.command_line()}
    )
    if as_json:
        common.print_json({"out": str(path), "max_abs_output_diff": diff, "permutations": len(perms)})
    else:
        console.print(
            f"wrote {path}: {len(perms)} permutations (seed {seed}); "
            f"max |output difference| on 256 test inputs = {diff:.2e}"
        )


@app.command("align")
def align_cmd(
    a: Path = typer.Argument(..., help="Reference checkpoint A."),
    b: Path = typer.Argument(..., help="Checkpoint B, to be permuted into A's basis."),
    out: Path = typer.Option(..., "--out", help="Folder: b_aligned.safetensors, align.json, interpolation.png."),
    method: str = typer.Option("weights", "--method", help="weights | activations | ste."),
    repair: bool = typer.Option(False, "--repair", help="Also measure the REPAIRed line (Jordan et al. 2022)."),
    points: int = typer.Option(25, "--points", help="Points on the line A -> B (>= 2)."),
    bn: str | None = typer.Option(
        None,
        "--bn",
        help="BN policy of the curves: recompute (BN reset; default "
        "for BN models) or running (interpolated running statistics).",
    ),
    steps: int = typer.Option(200, "--steps", help="STE optimisation steps."),
    spec_file: Path | None = typer.Option(None, "--spec", help="Hand-written spec (JSON)."),
    seed: int = typer.Option(0, "--seed", help="Order of the coordinate descent; STE minibatches."),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Align B to A; write aligned B, the barriers before/after and a plot."""
    check_choice(method, METHODS, "--method")
    if bn is not None:
        check_policy(bn, "--bn")
    if points < 2:
        raise UserError(f"--points must be at least 2 (the two ends); got {points}")
    check_positive(steps=steps)
    a, b = input_file(a, "checkpoint A", "final.safetensors"), input_file(b, "checkpoint B", "final.safetensors")
    if spec_file is not None:
        input_file(spec_file, "--spec file")
    dev = common.resolve_device(device)
    common.seed_everything(seed)
    net_a, _, split = common.load_checkpoint(a, model, model_args, data, data_root, data_args, dev)
    net_b, meta_b, _ = common.load_checkpoint(b, model, model_args, data, data_root, data_args, dev)
    sp.check_compatible(
        {k: tuple(v.shape) for k, v in net_a.state_dict().items()},
        {k: tuple(v.shape) for k, v in net_b.state_dict().items()},
        what=f"B ({b}) against A ({a}):",
    )
    spec = _spec(net_a, split, spec_file)
    sa, sb = sy.state_of(net_a), sy.state_of(net_b)
    kwargs = {"steps": steps} if method == "ste" else {}
    result = sy.align(
        net_a,
        sa,
        sb,
        {"train": split.train, "test": split.test},
        method=method,
        repair=repair,
        n_points=points,
        bn=bn,
        spec=spec,
        seed=seed,
        **kwargs,
    )
    out = common.out_dir(out)
    net_b.load_state_dict(result.b_aligned)
    path = io.save_checkpoint(
        out / "b_aligned.safetensors",
        net_b,
        {**meta_b, "aligned": {"to": str(a), "from": str(b), "method": method}, "command": common.command_line()},
    )
    summary = {
        **result.summary(),
        "a": str(a),
        "b": str(b),
        "b_aligned": str(path),
        "curves": {k: c.to_dict() for k, c in result.curves.items()},
        "command": common.command_line(),
    }
    io.write_json(out / "align.json", summary)
    plots.plot_alignment(
        result.curves, out / "interpolation.png", labels=(a, b), title=f"{plots.base.compared((a, b))} ({method})"
    )
    if as_json:
        common.print_json({k: v for k, v in summary.items() if k != "curves"})
        return
    for name, c in result.curves.items():
        bl = c.barriers()
        console.print(
            f"{name:>13}: test loss barrier {bl['test_loss']['barrier_linear']:.4f}, "
            f"test error barrier {bl['test_error']['barrier_linear']:.4f}, "
            f"train loss barrier {bl['train_loss']['barrier_linear']:.4f}  (bn={c.bn})",
            highlight=False,
        )
    console.print(f"wrote {path}, {out / 'align.json'}, {out / 'interpolation.png'}", highlight=False)


@app.command("swap")
def swap_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint."),
    layer: str = typer.Option(..., "--layer", help="Module (e.g. fc1) or permutation name whose units to swap."),
    i: int | None = typer.Option(None, "--i", help="First unit."),
    j: int | None = typer.Option(None, "--j", help="Second unit."),
    best: bool = typer.Option(False, "--best", help="Find the pair with the lowest barrier (see --candidates)."),
    candidates: int = typer.Option(10, "--candidates", help="With --best: pairs scored (closest first)."),
    points: int = typer.Option(25, "--points", help="Points along the path."),
    k: int = typer.Option(5, "--k", help="Smallest Hessian eigenvalues at the permutation point."),
    relax_steps: int = typer.Option(0, "--relax-steps", help="Descend with the two units tied first (0: off)."),
    n_eval: int = typer.Option(2000, "--n-eval", help="Training samples the loss and Hessian use."),
    out: Path | None = typer.Option(None, "--out", help="Folder for swap.json and swap.png."),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Loss along the path swapping units i and j of a layer; barrier and Hessian at its midpoint."""
    if best == (i is not None or j is not None) or (not best and (i is None or j is None)):
        raise UserError("give either --i I --j J, or --best")
    if points < 2:
        raise UserError(f"--points must be at least 2 (the two ends); got {points}")
    check_positive(candidates=candidates, n_eval=n_eval, k=k)
    input_file(checkpoint, "checkpoint", "final.safetensors")
    dev = common.resolve_device(device)
    net, _, split = common.load_checkpoint(checkpoint, model, model_args, data, data_root, data_args, dev)
    spec = sy.infer_spec(net, input_shape=split.input_shape)
    state = sy.state_of(net)
    train = (split.train[0][:n_eval], split.train[1][:n_eval])
    found = None
    if best:
        found = sy.best_pair(net, state, layer, train, candidates=candidates, spec=spec)
        i, j = found["i"], found["j"]
    res = sy.swap_analysis(net, state, layer, i, j, train, n_points=points, k=k, spec=spec, relax_steps=relax_steps)
    if found is not None:
        res["search"] = found
    if out is not None:
        out = common.out_dir(out)
        io.write_json(out / "swap.json", {**res, "checkpoint": str(checkpoint), "command": common.command_line()})
        plots.plot_swap(res, out / "swap.png", label=checkpoint)
    if as_json:
        common.print_json(res)
        return
    console.print(
        f"swap units {i} and {j} of {res['perm']}: loss barrier {res['barrier']['barrier_linear']:.4g} "
        f"(peak {max(res['loss']):.4g}, ends {res['loss'][0]:.4g} / {res['loss'][-1]:.4g}; bn={res['bn']})",
        highlight=False,
    )
    if "eigenvalues" in res:
        console.print(
            "smallest Hessian eigenvalues at the permutation point: "
            + ", ".join(f"{v:.3g}" for v in res["eigenvalues"]),
            highlight=False,
        )

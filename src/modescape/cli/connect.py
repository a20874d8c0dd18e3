"""`modescape connect`, `modescape path` and `modescape fge`: mode connectivity from the command line.

    modescape connect A.safetensors B.safetensors --curve bezier --bends 3 --epochs 20 --out DIR
    modescape path A.safetensors B.safetensors          # the straight segment only
    modescape path DIR                                  # a trained curve (DIR/curve.safetensors)
    modescape fge A.safetensors --cycle 4 --lr 0.05:0.0001 --epochs 20 --out DIR

Thin shells over `modescape.connect`, `modescape.paths` and `modescape.ensembles`: the checkpoints'
sidecars supply the model and the data.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import typer
from rich.table import Table

from ..checks import check_choice, check_policy, check_positive, input_file
from ..errors import UserError
from ..lazy import lazy
from .app import app, common, console

distributed = lazy("modescape.distributed")
io = lazy("modescape.io")
provenance = lazy("modescape.provenance")
sp = lazy("modescape.space")
connect = lazy("modescape.connect")
ensembles = lazy("modescape.ensembles")
paths_ = lazy("modescape.paths")
plots = lazy("modescape.plots")
train = lazy("modescape.train")
evaluate = lazy("modescape.evaluate")

SUMMARY_ROWS = ("train_loss", "train_error", "test_loss", "test_error")


def _evaluator(model, split, bn: str, batch_size: int, device, precision: str = "fp32"):
    return evaluate.Evaluator(
        model,
        {"train": split.train, "test": split.test},
        metrics=("loss", "error"),
        bn=bn,
        device=device,
        batch_size=batch_size,
        precision=precision,
    )


def _check_path(ev, path, points: int, check: int, seed: int) -> dict:
    """The precision, and with ``--check-precision N`` its difference to fp32 on N of the path's points."""
    if not check:
        return {"precision": ev.precision}
    import torch

    family, _ = paths_.as_path(path, ev.space)
    ts = torch.linspace(0.0, 1.0, points, dtype=torch.float64)  # the t of `evaluate_path(path, ev, points)`
    return {"precision": ev.precision, "precision_check": common.precision_check(ev, family, ts, check, seed)}


def _print_summaries(results, title: str) -> None:
    table = Table(title=title)
    for col in ("path", "metric", "start", "end", "min", "max", "mean", "int", "barrier_linear", "barrier_mean"):
        table.add_column(col, justify="left" if col in ("path", "metric") else "right")
    for r in results:
        s = r.summary()
        for m in SUMMARY_ROWS:
            if m in s:
                table.add_row(
                    r.name,
                    m,
                    *(
                        f"{s[m][k]:.4f}"
                        for k in ("start", "end", "min", "max", "mean", "int", "barrier_linear", "barrier_mean")
                    ),
                )
    console.print(table)
    console.print("lengths: " + ", ".join(f"{r.name} {r.length:.3f}" for r in results))


def _write_paths(out: Path, results, plane=None, labels=None, extra: dict | None = None) -> dict:
    summary = {r.name: r.summary() for r in results}
    if distributed.context().is_main:
        io.write_json(out / "path.json", {"paths": [r.to_dict() for r in results], **(extra or {})})
        plots.plot_paths(results, out / "path.png", metrics=("train_loss", "test_loss", "test_error"), labels=labels)
        if plane is not None:
            plots.plot_plane(plane, out / "plane.png", labels=labels)
    return summary


@app.command("connect")
def connect_cmd(
    a: Path = typer.Argument(..., help="Checkpoint of the first endpoint (.safetensors with its sidecar)."),
    b: Path = typer.Argument(..., help="Checkpoint of the second endpoint (same architecture)."),
    out: Path = typer.Option(
        ..., "--out", help="Folder: curve.safetensors (resumable), path.json, path.png, plane.png."
    ),
    curve: str = typer.Option("bezier", "--curve", help="bezier or polychain."),
    bends: int = typer.Option(3, "--bends", help="Number of bends n >= 3 (n - 2 trainable)."),
    epochs: int = typer.Option(20, "--epochs"),
    lr: float = typer.Option(0.015, "--lr", help="Peak learning rate (full for 50% of epochs, to 1% by 90%)."),
    wd: float = typer.Option(5e-4, "--wd", help="L2 penalty 0.5 wd ||w(t)||^2 on the sampled point."),
    momentum: float = typer.Option(0.9, "--momentum"),
    batch_size: int = typer.Option(128, "--batch-size"),
    points: int = typer.Option(61, "--points", help="Points along t for the evaluation."),
    plane_points: int = typer.Option(21, "--plane-points", help="Grid size of the plane plot (3 bends; 0 skips it)."),
    bn: str = typer.Option("recompute", "--bn", help="BN policy of the evaluation: recompute, running or train."),
    eval_batch_size: int = typer.Option(1024, "--eval-batch-size"),
    precision: str = common.PRECISION,
    check_precision: int = common.CHECK_PRECISION,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    seed: int = typer.Option(0, "--seed", help="Fixes the data order and the sampled t."),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Train a curve between two minima, then evaluate it and the straight segment, and plot both."""
    # every argument and input is checked before anything is loaded or trained
    check_policy(bn, "--bn")
    check_choice(curve.lower(), ("bezier", "polychain"), "curve")
    check_positive(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size)
    common.check_precision_options(precision, check_precision)
    if points < 2:
        raise UserError(f"--points must be at least 2 (the two ends); got {points}")
    if bends < 3:
        raise UserError(f"--bends must be at least 3 (two endpoints and one inner bend); got {bends}")
    if not lr > 0:
        raise UserError(f"--lr must be positive; got {lr}")
    a, b = input_file(a, "checkpoint A", "final.safetensors"), input_file(b, "checkpoint B", "final.safetensors")
    if a.resolve() == b.resolve():
        raise UserError(f"A and B are the same file ({a}): a curve joins two different minima")
    dev = distributed.rank_device(common.resolve_device(device))
    distributed.init(dev)
    common.seed_everything(seed)
    model_a, meta, split = common.load_checkpoint(a, None, "", data, data_root, data_args, dev)
    model_b, _ = io.load_model(b, model=None, device=dev, data_shape=split.input_shape, num_classes=split.num_classes)
    io.load_state_into(copy.deepcopy(model_a), model_b.state_dict(), source=f"B ({b}) against A ({a}):")
    if all(pa.equal(pb) for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True)):
        raise UserError(f"{a} and {b} hold the same weights: a curve joins two different minima")
    out = common.out_dir(out)  # only once both endpoints load: a failed start leaves no empty folder
    run = connect.train_curve(
        model_a,
        model_a,
        model_b,
        split,
        kind=curve,
        bends=bends,
        epochs=epochs,
        lr=lr,
        wd=wd,
        momentum=momentum,
        batch_size=batch_size,
        seed=seed,
        checkpoint=out / "curve.safetensors",
        device=dev,
    )
    if distributed.context().is_main:
        io.write_json(
            out / "curve.json",
            {
                "a": str(a),
                "b": str(b),
                "model": meta.get("model"),
                "data": split.meta,
                "config": run.config,
                "history": run.history,
                "command": common.command_line(),
                **provenance.environment(dev),
            },
        )
    ev = _evaluator(model_a, split, bn, eval_batch_size, dev, precision)
    prec = _check_path(ev, run.family, points, check_precision, seed)
    results = [paths_.evaluate_path(run.family, ev, points), paths_.evaluate_path((model_a, model_b), ev, points)]
    plane = None
    if run.family.n_bends == 3 and plane_points > 1:
        evp = evaluate.Evaluator(
            model_a,
            {"test": split.test},
            metrics=("error",),
            bn=bn,
            bn_data=split.train,
            device=dev,
            batch_size=eval_batch_size,
            precision=precision,
        )
        plane = connect.evaluate_plane(run.family, evp, n_points=plane_points)
    summary = _write_paths(out, results, plane, labels=(a, b), extra=prec)
    if as_json:
        common.print_json({"out": str(out), "curve": str(out / "curve.safetensors"), "summary": summary, **prec})
    else:
        _print_summaries(results, f"{curve} curve ({run.family.n_bends} bends) vs segment, bn={bn}")
        console.print(f"curve, path.json and plots in {out}")


@app.command("path")
def path_cmd(
    paths: list[Path] = typer.Argument(..., help="A B (two checkpoints: the segment) or CURVE_DIR (a trained curve)."),
    points: int = typer.Option(61, "--points", help="Points along t."),
    bn: str = typer.Option("recompute", "--bn", help="BN policy: recompute, running or train."),
    eval_batch_size: int = typer.Option(1024, "--eval-batch-size"),
    precision: str = common.PRECISION,
    check_precision: int = common.CHECK_PRECISION,
    seed: int = typer.Option(0, "--seed", help="Seeds the points --check-precision draws."),
    out: Path | None = typer.Option(None, "--out", help="Folder for path.json and path.png."),
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Evaluate a path: the straight segment between two checkpoints, or a curve trained by `connect`."""
    check_policy(bn, "--bn")
    check_positive(eval_batch_size=eval_batch_size)
    common.check_precision_options(precision, check_precision)
    if points < 2:
        raise UserError(f"--points must be at least 2 (the two ends); got {points}")
    if len(paths) == 2:
        for p in paths:
            input_file(p, "checkpoint", "final.safetensors")
    dev = common.resolve_device(device)
    if len(paths) == 2:
        model_a, _, split = common.load_checkpoint(paths[0], None, "", data, data_root, data_args, dev)
        model_b, _ = io.load_model(paths[1], device=dev, data_shape=split.input_shape, num_classes=split.num_classes)
        ev = _evaluator(model_a, split, bn, eval_batch_size, dev, precision)
        prec = _check_path(ev, (model_a, model_b), points, check_precision, seed)
        results = [paths_.evaluate_path((model_a, model_b), ev, points)]
        labels = tuple(paths)
    elif len(paths) == 1:
        folder = paths[0]
        side = folder / "curve.json"
        if not folder.is_dir() or not side.exists():
            raise UserError(
                f"{folder} is not a curve folder written by `modescape connect` (no curve.json): "
                f"pass a curve folder, or two checkpoints A B for the segment"
            )
        input_file(side, "curve.json")  # a regular file: a FIFO would hang the reader
        try:
            info = json.loads(side.read_text())
            info = {"a": str(info["a"]), "b": str(info["b"])}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(
                f"{side} is not a readable curve.json ({type(e).__name__}): restore it, or rerun "
                f"`modescape connect` with this --out"
            ) from None
        model_a, _, split = common.load_checkpoint(info["a"], None, "", data, data_root, data_args, dev)
        family, _ = connect.load_curve(folder / "curve.safetensors")
        space = sp.WeightSpace(model_a)
        space.check(family.bend(0), what=f"curve in {folder}")
        if not family.carries_buffers and space.buffer_names:  # a curve saved before curves kept their buffers
            model_b, _ = io.load_model(
                info["b"], device=dev, data_shape=split.input_shape, num_classes=split.num_classes
            )
            family.set_buffers([space.buffers(model_a), space.buffers(model_b)])
        ev = _evaluator(model_a, split, bn, eval_batch_size, dev, precision)
        family = family.to(dev)
        prec = _check_path(ev, family, points, check_precision, seed)
        results = [paths_.evaluate_path(family, ev, points)]
        labels = (Path(info["a"]), Path(info["b"]))
    else:
        raise UserError(f"path takes two checkpoints (A B) or one curve folder; got {len(paths)} arguments")
    summary = {r.name: r.summary() for r in results}
    if out is not None:
        summary = _write_paths(common.out_dir(out), results, labels=labels, extra=prec)
    if as_json:
        common.print_json({"summary": summary, **prec})
    else:
        _print_summaries(results, f"path evaluation, bn={bn}")


def _parse_lr(text: str) -> tuple[float, float]:
    try:
        a1, a2 = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--lr '{text}' must look like A1:A2 (e.g. 0.05:0.0001)") from None
    if not (a1 > 0 and a2 > 0):
        raise UserError(f"--lr values must be positive, got {text}")
    return a1, a2


@app.command("fge")
def fge_cmd(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint to start from."),
    out: Path | None = typer.Option(None, "--out", help="Folder: snapshot-NN.safetensors and fge.json."),
    cycle: int = typer.Option(4, "--cycle", help="Cycle length in epochs (even)."),
    lr: str = typer.Option("0.05:0.0001", "--lr", help="A1:A2, the cycle's largest and smallest learning rates."),
    epochs: int = typer.Option(20, "--epochs"),
    wd: float = typer.Option(1e-4, "--wd"),
    momentum: float = typer.Option(0.9, "--momentum"),
    restore_momentum: bool = typer.Option(
        True,
        "--restore-momentum/--zero-momentum",
        help="Start from the training run's SGD momentum when its optimiser "
        "state for this checkpoint's epoch lies beside it (as the reference "
        "does); else momentum starts at zero.",
    ),
    batch_size: int = typer.Option(128, "--batch-size"),
    bn: str = typer.Option("recompute", "--bn", help="BN policy for the snapshots: recompute, running or train."),
    precision: str = common.PRECISION,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    seed: int = typer.Option(0, "--seed"),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Fast geometric ensembling: cyclical learning rate, a snapshot at each minimum, averaged softmax."""
    a1, a2 = _parse_lr(lr)
    check_policy(bn, "--bn")
    check_positive(epochs=epochs, batch_size=batch_size)
    if cycle < 2 or cycle % 2:
        raise UserError(f"--cycle must be an even number of epochs >= 2; got {cycle}")
    input_file(checkpoint, "checkpoint", "final.safetensors")
    dev = distributed.rank_device(common.resolve_device(device))
    distributed.init(dev)
    common.seed_everything(seed)
    model, meta, split = common.load_checkpoint(checkpoint, None, "", data, data_root, data_args, dev)
    buffers, why = train.momentum_of(checkpoint, model) if restore_momentum else (None, "--zero-momentum")
    res = ensembles.fge(
        model,
        model,
        split,
        cycle=cycle,
        lr=(a1, a2),
        epochs=epochs,
        wd=wd,
        momentum=momentum,
        batch_size=batch_size,
        seed=seed,
        bn=bn,
        device=dev,
        momentum_buffers=buffers,
        start_epochs=ensembles.budget_epochs(meta),
        precision=precision,
    )
    report = {**res.to_dict(), "momentum": why if buffers is not None else f"zero ({why})"}
    if out is not None and distributed.context().is_main:
        out = common.out_dir(out)
        for i, (snap, own) in enumerate(
            zip(res.snapshots, res.buffers, strict=True), 1
        ):  # each with its own statistics
            net = sp.module_at(model, snap, own)
            io.save_checkpoint(
                out / f"snapshot-{i:02d}.safetensors",
                net,
                {**{k: meta[k] for k in ("model", "data") if k in meta}, "fge": {"member": i, **res.members[i - 1]}},
            )
        io.write_json(
            out / "fge.json",
            {
                **report,
                "checkpoint": str(checkpoint),
                "cycle": cycle,
                "lr": [a1, a2],
                "epochs": epochs,
                "command": common.command_line(),
            },
        )
        plots.plot_fge(res, out / "fge.png", label=checkpoint)
    if as_json:
        common.print_json(report)
        return
    table = Table(title=f"FGE from {checkpoint}: cycle {cycle}, lr {a1}:{a2}, bn={bn}")
    for col in ("members", "epoch", "snapshot acc", "snapshot nll", "ensemble acc", "ensemble nll"):
        table.add_column(col, justify="right")
    table.add_row("start", "0", f"{res.start['accuracy']:.4f}", f"{res.start['nll']:.4f}", "", "")
    for m in res.members:
        table.add_row(
            str(m["members"]),
            str(m["epoch"]),
            f"{m['single_accuracy']:.4f}",
            f"{m['single_nll']:.4f}",
            f"{m['accuracy']:.4f}",
            f"{m['nll']:.4f}",
        )
    console.print(table)
    console.print(f"momentum: {report['momentum']}")

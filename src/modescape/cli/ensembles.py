"""`modescape swa`, `modescape swag` and `modescape ensemble`: weight averages and ensembles at a known budget.

    modescape swa A.safetensors --epochs 10 --lr 0.01 --start 0 --out DIR      # DIR/swa.safetensors
    modescape swag A.safetensors --epochs 10 --lr 0.01 --samples 30 --out DIR  # SWA, then SWAG's BMA
    modescape swag DIR --samples 30                  # sample a run trained with `train --swa-start`
    modescape ensemble runs/a/final.safetensors runs/b/final.safetensors --json

Thin shells over `modescape.swa` and `modescape.ensembles`: the checkpoints' sidecars supply the model and
the data; every result records its training budget in epochs. Rerun with the same ``--out`` and the same
settings to continue (the SWA run resumes after its last epoch; samples and members already evaluated are
read back).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..checks import check_policy, check_positive, input_file
from ..errors import UserError
from ..lazy import lazy
from .app import app, common, console

io = lazy("modescape.io")
provenance = lazy("modescape.provenance")
ensembles = lazy("modescape.ensembles")
swa_ = lazy("modescape.swa")
plots = lazy("modescape.plots")
train_ = lazy("modescape.train")

ROWS = ("accuracy", "nll", "brier", "ece")

# the options swa and swag share (one definition, one help text)
EPOCHS = typer.Option(10, "--epochs", help="Epochs of SGD from the checkpoint (the SWA run's length).")
LR = typer.Option(0.01, "--lr", help="The SWA learning rate, constant over the run.")
START = typer.Option(
    0,
    "--start",
    help="Epochs of SGD before averaging begins: the weights at the end of each of the "
    "last (epochs - start) epochs are averaged.",
)
WD = typer.Option(5e-4, "--wd", help="Weight decay (L2) of the SGD run.")
MOMENTUM = typer.Option(0.9, "--momentum", help="SGD momentum.")
RESTORE = typer.Option(
    True,
    "--restore-momentum/--zero-momentum",
    help="Start from the training run's SGD momentum when its optimiser state for this checkpoint's "
    "epoch lies beside it; else momentum starts at zero.",
)
BATCH = typer.Option(128, "--batch-size", help="Minibatch size of the SGD run.")
RANK = typer.Option(20, "--rank", help="SWAG: deviation columns kept (the last K iterates; 0: diagonal only).")
SEED = typer.Option(0, "--seed", help="Fixes the data order (and SWAG's samples).")


def _check_swa(epochs: int, lr: float, start: int, rank: int) -> None:
    check_positive(epochs=epochs)
    if not lr > 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if not 0 <= start < epochs:
        raise UserError(f"--start must be at least 0 and below --epochs ({epochs}), got {start}")
    if rank < 0:
        raise UserError(f"--rank must be >= 0, got {rank}")


def _run_swa(
    checkpoint: Path,
    out: Path,
    epochs,
    lr,
    start,
    wd,
    momentum,
    restore_momentum,
    batch_size,
    rank,
    data,
    data_root,
    data_args,
    seed,
    dev,
    precision: str = "fp32",
):
    """Load the checkpoint and run (or resume) SWA into ``out``; returns (result, model, meta, split, report)."""
    common.seed_everything(seed)
    model, meta, split = common.load_checkpoint(checkpoint, None, "", data, data_root, data_args, dev)
    buffers, why = train_.momentum_of(checkpoint, model) if restore_momentum else (None, "--zero-momentum")
    out = common.out_dir(out)
    res = swa_.swa(
        model,
        checkpoint,
        split,
        epochs=epochs,
        lr=lr,
        start=start,
        wd=wd,
        momentum=momentum,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        out=out,
        device=dev,
        momentum_buffers=buffers,
        precision=precision,
    )
    report = {
        **res.to_dict(),
        "checkpoint": str(checkpoint),
        "swa_checkpoint": str(out / "swa.safetensors"),
        "momentum": why if buffers is not None else f"zero ({why})",
        "settings": {
            "epochs": epochs,
            "lr": lr,
            "start": start,
            "wd": wd,
            "momentum": momentum,
            "batch_size": batch_size,
            "rank": rank,
            "seed": seed,
        },
        "command": common.command_line(),
        **provenance.environment(dev),
    }
    io.write_json(out / "swa-result.json", report)
    plots.plot_swa(res.history, out / "swa.png", title=f"SWA from {checkpoint.name}: lr {lr}, start {start}")
    return res, model, meta, split, report


def _table(title: str, rows: dict) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model")
    for col in ("test acc", "test nll", "brier", "ece", "budget (epochs)"):
        table.add_column(col, justify="right")
    for name, (m, epochs) in rows.items():
        table.add_row(name, *(f"{m[k]:.4f}" for k in ROWS), "?" if epochs is None else str(epochs))
    console.print(table)


@app.command("swa")
def swa_cmd(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint to start from (.safetensors with its sidecar)."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Run folder: checkpoints/, swa.safetensors (the averaged model), "
        "swag.safetensors, swa-result.json, swa.png; rerun to resume.",
    ),
    epochs: int = EPOCHS,
    lr: float = LR,
    start: int = START,
    wd: float = WD,
    momentum: float = MOMENTUM,
    restore_momentum: bool = RESTORE,
    batch_size: int = BATCH,
    rank: int = RANK,
    precision: str = common.PRECISION,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    seed: int = SEED,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Stochastic weight averaging from a checkpoint: SGD at a constant LR, the weights averaged once per
    epoch, BatchNorm statistics recomputed for the average."""
    _check_swa(epochs, lr, start, rank)
    check_positive(batch_size=batch_size)
    input_file(checkpoint, folder_hint="final.safetensors")
    dev = common.resolve_device(device)
    res, *_, report = _run_swa(
        checkpoint,
        out,
        epochs,
        lr,
        start,
        wd,
        momentum,
        restore_momentum,
        batch_size,
        rank,
        data,
        data_root,
        data_args,
        seed,
        dev,
        precision,
    )
    if as_json:
        common.print_json(report)
        return
    b = res.budget
    _table(
        f"SWA from {checkpoint}: {res.n_averaged} iterates averaged, bn={res.bn}",
        {
            "start": (res.start, b["start_epochs"]),
            "last SGD iterate": (res.last, b["epochs"]),
            "SWA": (res.metrics, b["epochs"]),
        },
    )
    console.print(f"averaged model {out / 'swa.safetensors'}; SWAG state {out / 'swag.safetensors'}")


@app.command("swag")
def swag_cmd(
    source: Path = typer.Argument(
        ...,
        help="A checkpoint (SWA runs from it first, into --out) or a run folder holding "
        "swag.safetensors (from `swa` or `train --swa-start`).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder: the SWA run (for a checkpoint), swag-samples/ "
        "(each sample's probabilities), swag-result.json, swag.png, "
        "reliability.png. Default for a run folder: that folder.",
    ),
    samples: int = typer.Option(30, "--samples", help="Number of SWAG samples in the Bayesian model average."),
    scale: float = typer.Option(
        0.5,
        "--scale",
        help="Covariance scale: samples from N(mean, scale (diag + D D^T / (K - 1))); 0.5 is the paper's.",
    ),
    cov: bool = typer.Option(True, "--cov/--diag", help="Diagonal plus low-rank covariance, or the diagonal only."),
    bn: str | None = typer.Option(
        None,
        "--bn",
        help="BN policy of each sample: recompute (the default for models with BatchNorm), running or train.",
    ),
    epochs: int = EPOCHS,
    lr: float = LR,
    start: int = START,
    wd: float = WD,
    momentum: float = MOMENTUM,
    restore_momentum: bool = RESTORE,
    batch_size: int = BATCH,
    rank: int = RANK,
    precision: str = common.PRECISION,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    seed: int = SEED,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """SWA-Gaussian: a Gaussian over weights from the SWA iterates; Bayesian model averaging over samples,
    each with BatchNorm statistics recomputed."""
    check_positive(samples=samples)
    if not scale >= 0:
        raise UserError(f"--scale must be non-negative, got {scale}")
    if bn is not None:
        check_policy(bn, "--bn")
    if source.is_dir():
        if not (source / "swag.safetensors").exists():
            raise UserError(
                f"{source} holds no swag.safetensors: pass a run folder of `modescape swa` or of "
                f"`modescape train --swa-start`, or a checkpoint to run SWA from (with --out)"
            )
        input_file(source / "swa.safetensors", what="SWA checkpoint")
    else:
        input_file(source, folder_hint="final.safetensors")
        _check_swa(epochs, lr, start, rank)
        check_positive(batch_size=batch_size)
        if out is None:
            raise UserError("--out is needed to run SWA from a checkpoint (the run folder)")
    dev = common.resolve_device(device)
    if source.is_dir():
        folder = source
        common.seed_everything(seed)
        model, _, split = common.load_checkpoint(folder / "swa.safetensors", None, "", data, data_root, data_args, dev)
        swag, smeta = swa_.SWAG.load(folder / "swag.safetensors", model)
        budget = {
            "epochs": smeta.get("epochs"),
            "start_epochs": (smeta.get("start") or {}).get("epochs"),
            "swa_epochs": smeta.get("run_epochs"),
        }
        out = common.out_dir(out or folder)
    else:
        assert out is not None  # refused above without --out
        res, model, _, split, _ = _run_swa(
            source,
            out,
            epochs,
            lr,
            start,
            wd,
            momentum,
            restore_momentum,
            batch_size,
            rank,
            data,
            data_root,
            data_args,
            seed,
            dev,
            precision,
        )
        swag, budget = res.swag, res.budget
        out = Path(out)
    if cov and swag.deviations.shape[0] < 2:
        raise UserError(
            f"the SWAG state has {swag.deviations.shape[0]} deviation column(s); the low-rank part "
            f"needs 2: pass --diag, or collect more epochs with --rank >= 2"
        )
    bma = swa_.swag_ensemble(
        model,
        swag,
        split,
        n_samples=samples,
        scale=scale,
        cov=cov,
        seed=seed,
        bn=bn,
        device=dev,
        cache=out / "swag-samples",
        budget_info=budget,
        precision=precision,
    )
    report = {**bma.to_dict(), "source": str(source), "command": common.command_line(), **provenance.environment(dev)}
    io.write_json(out / "swag-result.json", report)
    plots.plot_ensemble(
        {f"SWAG ({'low-rank + diag' if cov else 'diag'})": bma},
        out / "swag.png",
        references={"SWA": bma.info["swa"]},
        title=f"SWAG: Bayesian model average, scale {scale}",
    )
    plots.plot_reliability(
        {"SWA": (bma.baselines["swa"], bma.targets), "SWAG BMA": (sum(bma.probs) / len(bma.probs), bma.targets)},
        out / "reliability.png",
    )
    if as_json:
        common.print_json(report)
        return
    _table(
        f"SWAG from {source}: {samples} samples, scale {scale}, {'low-rank + diag' if cov else 'diag'}, bn={bma.bn}",
        {"SWA": (bma.info["swa"], budget["epochs"]), "SWAG BMA": (bma.metrics, budget["epochs"])},
    )
    console.print(f"disagreement between samples {bma.metrics['disagreement']:.4f}; results in {out}")


@app.command("ensemble")
def ensemble_cmd(
    checkpoints: list[Path] = typer.Argument(
        ...,
        help="Checkpoints of independently trained models (same "
        "architecture); the first one's sidecar gives model and data.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder: members/ (each member's probabilities, so a rerun "
        "continues), ensemble.json, ensemble.png, reliability.png.",
    ),
    bn: str = typer.Option(
        "running", "--bn", help="BN policy of each member: running (its own statistics), recompute or train."
    ),
    batch_size: int = typer.Option(1024, "--batch-size", help="Evaluation batch size."),
    precision: str = common.PRECISION,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    seed: int = SEED,
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """A deep ensemble of checkpoints: accuracy, NLL, Brier, ECE and disagreement of the averaged softmax, and
    its training budget (the sum of the members' epochs)."""
    check_policy(bn, "--bn")
    check_positive(batch_size=batch_size)
    for path in checkpoints:
        input_file(path, folder_hint="final.safetensors")
    dev = common.resolve_device(device)
    common.seed_everything(seed)
    model, _, split = common.load_checkpoint(checkpoints[0], None, "", data, data_root, data_args, dev)
    folder = common.out_dir(out) if out is not None else None
    res = ensembles.deep_ensemble(
        model,
        checkpoints,
        split,
        bn=bn,
        device=dev,
        batch_size=batch_size,
        cache=folder / "members" if folder is not None else None,
        precision=precision,
    )
    report = {
        **res.to_dict(),
        "checkpoints": [str(p) for p in checkpoints],
        "command": common.command_line(),
        **provenance.environment(dev),
    }
    if folder is not None:
        io.write_json(folder / "ensemble.json", report)
        plots.plot_ensemble(
            {"deep ensemble": res},
            folder / "ensemble.png",
            references={"best member": max(res.members, key=lambda m: m["accuracy"])},
        )
        plots.plot_reliability(
            {"ensemble": (sum(res.probs) / len(res.probs), res.targets), "member 1": (res.probs[0], res.targets)},
            folder / "reliability.png",
        )
    if as_json:
        common.print_json(report)
        return
    rows = {m["label"]: (m, e) for m, e in zip(res.members, res.budget["members"], strict=True)}
    rows["ensemble"] = (res.metrics, res.budget["epochs"])
    _table(f"deep ensemble of {len(checkpoints)} checkpoints, bn={bn}", rows)
    console.print(f"disagreement {res.metrics['disagreement']:.4f}")

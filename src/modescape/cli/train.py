"""`modescape train` and `modescape eval`: produce minima and measure them.

modescape train --out runs/a --data mnist --data-root DATA --epochs 20
modescape train --out runs/sam --optimizer sam --rho 0.05 [--adaptive --eta 0.01]   # SAM / ASAM
modescape train --out runs/swa --epochs 20 --swa-start 10 --swa-lr 0.02   # + swa.safetensors, swag.safetensors
modescape eval runs/a/final.safetensors runs/swa/swa.safetensors --json
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..checks import check_policy, input_file
from ..lazy import lazy
from .app import app, common, console

io = lazy("modescape.io")
sp = lazy("modescape.space")
evaluate = lazy("modescape.evaluate")
train_ = lazy("modescape.train")
zoo = lazy("modescape.zoo")


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/epoch-NNN.safetensors, final.safetensors."),
    model: str = typer.Option("mlp", "--model", help="Zoo model (mlp, cnn, resnet, vgg) or package.module:factory."),
    model_args: str = common.MODEL_ARGS,
    data: str = typer.Option(
        "digits",
        "--data",
        help="Zoo dataset (digits, mnist, cifar10, spirals, blobs, random-cifar) or package.module:factory.",
    ),
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    epochs: int = typer.Option(20, "--epochs", help="Number of epochs."),
    batch_size: int = typer.Option(64, "--batch-size", help="Minibatch size."),
    lr: float = typer.Option(0.05, "--lr", help="Peak learning rate."),
    wd: float = typer.Option(5e-4, "--wd", help="Weight decay (L2)."),
    optimizer: str = typer.Option(
        "sgd",
        "--optimizer",
        help="sgd (with --momentum), adam, adamw, or sam (SAM around SGD with --momentum; --rho, --adaptive).",
    ),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum (sgd, and sam's base SGD)."),
    schedule: str = typer.Option("cosine", "--schedule", help="constant, step or cosine."),
    rho: float = typer.Option(0.05, "--rho", help="SAM: radius of the ascent step (ASAM: typically 10x SAM's)."),
    adaptive: bool = typer.Option(
        False,
        "--adaptive",
        help="ASAM: the ascent step scaled by |w| + eta per weight (biases by 1), with --optimizer sam.",
    ),
    eta: float = typer.Option(0.01, "--eta", help="ASAM: the offset eta in |w| + eta."),
    swa_start: int | None = typer.Option(
        None,
        "--swa-start",
        help="SWA: epochs on the schedule before averaging; "
        "then the weights at the end of every epoch "
        "are averaged (swa.safetensors, swag.safetensors).",
    ),
    swa_lr: float | None = typer.Option(
        None,
        "--swa-lr",
        help="SWA: the learning rate of the averaging epochs (default: the schedule's at --swa-start).",
    ),
    swa_anneal_epochs: int = typer.Option(
        0, "--swa-anneal-epochs", help="SWA: SWALR's epochs from the schedule's learning rate to --swa-lr (0: at once)."
    ),
    swa_anneal: str = typer.Option("cos", "--swa-anneal", help="SWA: SWALR's annealing, cos or linear."),
    swag_rank: int = typer.Option(20, "--swag-rank", help="SWA: SWAG deviation columns kept (0: diagonal only)."),
    save_every: int = typer.Option(1, "--save-every", help="Write a checkpoint every this many epochs (and the last)."),
    seed: int = typer.Option(0, "--seed", help="Fixes the initialisation and the data order."),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Train a model; one checkpoint per epoch; rerun with the same --out to resume. SGD, Adam, SAM/ASAM;
    optionally stochastic weight averaging (SWA and SWAG) over the last epochs."""
    config = train_.TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        wd=wd,
        optimizer=optimizer,
        momentum=momentum,
        schedule=schedule,
        seed=seed,
        save_every=save_every,
        rho=rho,
        adaptive=adaptive,
        eta=eta,
        swa_start=swa_start,
        swa_lr=swa_lr,
        swa_anneal_epochs=swa_anneal_epochs,
        swa_anneal=swa_anneal,
        swag_rank=swag_rank,
    )
    config.check()
    dev = common.resolve_device(device)
    split = common.load_data(data, data_root, io.parse_args(data_args))
    common.seed_everything(seed)
    args = io.parse_args(model_args)
    if ":" in model:
        net = io.build_from_spec(
            {"name": model, "args": args, "input_shape": list(split.input_shape), "num_classes": split.num_classes}
        )
    else:
        net = zoo.build_model(model, split.input_shape, split.num_classes, **args)
    out = common.out_dir(out)
    history = train_.train(
        net, split, config, out=out, device=dev, meta={"data": split.meta, "command": common.command_line()}
    )
    final = history.last
    report = {"out": str(out), "final": str(out / "final.safetensors"), "metrics": final}
    if swa_start is not None:
        report.update(
            {
                "swa": str(out / "swa.safetensors"),
                "swag": str(out / "swag.safetensors"),
                "swa_metrics": {k[len("swa_") :]: v for k, v in final.items() if k.startswith("swa_")},
            }
        )
    if as_json:
        common.print_json(report)
    else:
        console.print(
            f"trained {model} on {split.name}: test accuracy {final.get('test_accuracy', float('nan')):.4f}, "
            f"test loss {final.get('test_loss', float('nan')):.4f}"
        )
        if swa_start is not None:
            console.print(
                f"SWA of {final.get('swa_n')} iterates: test accuracy "
                f"{final.get('swa_test_accuracy', float('nan')):.4f}, test loss "
                f"{final.get('swa_test_loss', float('nan')):.4f}; averaged model {out / 'swa.safetensors'}"
            )
        console.print(f"checkpoints in {out / 'checkpoints'}; final model {out / 'final.safetensors'}")


@app.command("eval")
def eval_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoint files (.safetensors, or .pt/.pth with --model)."),
    bn: str = typer.Option("running", "--bn", help="BatchNorm policy: running, recompute or train."),
    model: str | None = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: str | None = common.DATA,
    data_root: str | None = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    batch_size: int = typer.Option(1024, "--batch-size", help="Evaluation batch size (also the BN-recompute batch)."),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Train and test loss and accuracy of checkpoints."""
    from rich.table import Table

    check_policy(bn, "--bn")
    for path in checkpoints:  # every file present and regular (a FIFO would hang) before the first is loaded
        input_file(path, "checkpoint", "final.safetensors")
    dev = common.resolve_device(device)
    rows = []
    for path in checkpoints:
        net, meta, split = common.load_checkpoint(path, model, model_args, data, data_root, data_args, dev)
        ev = evaluate.Evaluator(
            net, {"train": split.train, "test": split.test}, bn=bn, device=dev, batch_size=batch_size
        )
        values = ev([sp.WeightSpace(net).point(net)]).to_dict()
        rows.append({"checkpoint": str(path), "bn": bn, "data": split.name, **values})
    if as_json:
        common.print_json(rows)
        return
    table = Table(title=f"evaluation (bn={bn})")
    for col in ("checkpoint", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right", overflow="fold")
    for r in rows:
        table.add_row(
            r["checkpoint"], *(f"{r[c]:.4f}" for c in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"))
        )
    console.print(table)

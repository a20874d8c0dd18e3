"""`modescape train` and `modescape eval`: produce minima and measure them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import io
from .. import space as sp
from ..evaluate import Evaluator, check_policy
from ..train import TrainConfig, train as run_training
from ..zoo import build_model
from .app import app, common, console


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/epoch-NNN.safetensors, final.safetensors."),
    model: str = typer.Option("mlp", "--model", help="Zoo model (mlp, cnn, resnet, vgg) or package.module:factory."),
    model_args: str = common.MODEL_ARGS,
    data: str = typer.Option("digits", "--data", help="Zoo dataset (digits, mnist, cifar10, spirals, blobs, random-cifar) or package.module:factory."),
    data_root: Optional[str] = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    epochs: int = typer.Option(20, "--epochs", help="Number of epochs."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(0.05, "--lr", help="Peak learning rate."),
    wd: float = typer.Option(5e-4, "--wd", help="Weight decay (L2)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (momentum 0.9) or adam."),
    momentum: float = typer.Option(0.9, "--momentum"),
    schedule: str = typer.Option("cosine", "--schedule", help="constant, step or cosine."),
    seed: int = typer.Option(0, "--seed", help="Fixes the initialisation and the data order."),
    device: Optional[str] = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Train a model; one checkpoint per epoch; rerun with the same --out to resume."""
    dev = common.resolve_device(device)
    split = common.load_data(data, data_root, io.parse_args(data_args))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, wd=wd, optimizer=optimizer,
                         momentum=momentum, schedule=schedule, seed=seed)
    config.check()
    common.seed_everything(seed)
    args = io.parse_args(model_args)
    if ":" in model:
        net = io.build_from_spec({"name": model, "args": args, "input_shape": list(split.input_shape),
                                  "num_classes": split.num_classes})
    else:
        net = build_model(model, split.input_shape, split.num_classes, **args)
    out = common.out_dir(out)
    history = run_training(net, split, config, out=out, device=dev,
                           meta={"data": split.meta, "command": common.command_line()})
    final = history.last
    if as_json:
        common.print_json({"out": str(out), "final": str(out / "final.safetensors"), "metrics": final})
    else:
        console.print(f"trained {model} on {split.name}: test accuracy {final.get('test_accuracy', float('nan')):.4f}, "
                      f"test loss {final.get('test_loss', float('nan')):.4f}")
        console.print(f"checkpoints in {out / 'checkpoints'}; final model {out / 'final.safetensors'}")


@app.command("eval")
def eval_cmd(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoint files (.safetensors, or .pt/.pth with --model)."),
    bn: str = typer.Option("running", "--bn", help="BatchNorm policy: running, recompute or train."),
    model: Optional[str] = common.MODEL,
    model_args: str = common.MODEL_ARGS,
    data: Optional[str] = common.DATA,
    data_root: Optional[str] = common.DATA_ROOT,
    data_args: str = common.DATA_ARGS,
    batch_size: int = typer.Option(1024, "--batch-size", help="Evaluation batch size (also the BN-recompute batch)."),
    device: Optional[str] = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Train and test loss and accuracy of checkpoints."""
    check_policy(bn, "--bn")
    dev = common.resolve_device(device)
    rows = []
    for path in checkpoints:
        net, meta, split = common.load_checkpoint(path, model, model_args, data, data_root, data_args, dev)
        ev = Evaluator(net, {"train": split.train, "test": split.test}, bn=bn, device=dev, batch_size=batch_size)
        values = ev([sp.WeightSpace(net).point(net)]).to_dict()
        rows.append({"checkpoint": str(path), "bn": bn, "data": split.name, **values})
    if as_json:
        common.print_json(rows)
        return
    table = Table(title=f"evaluation (bn={bn})")
    for col in ("checkpoint", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right", overflow="fold")
    for r in rows:
        table.add_row(r["checkpoint"], *(f"{r[c]:.4f}" for c in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")))
    console.print(table)

"""`modescape simplex`, `modescape subspace` and `modescape wedge`: low-loss volumes from the command line.

    modescape simplex A.safetensors --vertices 2 --epochs 10 --out DIR          # SPRO: a simplex around A
    modescape simplex A.safetensors B.safetensors --out DIR                     # a complex joining A and B
    modescape simplex A.safetensors B.safetensors C.safetensors --each --out DIR  # ESPRO ensemble
    modescape subspace RUN/checkpoints/epoch-000.safetensors --dims 10,100,1000 --out DIR
    modescape wedge A.safetensors B.safetensors C.safetensors --epochs 10 --out DIR

Thin shells over `modescape.simplex` and `modescape.subspace`: the checkpoints' sidecars supply the model and
the data. Every command resumes when rerun with the same ``--out`` and settings. This module imports only
typer at load time (``modescape --help`` must start at once); everything else is imported in the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import typer

from .app import app, console

if TYPE_CHECKING:
    from torch import device as Device

DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available).")
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout.")
DATA = typer.Option(None, "--data", help="Override the sidecar's dataset: a zoo name or package.module:factory.")
DATA_ROOT = typer.Option(None, "--data-root", help="Folder with the data files (mnist, cifar10).")
DATA_ARGS = typer.Option("", "--data-args", help="Dataset arguments, e.g. n_train=10000 (mnist, cifar10).")
BN = typer.Option(
    "auto",
    "--bn",
    help="BN policy of the evaluation: auto (recompute for BatchNorm models, else "
    "running), recompute, running or train.",
)


class _SproSettings(TypedDict):
    """The SPRO settings `simplex` passes to `train_simplex` (directly, or through `espro`)."""

    lr: float
    lam: float
    samples: int
    wd: float
    momentum: float
    batch_size: int


class _TrainSettings(TypedDict):
    """The training settings `subspace` passes to every `train_subspace` (through `intrinsic_dimension`, `radial`)."""

    epochs: int
    lr: float
    optimizer: str
    schedule: str
    wd: float
    batch_size: int
    seed: int
    device: Device


def _numbers(**values: float) -> None:
    """``lr`` must be a positive number, every other value a non-negative one (no NaN or infinity)."""
    import math

    from ..errors import UserError

    for name, v in values.items():
        ok = math.isfinite(v) and (v > 0 if name == "lr" else v >= 0)
        if not ok:
            kind = "a positive" if name == "lr" else "a non-negative"
            raise UserError(f"--{name.replace('_', '-')} must be {kind} number; got {v}")


def _check_bn(bn: str) -> str:
    from ..checks import check_policy

    return bn if bn == "auto" else check_policy(bn, "--bn")


def _ints(text: str, option: str) -> list[int]:
    from ..errors import UserError

    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} '{text}' must be integers separated by commas (e.g. 10,100,1000)") from None
    if not out or min(out) < 1:
        raise UserError(f"{option} '{text}' must list at least one integer, each at least 1")
    return out


def _floats(text: str, option: str) -> list[float]:
    from ..errors import UserError

    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} '{text}' must be numbers separated by commas (e.g. 0,5,10)") from None
    if not out or not all(v >= 0 and v != float("inf") for v in out):
        raise UserError(f"{option} '{text}' must list at least one finite number, each at least 0")
    return out


def _load_all(paths, data, data_root, data_args, dev):
    """The first checkpoint's model, sidecar and data, and every checkpoint as a model of that architecture."""
    import copy

    from .. import io
    from . import common

    model, meta, split = common.load_checkpoint(paths[0], None, "", data, data_root, data_args, dev)
    models, metas = [model], [meta]
    for p in paths[1:]:
        other, m = io.load_model(p, device=dev, data_shape=split.input_shape, num_classes=split.num_classes)
        io.load_state_into(copy.deepcopy(model), other.state_dict(), source=f"{p} against {paths[0]}:")
        models.append(other)
        metas.append(m)
    return models, metas, split


def _bn(model, bn: str) -> str:
    from ..evaluate import default_bn

    return default_bn(model) if bn == "auto" else bn


@app.command("simplex")
def simplex_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Trained modes (.safetensors with sidecars, one architecture)."),
    out: Path = typer.Option(..., "--out", help="Folder: simplex.safetensors (resumable), simplex.json, plane.png."),
    vertices: int = typer.Option(2, "--vertices", help="Vertices to add (one SPRO stage each)."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs per added vertex."),
    lr: float = typer.Option(0.01, "--lr", help="Peak learning rate (cosine over each stage)."),
    lam: float = typer.Option(1e-3, "--lam", help="Volume weight lambda in mean loss - lambda log(volume)."),
    samples: int = typer.Option(5, "--samples", help="Simplex points per minibatch (their loss is averaged)."),
    wd: float = typer.Option(5e-4, "--wd", help="Weight decay of the trainable vertex."),
    momentum: float = typer.Option(0.9, "--momentum"),
    batch_size: int = typer.Option(128, "--batch-size"),
    each: bool = typer.Option(
        False,
        "--each",
        help="ESPRO: grow one simplex around each checkpoint and ensemble "
        "them (default with several checkpoints: one complex joining "
        "them through shared vertices).",
    ),
    members: int = typer.Option(8, "--members", help="Points drawn from each simplex for the ensemble."),
    eval_samples: int = typer.Option(16, "--eval-samples", help="Points drawn uniformly for the evaluation."),
    plane_points: int = typer.Option(
        21, "--plane-points", help="Grid of the plane plot of a 3-vertex simplex (0 skips it)."
    ),
    bn: str = BN,
    data: str | None = DATA,
    data_root: str | None = DATA_ROOT,
    data_args: str = DATA_ARGS,
    seed: int = typer.Option(0, "--seed", help="Fixes the data order and the simplex samples."),
    device: str | None = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Grow a low-loss simplex (SPRO) around a mode, a complex joining several, or ESPRO ensembles."""
    from ..checks import check_positive, input_file
    from ..errors import UserError

    check_positive(
        vertices=vertices,
        epochs=epochs,
        samples=samples,
        batch_size=batch_size,
        members=members,
        eval_samples=eval_samples,
    )
    _numbers(lr=lr, lam=lam, wd=wd, momentum=momentum)
    bn = _check_bn(bn)
    paths = [input_file(p, "checkpoint", "final.safetensors") for p in checkpoints]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserError("the same checkpoint is given twice: pass distinct modes")

    import torch

    from .. import io, provenance
    from ..evaluate import Evaluator
    from ..landscape import auto_range, sweep
    from ..plots import plot_simplex_plane
    from ..simplex import espro, evaluate_simplex, train_simplex
    from . import common

    dev = common.resolve_device(device)
    common.seed_everything(seed)
    models, metas, split = _load_all(paths, data, data_root, data_args, dev)
    out = common.out_dir(out)
    policy = _bn(models[0], bn)
    spro = _SproSettings(lr=lr, lam=lam, samples=samples, wd=wd, momentum=momentum, batch_size=batch_size)
    from ..ensembles import budget_epochs

    known = [budget_epochs(m) for m in metas]  # each mode's training epochs, from its sidecar (None: unknown)
    mode_epochs = [float(e) if e is not None else None for e in known]
    known_epochs = [e for e in mode_epochs if e is not None]
    report = {
        "checkpoints": [str(p) for p in paths],
        "bn": policy,
        "command": common.command_line(),
        **provenance.environment(dev),
    }
    if each:
        res = espro(
            models[0],
            models,
            split,
            vertices=vertices,
            members=members,
            epochs=epochs,
            mode_epochs=[e or 0.0 for e in mode_epochs],
            bn=policy,
            checkpoint_dir=out,
            seed=seed,
            device=dev,
            **spro,
        )
        if None in mode_epochs:  # a mode of unknown training: the budget is unknown
            res.budget.update({"epochs": None, "mode_epochs": mode_epochs})
        report.update({"kind": "espro", **res.to_dict()})
        io.write_json(out / "simplex.json", report)
        if as_json:
            common.print_json({"out": str(out), "ensemble": res.ensemble, "curve": res.curve, "budget": res.budget})
            return
        from rich.table import Table

        table = Table(title=f"ESPRO: {len(models)} simplices x {members} members, bn={policy}")
        for col in ("simplices", "members", "accuracy", "nll", "brier", "ece"):
            table.add_column(col, justify="right")
        for row in res.curve:
            table.add_row(
                str(row["simplices"]),
                str(row["members"]),
                f"{row['accuracy']:.4f}",
                f"{row['nll']:.4f}",
                f"{row['brier']:.4f}",
                f"{row['ece']:.4f}",
            )
        console.print(table)
        epochs_txt = "?" if res.budget["epochs"] is None else f"{res.budget['epochs']:g}"
        console.print(f"training budget: {epochs_txt} epochs; results in {out}")
        return

    run = train_simplex(
        models[0],
        models,
        split,
        vertices=vertices,
        epochs=epochs,
        seed=seed,
        checkpoint=out / "simplex.safetensors",
        device=dev,
        **spro,
    )
    ev = Evaluator(
        models[0], {"train": split.train, "test": split.test}, metrics=("loss", "error"), bn=policy, device=dev
    )
    fam = run.family.to(dev)
    evaluation = evaluate_simplex(fam, ev, n_samples=eval_samples, seed=seed)
    from ..ensembles import ensemble_metrics, predict_proba

    coords = fam.sample(members, seed=seed + 1)
    with torch.no_grad():
        probs = [predict_proba(ev, fam(c), "test", fam.buffers_at(c) if policy == "running" else None) for c in coords]
    ens = ensemble_metrics(probs, split.test[1])
    budget = {
        "epochs": None if len(known_epochs) < len(mode_epochs) else float(sum(known_epochs) + run.epochs),
        "mode_epochs": mode_epochs,
        "simplex_epochs": float(run.epochs),
    }
    report.update(
        {
            "kind": "complex" if len(models) > 1 else "simplex",
            **run.to_dict(),
            "evaluation": evaluation.to_dict(),
            "ensemble": ens,
            "budget": budget,
        }
    )
    if plane_points > 1 and fam.n_vertices == 3 and len(fam.simplices) == 1:
        from ..families import PlaneThrough

        a, b, c = fam.vertices()
        plane = PlaneThrough(a, b, c)
        mc = plane.model_coords.numpy()
        evp = Evaluator(models[0], {"test": split.test}, metrics=("error",), bn=policy, bn_data=split.train, device=dev)
        ds = sweep(
            plane,
            evp,
            {"x": auto_range(mc[:, 0], plane_points, 0.3), "y": auto_range(mc[:, 1], plane_points, 0.3)},
            attrs={"models": {"labels": ["w0 (mode)", "w1", "w2"], "coords": mc.tolist()}},
        )
        plot_simplex_plane(ds, out / "plane.png", title="test error on the plane of the simplex")
    io.write_json(out / "simplex.json", report)
    summary = evaluation.summary()
    if as_json:
        common.print_json(
            {
                "out": str(out),
                "simplex": str(out / "simplex.safetensors"),
                "summary": summary,
                "ensemble": ens,
                "budget": budget,
            }
        )
        return
    from rich.table import Table

    table = Table(
        title=f"SPRO {report['kind']}: {fam.n_vertices} vertices, {len(fam.simplices)} simplices, "
        f"log volume {summary['log_volume']:.3f}, bn={policy}"
    )
    for col in ("metric", "vertices", "samples mean", "samples max"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for m in ("train_loss", "train_error", "test_loss", "test_error"):
        s = summary[m]
        table.add_row(m, " ".join(f"{v:.4f}" for v in s["vertices"]), f"{s['mean']:.4f}", f"{s['max']:.4f}")
    console.print(table)
    console.print(
        f"ensemble of {members} samples: test accuracy {ens['accuracy']:.4f}, NLL {ens['nll']:.4f}; results in {out}"
    )


@app.command("subspace")
def subspace_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="The start theta_0 (usually a run's checkpoints/epoch-000.safetensors)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder: one resumable checkpoint per run, subspace.json, figures."),
    dims: str = typer.Option("10,100,1000", "--dims", help="Subspace dimensions d, comma separated."),
    projection: str = typer.Option(
        "auto", "--projection", help="auto (dense while D d <= 2^24, else fastfood), dense, sparse, fastfood or hashed."
    ),
    epochs: int = typer.Option(10, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam (Li et al.) or sgd (momentum 0.9)."),
    schedule: str = typer.Option("constant", "--schedule", help="constant, step or cosine."),
    wd: float = typer.Option(0.0, "--wd", help="L2 penalty 0.5 wd |theta|^2."),
    batch_size: int = typer.Option(128, "--batch-size"),
    full_accuracy: float | None = typer.Option(
        None,
        "--full-accuracy",
        help="Full training's test accuracy (default: train the full model with the same settings).",
    ),
    threshold: float = typer.Option(0.9, "--threshold", help="d_int is the smallest d reaching this fraction of full."),
    radii: str | None = typer.Option(None, "--radii", help="The radial experiment: distances r, comma separated."),
    radial_dim: int | None = typer.Option(
        None, "--radial-dim", help="d of the radial experiment (default: the largest of --dims)."
    ),
    data: str | None = DATA,
    data_root: str | None = DATA_ROOT,
    data_args: str = DATA_ARGS,
    seed: int = typer.Option(0, "--seed", help="Fixes the projections, the direction and the data order."),
    device: str | None = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Train in random subspaces theta_0 + P z: the intrinsic dimension (Li et al. 2018) and the radial
    experiment (Fort and Jastrzebski 2019)."""
    from ..checks import check_choice, check_positive, input_file
    from ..errors import UserError

    check_positive(epochs=epochs, batch_size=batch_size, radial_dim=radial_dim)
    dlist = _ints(dims, "--dims")
    rlist = _floats(radii, "--radii") if radii is not None else None
    check_choice(projection, ("auto", "dense", "sparse", "fastfood", "hashed"), "projection")
    check_choice(optimizer, ("sgd", "adam"), "optimizer")
    check_choice(schedule, ("constant", "step", "cosine"), "schedule")
    _numbers(lr=lr, wd=wd)
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1]; got {threshold}")
    if full_accuracy is not None and not 0 < full_accuracy <= 1:
        raise UserError(f"--full-accuracy is a fraction in (0, 1]; got {full_accuracy}")
    path = input_file(checkpoint, "checkpoint")

    from .. import io, provenance
    from ..plots import plot_intrinsic_dimension, plot_radial
    from ..subspace import intrinsic_dimension, radial
    from . import common

    dev = common.resolve_device(device)
    common.seed_everything(seed)
    model, _, split = common.load_checkpoint(path, None, "", data, data_root, data_args, dev)
    D = sum(p.numel() for p in model.parameters())
    if max(dlist) > D:
        raise UserError(f"--dims has d = {max(dlist)}, more than the model's {D} parameters")
    rdim = radial_dim or max(dlist)
    if rlist is not None and rdim > D:
        raise UserError(f"--radial-dim {rdim} is more than the model's {D} parameters")
    out = common.out_dir(out)
    train = _TrainSettings(
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        wd=wd,
        batch_size=batch_size,
        seed=seed,
        device=dev,
    )
    full = {"test_accuracy": full_accuracy} if full_accuracy is not None else None
    ids = intrinsic_dimension(
        model, model, split, dlist, projection=projection, full=full, threshold=threshold, out=out, **train
    )
    report = {
        "checkpoint": str(path),
        "D": D,
        "intrinsic_dimension": ids.to_dict(),
        "command": common.command_line(),
        **provenance.environment(dev),
    }
    plot_intrinsic_dimension(ids, out / "intrinsic_dimension.png")
    rad = None
    if rlist is not None:
        rad = radial(model, model, split, rlist, rdim, direction_seed=seed, out=out, projection=projection, **train)
        report["radial"] = rad.to_dict()
        plot_radial(rad, out / "radial.png")
    io.write_json(out / "subspace.json", report)
    if as_json:
        common.print_json(
            {
                "out": str(out),
                "d_int90": ids.d_int90,
                "full": ids.full,
                "rows": ids.rows,
                **({"radial": rad.to_dict()["rows"]} if rad is not None else {}),
            }
        )
        return
    from rich.table import Table

    table = Table(title=f"random subspaces of D = {D}: d_int{int(round(100 * threshold))} = {ids.d_int90}")
    for col in ("d", "projection", "train loss", "train acc", "test acc", "seconds"):
        table.add_column(col, justify="right")
    for r in ids.rows:
        table.add_row(
            str(r["dim"]),
            r["projection"],
            f"{r['train_loss']:.4f}",
            f"{r['train_accuracy']:.4f}",
            f"{r['test_accuracy']:.4f}",
            f"{r['seconds']:.1f}",
        )
    table.add_row(
        "full",
        "",
        f"{ids.full.get('train_loss', float('nan')):.4f}",
        f"{ids.full.get('train_accuracy', float('nan')):.4f}",
        f"{ids.full['test_accuracy']:.4f}",
        "",
    )
    console.print(table)
    if rad is not None:
        console.print(
            "radial: " + ", ".join(f"r={r['r']:g}: {r['start_loss']:.3f} -> {r['train_loss']:.3f}" for r in rad.rows)
        )
    console.print(f"results in {out}")


@app.command("wedge")
def wedge_cmd(
    checkpoints: list[Path] = typer.Argument(..., help="Two or more trained optima (one architecture)."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder: wedge.safetensors (resumable), connector.safetensors, wedge.json, wedge.png, path.png.",
    ),
    epochs: int = typer.Option(10, "--epochs", help="Epochs of connector training."),
    lr: float = typer.Option(0.01, "--lr", help="Peak learning rate (cosine)."),
    samples: int = typer.Option(1, "--samples", help="Points on the spokes per minibatch."),
    wd: float = typer.Option(5e-4, "--wd", help="Weight decay of the connector."),
    batch_size: int = typer.Option(128, "--batch-size"),
    points: int = typer.Option(31, "--points", help="Points along each segment and spoke."),
    plane_points: int = typer.Option(21, "--plane-points", help="Grid of the planes before and after (0 skips)."),
    bn: str = BN,
    data: str | None = DATA,
    data_root: str | None = DATA_ROOT,
    data_args: str = DATA_ARGS,
    seed: int = typer.Option(0, "--seed"),
    device: str | None = DEVICE,
    as_json: bool = JSON,
) -> None:
    """The wedge test: one connector joined to every optimum by a low-loss segment (Fort and Jastrzebski 2019)."""
    from ..checks import check_positive, input_file
    from ..errors import UserError

    check_positive(epochs=epochs, samples=samples, batch_size=batch_size)
    if points < 2:
        raise UserError(f"--points must be at least 2; got {points}")
    _numbers(lr=lr, wd=wd)
    bn = _check_bn(bn)
    if len(checkpoints) < 2:
        raise UserError(f"the wedge test joins at least two optima; got {len(checkpoints)} checkpoint(s)")
    paths = [input_file(p, "checkpoint", "final.safetensors") for p in checkpoints]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserError("the same checkpoint is given twice: pass distinct optima")

    from .. import io, provenance
    from ..plots import plot_paths, plot_wedge
    from ..space import module_at
    from ..subspace import wedge
    from . import common

    dev = common.resolve_device(device)
    common.seed_everything(seed)
    models, metas, split = _load_all(paths, data, data_root, data_args, dev)
    out = common.out_dir(out)
    res = wedge(
        models[0],
        models,
        split,
        epochs=epochs,
        lr=lr,
        samples=samples,
        wd=wd,
        batch_size=batch_size,
        seed=seed,
        n_points=points,
        plane_points=plane_points,
        bn=_bn(models[0], bn),
        checkpoint=out / "wedge.safetensors",
        device=dev,
    )
    buffers = res.run.family.buffers_at(res.run.family.vertex_coords(len(models)))
    io.save_checkpoint(
        out / "connector.safetensors",
        module_at(models[0], res.connector, buffers),
        {**{k: metas[0][k] for k in ("model", "data") if k in metas[0]}, "wedge": {"optima": [str(p) for p in paths]}},
    )
    if res.planes:
        plot_wedge(res.planes, out / "wedge.png", metric=res.metric)
    plot_paths(
        list(res.before.values()) + list(res.after.values()), out / "path.png", metrics=("train_loss", "test_error")
    )
    summary = res.summary()
    io.write_json(
        out / "wedge.json",
        {
            "checkpoints": [str(p) for p in paths],
            **res.to_dict(),
            "command": common.command_line(),
            **provenance.environment(dev),
        },
    )
    if as_json:
        common.print_json({"out": str(out), "summary": summary})
        return
    from rich.table import Table

    table = Table(title=f"wedge: {len(models)} optima and one connector ({summary['metric']}, max along each path)")
    for col in ("pair", "segment max", "segment barrier", "via connector max", "via connector barrier"):
        table.add_column(col, justify="right")
    for key in summary["before"]:
        b, a = summary["before"][key], summary["after"][key]
        table.add_row(key, f"{b['max']:.4f}", f"{b['barrier_mean']:.4f}", f"{a['max']:.4f}", f"{a['barrier_mean']:.4f}")
    console.print(table)
    console.print(f"connector and results in {out}")

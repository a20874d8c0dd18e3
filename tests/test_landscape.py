"""Sweeps: grids, values against direct evaluation, the fast path, torchrun sharding, Goodfellow's
monotone interpolation, the convexity map, plots and the CLI."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SWEEP_SCRIPT_HEAD
from torch import nn
from torch.func import functional_call

from modescape import space as sp
from modescape.directions import random_directions
from modescape.errors import UserError
from modescape.evaluate import Evaluator
from modescape.families import Line, Plane, PlaneThrough
from modescape.landscape import Grid, convexity, parse_range, sweep
from modescape.store import load
from modescape.zoo import build_model, load_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def digits():
    split = load_dataset("digits")
    return split


@pytest.fixture(scope="module")
def small(digits):
    torch.manual_seed(0)
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=16)
    tr = (digits.train[0][:300], digits.train[1][:300])
    te = (digits.test[0][:200], digits.test[1][:200])
    return net, tr, te


def direct(net, point, x, y):
    """Loss and accuracy of ``net`` at ``point``, computed without the Evaluator."""
    with torch.no_grad():
        out = functional_call(net, point, (x,))
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def test_parse_range_and_grid_order():
    np.testing.assert_allclose(parse_range("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(parse_range("0:1", steps=3), [0, 0.5, 1])
    np.testing.assert_allclose(parse_range("2:2:1"), [2.0])
    for bad in ("1:2", "a:b:3", "0:1:0", "0:1:1"):
        with pytest.raises(UserError, match="A:B:N|at least 1|1 point"):
            parse_range(bad)
    g = Grid.parse(x="0:2:3", y="0:1:2")
    assert g.shape == (3, 2)
    np.testing.assert_array_equal(g.points(), [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]])
    np.testing.assert_array_equal(g.points(slice(1, 2)), [[1, 0], [1, 1]])


def test_3x7_grid_equals_direct_evaluation_and_origin_equals_model(small):
    net, tr, te = small
    origin = sp.WeightSpace(net).point(net)
    dx, dy = random_directions(net, 2, seed=0)
    ev = Evaluator(net, {"train": tr, "test": te}, progress=False)
    ds = sweep(Plane(origin, dx, dy), ev, {"x": "-1:1:3", "y": "0:0.6:7"}, progress=False)
    assert ds.train_loss.dims == ("x", "y") and ds.train_loss.shape == (3, 7)
    assert ds.attrs["bn"] == "running" and ds.attrs["eval_mode"] in ev.FAMILY_MODES
    for x in ds.x.values:
        for y in ds.y.values:
            p = {k: origin[k] + x * dx[k] + y * dy[k] for k in origin}
            for split, (xs, ys) in (("train", tr), ("test", te)):
                loss, acc = direct(net, p, xs, ys)
                np.testing.assert_allclose(float(ds[f"{split}_loss"].sel(x=x, y=y)), loss, rtol=1e-5)
                np.testing.assert_allclose(float(ds[f"{split}_accuracy"].sel(x=x, y=y)), acc, atol=1e-12)
    with torch.no_grad():
        own = float(F.cross_entropy(net(tr[0]), tr[1]))
    np.testing.assert_allclose(float(ds.train_loss.sel(x=0.0, y=0.0)), own, rtol=1e-6)


def test_every_evaluation_mode_gives_the_same_values(small):
    net, tr, _ = small
    origin = sp.WeightSpace(net).point(net)
    dx, dy = random_directions(net, 2, seed=1)
    plane = Plane(origin, dx, dy)
    c = torch.tensor(Grid.parse(x="-1:1:4", y="-1:1:3").points())
    ev = Evaluator(net, {"train": tr}, progress=False, chunk=5)
    ref = ev(plane(c)).values
    for mode in ev.FAMILY_MODES:
        ev.family_mode = mode
        torch.testing.assert_close(ev.evaluate_family(plane, c).values, ref, rtol=1e-5, atol=1e-7)


def test_bn_policy_recorded_and_recompute_works(digits):
    torch.manual_seed(0)
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=8, norm="bn")
    tr = (digits.train[0][:200], digits.train[1][:200])
    a = sp.WeightSpace(net).point(net)
    b = sp.add(a, random_directions(net, 1, seed=4)[0])
    ev = Evaluator(net, {"train": tr}, bn="recompute", progress=False)
    ds = sweep(Line(a, b), ev, "0:1:3", progress=False)
    assert ds.attrs["bn"] == "recompute"
    ref = ev([a, b]).values
    np.testing.assert_allclose(ds.train_loss.values[[0, 2]], ref[:, 0].numpy(), rtol=1e-5)


@pytest.mark.slow
def test_interpolation_init_to_trained_is_monotone(digits):
    """Goodfellow et al. 2015: on the straight line from the initialisation to the trained digits MLP
    (default model and training config), the train loss decreases monotonically."""
    from modescape.train import TrainConfig, train

    torch.manual_seed(0)
    net = build_model("mlp", digits.input_shape, digits.num_classes)
    init = sp.WeightSpace(net).point(net)
    train(net, digits, TrainConfig(), progress=False)
    final = sp.WeightSpace(net).point(net)
    ev = Evaluator(net, {"train": digits.train}, progress=False)
    ds = sweep(Line(init, final), ev, "0:1:21", progress=False)
    loss = ds.train_loss.values
    assert loss[-1] < 0.1 * loss[0]
    assert np.all(np.diff(loss) < 0), loss


def test_plane_through_three_models_reports_their_coordinates(small):
    net, tr, _ = small
    a = sp.WeightSpace(net).point(net)
    d1, d2 = random_directions(net, 2, seed=7)
    b, c = sp.add(a, d1), sp.axpy(0.5, d1, sp.add(a, d2))
    fam = PlaneThrough(a, b, c)
    mc = fam.model_coords.numpy()
    ev = Evaluator(net, {"train": tr}, progress=False)
    ds = sweep(fam, ev, {"x": mc[:, 0], "y": np.unique(mc[:, 1])}, progress=False)
    for p, (x, y) in zip((a, b, c), mc, strict=True):
        np.testing.assert_allclose(float(ds.train_loss.sel(x=x, y=y)), direct(net, p, *tr)[0], rtol=1e-5)


def test_convexity_map_matches_dense_hessian(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Tanh(), nn.Linear(3, 10))
    x, y = digits.train[0][:100], digits.train[1][:100]
    origin = sp.WeightSpace(net).point(net)
    dx, dy = random_directions(net, 2, seed=0)
    ev = Evaluator(net, {"train": (x, y)}, progress=False)
    ds = convexity(Plane(origin, dx, dy), ev, {"x": "0:0.5:2", "y": "0:0:1"}, tol=1e-8, progress=False)
    names = list(origin)
    shapes = [origin[n].shape for n in names]
    sizes = [origin[n].numel() for n in names]
    for xv in ds.x.values:
        p = {k: origin[k] + xv * dx[k] for k in origin}
        flat = torch.cat([p[n].reshape(-1) for n in names]).double()

        def loss(v):
            parts = {n: t.reshape(s) for n, t, s in zip(names, torch.split(v, sizes), shapes, strict=True)}
            return F.cross_entropy(functional_call(net.double(), parts, (x.double(),)), y)

        ev_ = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
        net.float()
        got = ds.sel(x=xv, y=0.0)
        np.testing.assert_allclose(float(got.lambda_max), float(ev_.max()), rtol=1e-3)
        np.testing.assert_allclose(float(got.lambda_min), float(ev_.min()), rtol=1e-3, atol=1e-4 * float(ev_.max()))
        np.testing.assert_allclose(float(got.convexity_ratio), abs(float(ev_.min() / ev_.max())), rtol=1e-2, atol=1e-4)


SCRIPT = SWEEP_SCRIPT_HEAD + textwrap.dedent("""
    ev = Evaluator(net, {{"train": (split.train[0][:300], split.train[1][:300])}}, progress=False)
    ev.family_mode = "loop"
    plane = Plane(sp.WeightSpace(net).point(net), dx, dy)
    sweep(plane, ev, {{"x": "-1:1:5", "y": "0:1:3"}}, store=sys.argv[1], rows=1, progress=False)
    mem = sweep(plane, ev, {{"x": "-1:1:5", "y": "0:1:3"}}, rows=1, progress=False)  # in memory, also sharded
    if int(os.environ.get("RANK", 0)) == 0:
        np.save(sys.argv[1] + ".npy", mem.train_loss.values)
    from modescape import distributed
    distributed.finish()
""")


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # one torchrun job at a time: each starts 3 processes on 2 cores
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(src=SRC))
    env = {**os.environ, "MODESCAPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.zarr")], env=env, capture_output=True, text=True, timeout=120
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "two.zarr"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr")
    assert b.attrs["complete"] and a.attrs["settings_hash"] == b.attrs["settings_hash"]
    assert a.attrs["world_size"] == 1 and b.attrs["world_size"] == 2
    for v in ("train_loss", "train_accuracy"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert not np.isnan(b.train_loss.values).any()
    mem_one, mem_two = np.load(str(tmp_path / "one.zarr") + ".npy"), np.load(str(tmp_path / "two.zarr") + ".npy")
    np.testing.assert_array_equal(mem_one, a.train_loss.values)
    np.testing.assert_array_equal(mem_two, a.train_loss.values)


@pytest.mark.slow
def test_plots_and_cli(tmp_path, digits):
    from typer.testing import CliRunner

    from modescape import io
    from modescape.cli import app

    torch.manual_seed(0)
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=8)
    init = copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    meta = {"data": {"name": "digits", "args": {}, "root": None}}
    io.save_checkpoint(tmp_path / "a.safetensors", init, meta)
    io.save_checkpoint(tmp_path / "b.safetensors", net, meta)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "surface",
            str(tmp_path / "b.safetensors"),
            "--out",
            str(tmp_path / "s"),
            "--x",
            "-1:1:4",
            "--y",
            "0:1:3",
            "--vtk",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "s"
    for f in (
        "result.zarr",
        "train_loss_contour.png",
        "train_loss_contourf.png",
        "train_loss_heatmap.png",
        "train_loss_surface.png",
        "landscape.html",
        "train_loss.vtk",
        "summary.json",
    ):
        assert (out / f).exists(), f
    html = (out / "landscape.html").read_text()
    assert "Plotly" in html and '<script src="http' not in html  # self-contained
    assert (out / "train_loss.vtk").read_text().startswith("# vtk DataFile")
    ds = load(out)
    assert ds.attrs["command"].startswith("modescape") and ds.attrs["seed"] == 0 and ds.attrs["model_hash"]
    r = runner.invoke(
        app,
        [
            "interpolate",
            str(tmp_path / "a.safetensors"),
            str(tmp_path / "b.safetensors"),
            "--out",
            str(tmp_path / "i"),
            "--steps",
            "5",
            "--range",
            "0:1",
        ],
    )
    assert r.exit_code == 0, r.output
    line = load(tmp_path / "i")
    np.testing.assert_allclose(line.t.values, np.linspace(0, 1, 5))
    assert (tmp_path / "i" / "line.png").exists()
    r = runner.invoke(app, ["plot", str(tmp_path / "i" / "result.zarr"), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "line.png").exists() and (tmp_path / "p" / "landscape.html").exists()


def test_convexity_map_on_a_parameter_filter(digits):
    """params="weights" (the reference's choice: tensors with dim > 1) is the Hessian's diagonal block."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 10))
    x, y = digits.train[0][:100], digits.train[1][:100]
    origin = sp.WeightSpace(net).point(net)
    dx, dy = random_directions(net, 2, seed=0)
    ev = Evaluator(net.double(), {"train": (x.double(), y)}, progress=False)
    plane = Plane(
        {k: v.double() for k, v in origin.items()},
        {k: v.double() for k, v in dx.items()},
        {k: v.double() for k, v in dy.items()},
    )
    ds = convexity(plane, ev, {"x": "0:0.5:2", "y": "0:0:1"}, tol=1e-10, params="weights", progress=False)
    assert ds.attrs["params"] == "weights"
    names = [n for n in origin if origin[n].dim() > 1]
    for xv in ds.x.values:
        p = plane(torch.tensor([xv, 0.0], dtype=torch.float64))
        sizes, shapes = [p[n].numel() for n in names], [p[n].shape for n in names]

        def loss(flat, p=p, sizes=sizes, shapes=shapes):  # the weights free, the biases fixed at p
            parts = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
            return F.cross_entropy(functional_call(net, {**p, **parts}, (x.double(),)), y)

        flat = torch.cat([p[n].reshape(-1) for n in names])
        want = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
        got = ds.sel(x=xv, y=0.0)
        np.testing.assert_allclose(float(got.lambda_max), float(want.max()), rtol=1e-6)
        np.testing.assert_allclose(float(got.lambda_min), float(want.min()), rtol=1e-6, atol=1e-8 * float(want.max()))


# -- lines and planes between BatchNorm models carry each model's statistics ---------------------------


@pytest.fixture(scope="module")
def bn_runs(tmp_path_factory):
    """Three digits MLPs with BatchNorm, trained one epoch each from different seeds (checkpoints)."""
    from modescape.train import TrainConfig, train
    from modescape.zoo import load_dataset

    split = load_dataset("digits")
    root = tmp_path_factory.mktemp("bn_runs")
    out = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        net = build_model("mlp", split.input_shape, 10, depth=1, width=16, norm="bn")
        train(
            net,
            split,
            TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=seed),
            out=root / f"r{seed}",
            meta={"data": split.meta},
            progress=False,
        )
        out.append(root / f"r{seed}" / "final.safetensors")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("bn", ["running", "recompute", "train"])
def test_interpolate_between_bn_models_ends_exactly_at_each(bn_runs, bn, tmp_path, capsys):
    """`interpolate A B` gives at t = 0 and t = 1 exactly what `eval A` and `eval B` give, under every
    policy (under running, B used to be evaluated with A's statistics)."""
    import json

    from conftest import run_cli

    a, b = bn_runs[:2]
    code, out, err = run_cli(["eval", a, b, "--bn", bn, "--json"], capsys)
    assert code == 0, err
    own = {r["checkpoint"]: r for r in json.loads(out)}
    code, out, err = run_cli(
        ["interpolate", a, b, "--range", "0:1:5", "--bn", bn, "--out", tmp_path / "line", "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    ds = load(tmp_path / "line" / "result.zarr")
    for end, path, t in (("A", a, 0.0), ("B", b, 1.0)):
        for metric in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert summary[f"{metric}_at_{end}"] == pytest.approx(own[str(path)][metric], rel=1e-6, abs=1e-9)
            assert float(ds[metric].sel(t=t)) == pytest.approx(own[str(path)][metric], rel=1e-6, abs=1e-9)
    assert summary["bn"] == bn and ds.attrs["bn"] == bn


@pytest.mark.slow
def test_plane_through_three_bn_models_is_each_model_at_its_coordinates(bn_runs):
    """The plane through A, B and C carries their statistics mixed with the point's barycentric coordinates:
    at each model's coordinates the point evaluates as that model does, under every policy."""
    from modescape import io
    from modescape.zoo import load_dataset

    split = load_dataset("digits")
    nets = [io.load_model(p)[0] for p in bn_runs]
    space = sp.WeightSpace(nets[0])
    fam = PlaneThrough(*(space.point(n) for n in nets), buffers=[space.buffers(n) for n in nets])
    data = {"train": split.train, "test": split.test}
    for bn in ("running", "recompute", "train"):
        ev = Evaluator(nets[0], data, bn=bn, mode="loop", progress=False)
        got = ev.evaluate_family(fam, fam.model_coords)
        for i, net in enumerate(nets):
            want = Evaluator(net, data, bn=bn, mode="loop", progress=False)([space.point(net)])
            torch.testing.assert_close(got.values[i], want.values[0], rtol=1e-4, atol=1e-6)
    # the buffer weights are exactly one model's at its coordinates (0 * x + 1 * y = y: no rounding)
    weights = fam.barycentric(fam.model_coords)
    torch.testing.assert_close(weights, torch.eye(3, dtype=torch.float64))


def test_results_carry_the_checkpoints_weights_hash(bn_runs, tmp_path):
    """Provenance: a result's model_hash is the checkpoint sidecar's weights_hash (one hash for both), and
    the store records versions, thread count, device and the git commit when run from a checkout."""
    from modescape import io

    net, meta = io.load_model(bn_runs[0])
    ev = Evaluator(net, {"train": (torch.randn(20, 1, 8, 8), torch.zeros(20, dtype=torch.long))}, progress=False)
    d = random_directions(net, 2, seed=0)
    ds = sweep(
        Plane(sp.WeightSpace(net).point(net), *d),
        ev,
        {"x": "0:1:2", "y": "0:1:2"},
        store=tmp_path / "r.zarr",
        progress=False,
    )
    assert ds.attrs["model_hash"] == meta["weights_hash"]
    assert ds.attrs["threads"] == torch.get_num_threads() and ds.attrs["device"] == "cpu"
    assert {"modescape", "torch", "numpy", "xarray"} <= set(ds.attrs["versions"])
    assert "git_commit" in ds.attrs


@pytest.mark.slow
def test_surface_along_hessian_eigenvectors_with_topology(tmp_path, capsys):
    """`surface --directions hessian:0,1 --topology`: the plane's axes are the Hessian's top eigenvectors at
    the checkpoint, used exactly (the curvature along axis x at the centre is its eigenvalue), labelled
    with their eigenvalues, and the topology of the same sweep is written beside it."""
    import json

    from conftest import run_cli

    from modescape import io

    torch.manual_seed(0)  # tanh: a smooth loss, so finite differences converge to the Hessian (ReLU kinks add to them)
    net = build_model("mlp", (1, 8, 8), 10, depth=1, width=8, activation="tanh")
    io.save_checkpoint(tmp_path / "m.safetensors", net, {"data": {"name": "digits", "args": {}}})
    code, out, err = run_cli(
        [
            "surface",
            tmp_path / "m.safetensors",
            "--directions",
            "hessian:0,1",
            "--topology",
            "--x",
            "-0.02:0.02:5",
            "--y",
            "-0.02:0.02:3",
            "--out",
            tmp_path / "h",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    ds = load(tmp_path / "h")
    lam = ds.attrs["directions"]["eigenvalues"]
    assert lam[0] >= lam[1] and ds.attrs["axis_labels"][0].startswith("Hessian eigenvector 0")
    loss = ds.train_loss.sel(y=0.0).values  # x = -0.02, -0.01, 0, 0.01, 0.02 along the top eigenvector
    second = (loss[3] - 2 * loss[2] + loss[1]) / 0.01**2
    assert second == pytest.approx(lam[0], rel=0.02)
    assert summary["topology"]["n_minima"] >= 1 and (tmp_path / "h" / "topology.json").exists()
    code, _, err = run_cli(
        ["surface", tmp_path / "m.safetensors", "--directions", "eigen", "--out", tmp_path / "z"], capsys
    )
    assert code == 2 and "unknown directions" in err

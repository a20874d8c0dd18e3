"""Random subspaces: projections (gradient P^T grad, unit columns, Fastfood against its formula), P = I as plain
training, resume, d_int90, the radial experiment, wedges and the `subspace` and `wedge` commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from conftest import run_cli

from modescape import space as sp
from modescape.errors import UserError
from modescape.families import AffineSubspace, make_projection
from modescape.families.subspace import DENSE_LIMIT, hadamard
from modescape.subspace import IntrinsicDimension, radial, train_subspace, wedge
from modescape.train import TrainConfig, train
from modescape.zoo import build_model

KINDS = ("dense", "sparse", "fastfood", "hashed")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("D,d", [(300, 12), (1024, 40), (77, 77)])
def test_projection_gradient_is_p_transpose_grad_and_columns_have_unit_norm(kind, D, d):
    proj = make_projection(kind, D, d, seed=3)
    m = proj.matrix().double()  # [D, d], from the projection itself
    assert m.shape == (D, d)
    z = torch.randn(2, d, requires_grad=True)
    g = torch.randn(2, D)
    assert torch.allclose(proj(z).double(), z.detach().double() @ m.T, atol=1e-5)
    (proj(z) * g).sum().backward()
    assert torch.allclose(z.grad.double(), g.double() @ m, atol=1e-4)
    norms = m.norm(dim=0)
    if kind != "fastfood" or D & (D - 1) == 0:  # Fastfood: exact for D a power of two (no truncation)
        assert torch.allclose(norms, torch.ones(d, dtype=torch.float64), atol=1e-5)
    else:  # else about 1: the rows kept are D of L = 2^ceil(log2 D), scaled by sqrt(L / D)
        assert abs(float(norms.mean()) - 1) < 0.05 and float((norms - 1).abs().max()) < 0.3
    # seeded: the same seed gives the same P, another seed another
    assert torch.equal(make_projection(kind, D, d, seed=3).matrix(), proj.matrix())
    assert not torch.equal(make_projection(kind, D, d, seed=4).matrix(), proj.matrix())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_affine_is_origin_plus_p_z_on_every_path(kind, dtype):
    """theta_0 + P z and its gradient for one point, in float64 (the CSR transpose product) and bfloat16
    (no CSR products: the gather fallback), against the matrix P formed in float64."""
    D, d = 500, 17
    proj = make_projection(kind, D, d, seed=5, dtype=dtype)
    m = make_projection(kind, D, d, seed=5, dtype=torch.float64).matrix()
    origin = torch.randn(D, dtype=torch.float64).to(dtype)
    z = torch.randn(1, d, dtype=torch.float64).to(dtype).requires_grad_(True)
    g = torch.randn(1, D, dtype=torch.float64).to(dtype)
    out = proj.affine(origin, z)
    tol = 1e-9 if dtype == torch.float64 else 0.1
    assert out.dtype == dtype and out.shape == (1, D)
    assert torch.allclose(out.double(), origin.double() + z.detach().double() @ m.T, atol=tol)
    (out * g).sum().backward()
    assert torch.allclose(z.grad.double(), g.double() @ m, atol=tol * 10)
    assert torch.allclose(proj.transpose(g).double(), g.double() @ m, atol=tol * 10)  # the training fast path's
    into = torch.full((D,), float("nan"), dtype=dtype)
    proj.affine_into(origin, z.detach()[0], into)
    assert torch.allclose(into.double(), origin.double() + z.detach().double()[0] @ m.T, atol=tol)


def test_fastfood_is_h_g_pi_h_b_truncated_and_hadamard_is_sylvesters():
    x = torch.randn(3, 256, dtype=torch.float64)
    assert torch.allclose(hadamard(x), x @ torch.from_numpy(scipy.linalg.hadamard(256)).double(), atol=1e-10)
    D, d = 200, 9
    p = make_projection("fastfood", D, d, seed=1)
    L = 256
    H = torch.from_numpy(scipy.linalg.hadamard(L)).double()
    B = torch.diag(p.signs.double())
    Pi = torch.eye(L, dtype=torch.float64)[p.perm]  # (Pi x)_i = x_perm[i]
    G = torch.diag(p.gauss.double())  # the normalisation 1 / (sqrt(L sum g^2) sqrt(D / L)) is folded in here
    naive = (H @ G @ Pi @ H @ B)[:D, :d]
    assert torch.allclose(p.matrix().double(), naive, atol=1e-5)


def test_sparse_projection_has_about_sqrt_d_entries_per_column():
    D, d = 10_000, 30
    m = make_projection("sparse", D, d, seed=0).matrix()
    nnz = (m != 0).sum(0).double()
    assert (nnz <= 100).all() and (nnz >= 95).all()  # round(sqrt(10000)) rows drawn, a few collide
    assert torch.allclose(m.norm(dim=0), torch.ones(d), atol=1e-5)


def test_hashed_projection_has_one_entry_per_row_and_orthonormal_columns():
    m = make_projection("hashed", 500, 40, seed=0).matrix().double()
    assert ((m != 0).sum(1) == 1).all()
    assert torch.allclose(m.T @ m, torch.eye(40, dtype=torch.float64), atol=1e-6)


def test_auto_projection_is_dense_while_small():
    assert make_projection("auto", 1000, 100).kind == "dense"
    big = DENSE_LIMIT // 100 + 1
    assert make_projection("auto", big, 100).kind != "dense"
    with pytest.raises(UserError, match="exceeds"):
        make_projection("dense", 10, 11)
    with pytest.raises(UserError, match="unknown projection"):
        make_projection("gaussian", 10, 2)


def _tiny(split, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("mlp", split.input_shape, split.num_classes, **{"depth": 1, "width": 12, **kw})


@pytest.mark.parametrize("kind", KINDS)
def test_training_gradient_with_respect_to_z_is_p_transpose_of_the_weight_gradient(digits, kind):
    net = _tiny(digits)
    space = sp.WeightSpace(net)
    theta0 = space.point(net)
    fam = AffineSubspace(theta0, make_projection(kind, space.numel, 25, seed=0))
    x, y = digits.train[0][:64], digits.train[1][:64]
    z = (0.1 * torch.randn(25)).requires_grad_(True)
    F.cross_entropy(torch.func.functional_call(net, fam.layout.unflatten(fam.at(z)), (x,)), y).backward()
    theta = fam.at(z.detach()).requires_grad_(True)
    F.cross_entropy(torch.func.functional_call(net, space.unflatten(theta), (x,)), y).backward()
    assert torch.allclose(z.grad, fam.projection.matrix().T @ theta.grad, atol=1e-5)
    assert torch.equal(fam(torch.zeros(25, dtype=torch.float64))["out.bias"], theta0["out.bias"])  # z = 0: theta_0


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "constant"), ("adam", "cosine")])
def test_full_dimension_identity_projection_reproduces_plain_training(digits, optimizer, schedule):
    init = _tiny(digits, seed=3)
    plain = _tiny(digits, seed=3)
    cfg = TrainConfig(
        epochs=2,
        batch_size=64,
        lr=0.05 if optimizer == "sgd" else 0.005,
        wd=1e-3,
        optimizer=optimizer,
        schedule=schedule,
        seed=7,
    )
    if optimizer == "adam":
        cfg.wd = 0.0  # Adam's coupled weight decay in train() differs from an L2 term only by its place
    train(plain, digits, cfg, progress=False)
    D = sp.WeightSpace(init).numel
    run = train_subspace(
        init,
        init,
        digits,
        D,
        "identity",
        epochs=2,
        lr=cfg.lr,
        optimizer=optimizer,
        wd=cfg.wd,
        batch_size=64,
        schedule=schedule,
        seed=7,
        progress=False,
    )
    got = run.point()
    for k, v in plain.named_parameters():
        assert torch.allclose(got[k], v.detach(), atol=2e-5), (k, (got[k] - v).abs().max())
    assert run.metrics["test_accuracy"] > 0.3  # well above chance (0.1)


def test_subspace_training_resumes_exactly_and_refuses_other_settings(digits, tmp_path):
    init = _tiny(digits)
    kw = dict(
        dim=40, projection="fastfood", epochs=3, lr=0.01, optimizer="adam", batch_size=128, seed=2, progress=False
    )
    full = train_subspace(init, init, digits, **kw)
    ck = tmp_path / "z.safetensors"
    part = train_subspace(init, init, digits, checkpoint=ck, stop_after=1, **kw)
    assert part.metrics == {} and len(part.history) == 1
    resumed = train_subspace(init, init, digits, checkpoint=ck, **kw)
    assert torch.allclose(resumed.z, full.z, atol=1e-6)
    assert resumed.metrics["train_loss"] == pytest.approx(full.metrics["train_loss"], rel=1e-5)
    assert full.metrics["train_loss"] < math.log(10)  # it learned something in 40 dimensions
    with pytest.raises(UserError, match="other settings"):
        train_subspace(init, init, digits, checkpoint=ck, **{**kw, "lr": 0.02})


def test_d_int90_is_the_smallest_dimension_reaching_90_percent_of_full():
    rows = [{"dim": d, "test_accuracy": a} for d, a in ((10, 0.5), (100, 0.86), (300, 0.9), (1000, 0.95))]
    res = IntrinsicDimension(rows, {"test_accuracy": 0.96})
    assert res.target == pytest.approx(0.864) and res.d_int90 == 300
    assert IntrinsicDimension(rows[:2], {"test_accuracy": 0.96}).d_int90 is None
    assert IntrinsicDimension(rows, {"test_accuracy": 0.96}, threshold=0.5).d_int90 == 10


def test_radial_moves_the_start_by_r_along_one_unit_direction(digits):
    init = _tiny(digits)
    space = sp.WeightSpace(init)
    res = radial(init, init, digits, [0.0, 3.0], dim=20, epochs=1, lr=0.01, optimizer="adam", progress=False)
    theta0 = space.flatten(space.point(init)).double()
    assert res.rows[0]["start_norm"] == pytest.approx(float(theta0.norm()), rel=1e-6)
    # |theta_0 + 3 u|^2 = |theta_0|^2 + 9 + 6 <theta_0, u>, with |u| = 1: between (|theta_0| - 3)^2 and (+ 3)^2
    n3 = res.rows[1]["start_norm"]
    assert abs(float(theta0.norm()) - 3) - 1e-5 <= n3 <= float(theta0.norm()) + 3 + 1e-5
    assert [r["r"] for r in res.rows] == [0.0, 3.0] and all(math.isfinite(r["train_loss"]) for r in res.rows)


@pytest.mark.slow
def test_wedge_connector_removes_the_barriers_between_optima(digits):
    optima = []
    for seed in range(3):
        m = _tiny(digits, seed=seed, width=24)
        train(m, digits, TrainConfig(epochs=4, lr=0.05, batch_size=64, seed=seed), progress=False)
        optima.append(m)
    res = wedge(
        optima[0],
        optima,
        digits,
        epochs=4,
        lr=0.05,
        batch_size=64,
        n_points=9,
        plane_points=5,
        metric="train_loss",
        progress=False,
    )
    s = res.summary()
    assert set(s["before"]) == {"0-1", "0-2", "1-2"} and set(s["spokes"]) == {"0", "1", "2"}
    for key in s["before"]:
        assert s["after"][key]["barrier_mean"] < s["before"][key]["barrier_mean"], (key, s)
    # the path via the connector passes through it at t = 1/2, where both spokes end
    path = res.after["0-1"]
    mid = int(np.argmin(np.abs(path.t.numpy() - 0.5)))
    assert path.metrics["train_loss"][mid].item() == pytest.approx(
        res.spokes["0"].metrics["train_loss"][-1].item(), rel=1e-5
    )
    assert set(res.planes) == {"before", "after"} and res.planes["after"]["train_loss"].shape == (5, 5)
    with pytest.raises(UserError, match="at least two"):
        wedge(optima[0], optima[:1], digits)


@pytest.mark.slow
def test_cli_subspace_and_wedge(tmp_path, capsys):
    ckpts = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        code, _, err = run_cli(
            ["train", "--out", out, "--epochs", "2", "--model-args", "depth=1,width=16", "--seed", seed, "--json"],
            capsys,
        )
        assert code == 0, err
        ckpts.append(out / "final.safetensors")
    init = tmp_path / "run0" / "checkpoints" / "epoch-000.safetensors"
    sdir = tmp_path / "sub"
    argv = [
        "subspace",
        init,
        "--out",
        sdir,
        "--dims",
        "5,40",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--radii",
        "0,2",
        "--radial-dim",
        "10",
        "--json",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert [r["dim"] for r in rep["rows"]] == [5, 40] and rep["full"]["projection"] == "identity"
    assert [r["r"] for r in rep["radial"]] == [0.0, 2.0]
    for name in (
        "subspace.json",
        "intrinsic_dimension.png",
        "radial.png",
        "subspace-d5.safetensors",
        "full.safetensors",
    ):
        assert (sdir / name).exists(), name
    code, out2, err = run_cli(argv, capsys)  # everything finished: the same numbers again
    assert code == 0, err
    again = json.loads(out2)["rows"]
    assert [r["dim"] for r in again] == [5, 40]
    assert [r["train_loss"] for r in again] == pytest.approx([r["train_loss"] for r in rep["rows"]], rel=1e-6)
    wdir = tmp_path / "wedge"
    code, out, err = run_cli(
        ["wedge", *ckpts, "--out", wdir, "--epochs", "1", "--points", "5", "--plane-points", "4", "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert set(summary["before"]) == {"0-1"} and set(summary["spokes"]) == {"0", "1"}
    for name in ("wedge.safetensors", "connector.safetensors", "connector.json", "wedge.json", "wedge.png", "path.png"):
        assert (wdir / name).exists(), name
    code, out, err = run_cli(["eval", wdir / "connector.safetensors", "--json"], capsys)
    assert code == 0, err
    for argv, pattern in (
        (["subspace", init, "--out", tmp_path / "x", "--dims", "ten"], "--dims"),
        (["subspace", init, "--out", tmp_path / "x", "--projection", "qr"], "projection"),
        (["subspace", init, "--out", tmp_path / "x", "--dims", "100000"], "parameters"),
        (["subspace", init, "--out", tmp_path / "x", "--radii", "0,inf"], "--radii"),
        (["subspace", init, "--out", tmp_path / "x", "--wd", "nan"], "--wd"),
        (["wedge", ckpts[0], "--out", tmp_path / "x"], "at least two"),
        (["wedge", ckpts[0], ckpts[1], "--out", tmp_path / "x", "--points", "1"], "--points"),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and pattern in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()

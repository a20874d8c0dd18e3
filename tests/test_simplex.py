"""Simplices and complexes: Cayley-Menger volumes against closed forms, Dirichlet sampling, SPRO against a
hand-written loop, resume, ESPRO and the `simplex` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from modescape import space as sp
from modescape.ensembles import ensemble_metrics, predict_proba
from modescape.errors import UserError
from modescape.evaluate import Evaluator
from modescape.families import Simplex
from modescape.families.simplex import cayley_menger_determinant, log_volume, squared_distances, volume_squared
from modescape.point_sgd import epoch_order
from modescape.simplex import espro, evaluate_simplex, load_simplex, save_simplex, train_simplex
from modescape.train import TrainConfig, train
from modescape.zoo import build_model


def _embed(rows: torch.Tensor, D: int = 300, offset: float = 1e3, seed: int = 0) -> torch.Tensor:
    """Rows [n, k] placed in R^D by a random orthonormal map, far from the origin (a stability check)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, rows.shape[1], generator=g, dtype=torch.float64))
    shift = offset * torch.randn(D, generator=g, dtype=torch.float64) / math.sqrt(D)
    return rows.double() @ q.T + shift


def _regular(k: int, edge: float) -> torch.Tensor:
    """k + 1 vertices of a regular k-simplex with this edge: scaled standard basis vectors of R^(k+1)."""
    return torch.eye(k + 1, dtype=torch.float64) * edge / math.sqrt(2.0)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_regular_simplex_volume_matches_the_closed_form(k):
    edge = 2.5
    closed = edge**k / math.factorial(k) * math.sqrt((k + 1) / 2.0**k)
    v = _embed(_regular(k, edge), D=400)
    assert float(log_volume(v)) == pytest.approx(math.log(closed), abs=1e-9)
    assert float(volume_squared(v)) == pytest.approx(closed**2, rel=1e-9)
    # the literal bordered Cayley-Menger determinant agrees: V^2 = (-1)^(k+1) det / (2^k (k!)^2)
    cm = cayley_menger_determinant(squared_distances(v))
    assert float((-1) ** (k + 1) * cm / (2**k * math.factorial(k) ** 2)) == pytest.approx(closed**2, rel=1e-6)
    fam = Simplex([{"w": row.float()} for row in v.float()])
    assert float(fam.volume()) == pytest.approx(closed, rel=1e-4)  # float32 vertices far from the origin


@pytest.mark.parametrize("lengths", [(3.0,), (1.0, 2.0), (0.5, 2.0, 4.0), (1e-3, 1e3, 1.0, 2.0)])
def test_right_simplex_volume_is_the_product_of_its_legs_over_k_factorial(lengths):
    k = len(lengths)
    rows = torch.zeros(k + 1, k, dtype=torch.float64)
    for i, a in enumerate(lengths):
        rows[i + 1, i] = a
    v = _embed(rows, D=200, offset=10.0, seed=k)
    closed = math.prod(lengths) / math.factorial(k)
    assert float(log_volume(v)) == pytest.approx(math.log(closed), abs=1e-8)
    assert float(volume_squared(v).sqrt()) == pytest.approx(closed, rel=1e-8)


def test_degenerate_simplex_has_zero_volume_and_a_finite_regularised_gradient():
    base = _embed(_regular(2, 1.0), D=50).float()
    pts = [{"w": r} for r in base]
    fam = Simplex(pts).add_vertex()  # the new vertex at the centroid: a flat 3-simplex
    assert float(fam.volume().detach()) < 1e-4 and float(log_volume(fam.matrix().detach())) < -8
    term = fam.log_volume(eps=1e-4)
    term.backward()
    assert torch.isfinite(fam.anchor(3).grad).all()
    # moving the vertex off the hull by h along a unit normal gives V = (area) h / 3
    normal = torch.randn(50)
    e = torch.stack([fam.anchor(j).detach() - fam.anchor(0).detach() for j in (1, 2)]).double()
    n64 = normal.double() - e.T @ torch.linalg.solve(e @ e.T, e @ normal.double())
    n64 = n64 / n64.norm()
    with torch.no_grad():
        fam.anchor(3).add_(0.2 * n64.float())
    area = math.sqrt(3) / 4
    assert float(fam.volume().detach()) == pytest.approx(area * 0.2 / 3, rel=1e-4)


def test_dirichlet_samples_lie_in_the_hull_and_average_to_the_centroid():
    torch.manual_seed(0)
    pts = [{"a": torch.randn(4, 3), "b": torch.randn(5)} for _ in range(4)]
    fam = Simplex(pts)
    c = fam.sample(40000, seed=3)
    assert (c >= 0).all() and torch.allclose(c.sum(1), torch.ones(40000, dtype=torch.float64))
    assert torch.allclose(c.mean(0), torch.full((4,), 0.25, dtype=torch.float64), atol=5e-3)
    # Dirichlet(1, 1, 1, 1): Var c_j = (k - 1) / (k^2 (k + 1)) = 3 / 80 (a normalised uniform would give less)
    assert torch.allclose(c.var(0), torch.full((4,), 3 / 80, dtype=torch.float64), atol=2e-3)
    # the points are the same convex combinations of the vertices
    w = torch.stack([sp.flatten(p) for p in pts])
    assert torch.allclose(fam.flat(c[:50]), c[:50].float() @ w, atol=1e-5)
    assert torch.equal(fam.sample(7, seed=5), fam.sample(7, seed=5))
    assert not torch.equal(fam.sample(7, seed=5), fam.sample(7, seed=6))


def test_complex_samples_use_one_simplex_and_its_volume_is_the_sum_over_simplices():
    torch.manual_seed(0)
    pts = [{"w": torch.randn(30)} for _ in range(5)]
    simplices = [(0, 1, 2), (2, 3, 4), (0, 3)]
    fam = Simplex(pts, simplices)
    rows = torch.stack([p["w"] for p in pts]).double()
    each = [float(volume_squared(rows[list(s)]).sqrt()) for s in simplices]
    assert float(fam.volume()) == pytest.approx(sum(each), rel=1e-6)
    assert float(fam.log_volume()) == pytest.approx(math.log(sum(each)), rel=1e-6)
    assert fam.volumes().tolist() == pytest.approx(each, rel=1e-6)
    c = fam.sample(3000, seed=1)
    support = [tuple(torch.nonzero(row).reshape(-1).tolist()) for row in c]
    assert set(support) <= set(simplices)
    counts = [support.count(s) for s in simplices]
    assert min(counts) > 800  # uniform over simplices
    by_volume = fam.sample(6000, seed=2, by="volume")
    frac = [
        sum(1 for row in by_volume if tuple(torch.nonzero(row).reshape(-1).tolist()) == s) / 6000 for s in simplices
    ]
    assert frac == pytest.approx([v / sum(each) for v in each], abs=0.03)
    with pytest.raises(UserError, match="every vertex"):
        Simplex(pts, [(0, 1)])


def test_training_volume_term_and_its_gradient_cover_every_simplex_of_the_complex():
    """The SPRO term log sum_s sqrt(V_s^2 + eps) with a trainable vertex (the training path: cached frozen Gram,
    products in float32) against float64 autograd over each simplex's own Cayley-Menger volume."""
    torch.manual_seed(1)
    D = 4000
    frozen = [{"w": (5.0 + torch.randn(D)).float()} for _ in range(3)]  # far from the origin, as weights are
    fam = Simplex(frozen, [(0,), (1,), (2,)]).add_vertex()  # (0, 3), (1, 3), (2, 3)
    fam = Simplex(fam.vertices(), [(0, 1, 3), (1, 2, 3), (0, 2)], trainable=[False] * 3 + [True])
    with torch.no_grad():
        fam.anchor(3).add_(0.3 * torch.randn(D))
    eps = 1e-4
    term = fam.log_volume(eps)
    term.backward()
    rows = torch.stack([p["w"].double() for p in frozen])
    v = fam.anchor(3).detach().double().requires_grad_()
    allv = torch.cat([rows, v[None]])
    ref = torch.log(sum(torch.sqrt(volume_squared(allv[list(s)]) + eps) for s in fam.simplices))
    ref.backward()
    assert float(term.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(fam.anchor(3).grad.double(), v.grad, rtol=1e-3, atol=1e-6 * float(v.grad.abs().max()))
    # dropping a simplex changes the term: every simplex counts, not only the first
    first = torch.log(torch.sqrt(volume_squared(allv[list(fam.simplices[0])]) + eps))
    assert abs(float(first.detach()) - float(ref.detach())) > 0.1


@pytest.mark.parametrize(
    "shape",
    [
        "edge at the centroid",
        "edge",
        "triangle + 1 at the centroid",
        "tetrahedron",
        "complex of 3 modes",
        "complex, 2 added",
        "5-simplex",
    ],
)
def test_volume_step_adds_autograds_gradient_of_the_volume_term(shape):
    """`Simplex.volume_step` (the closed-form derivative SPRO uses) against autograd through `log_volume`:
    the same log-volume and the same gradient on the trainable vertices, also at a degenerate simplex
    (a new vertex at the centroid), for complexes and for determinants of every size path (k = 1, 2, >= 3)."""
    g = torch.Generator().manual_seed(4)
    pts = [{"w": torch.randn(40, generator=g, dtype=torch.float64)} for _ in range(5)]

    def moved(fam, j):
        with torch.no_grad():
            fam.anchor(j).add_(torch.randn(40, generator=g, dtype=torch.float64))
        return fam

    fam = {
        "edge at the centroid": lambda: Simplex(pts[:1], simplices=[(0,)]).add_vertex(),
        "edge": lambda: moved(Simplex(pts[:1], simplices=[(0,)]).add_vertex(), 1),
        "triangle + 1 at the centroid": lambda: Simplex(pts[:3], simplices=[(0, 1, 2)]).add_vertex(),
        "tetrahedron": lambda: moved(Simplex(pts[:3], simplices=[(0, 1, 2)]).add_vertex(), 3),
        "complex of 3 modes": lambda: moved(Simplex(pts[:3], simplices=[(0,), (1,), (2,)]).add_vertex(), 3),
        "complex, 2 added": lambda: moved(
            moved(Simplex(pts[:3], simplices=[(0,), (1,), (2,)]).add_vertex(), 3).add_vertex(), 4
        ),
        "5-simplex": lambda: moved(Simplex(pts, simplices=[(0, 1, 2, 3, 4)]).add_vertex(), 5),
    }[shape]()
    ws = [fam.anchor(j) for j, t in enumerate(fam.trainable) if t]
    ref = fam.log_volume(1e-4)
    (-1e-3 * ref).backward()
    grads = [w.grad.clone() for w in ws]
    for w in ws:
        w.grad = torch.ones_like(w)  # volume_step adds to a gradient already there
    got = fam.volume_step(1e-4, 1e-3)
    assert float(got) == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-12)
    for w, r in zip(ws, grads, strict=True):
        assert torch.allclose(w.grad - 1.0, r, rtol=1e-9, atol=1e-15)
    assert any(float(r.abs().max()) > 0 for r in grads) or shape.endswith("centroid")


def test_add_vertex_starts_at_the_centroid_and_freezes_the_older_vertices():
    torch.manual_seed(0)
    pts = [{"w": torch.randn(10), "b": torch.randn(2)} for _ in range(3)]
    fam = Simplex(pts, simplices=[(0,), (1,), (2,)])  # three modes, as a complex starts
    grown = fam.add_vertex()
    assert grown.simplices == ((0, 3), (1, 3), (2, 3))
    assert grown.trainable == (False, False, False, True)
    assert isinstance(grown.anchor(3), torch.nn.Parameter) and not grown.anchor(0).requires_grad
    centroid = torch.stack([sp.flatten(p) for p in pts]).mean(0)
    assert torch.allclose(grown.anchor(3).detach(), centroid, atol=1e-6)
    with torch.no_grad():
        grown.anchor(3).add_(torch.randn(12))  # trained away from the centroid
    again = grown.add_vertex()
    assert again.trainable == (False,) * 4 + (True,)
    assert torch.allclose(again.anchor(4).detach(), torch.stack([grown.anchor(j).detach() for j in range(4)]).mean(0))
    # the cached frozen part follows in-place changes of a frozen vertex
    with torch.no_grad():
        before = float(again.volume())
    with torch.no_grad():
        again.anchor(0).mul_(2.0)
        rows = again.matrix().double()
        after = float(again.volume())
    assert after == pytest.approx(sum(float(volume_squared(rows[list(s)]).sqrt()) for s in again.simplices), rel=1e-6)
    assert after != pytest.approx(before)


def _digits_mlp(split, seed, width=16):
    torch.manual_seed(seed)
    return build_model("mlp", split.input_shape, split.num_classes, depth=1, width=width)


@pytest.fixture(scope="module")
def modes(digits):
    out = []
    for seed in (0, 1):
        m = _digits_mlp(digits, seed)
        train(m, digits, TrainConfig(epochs=3, lr=0.05, batch_size=64, seed=seed), progress=False)
        out.append(m)
    return out


def test_spro_epoch_matches_a_hand_written_loop(digits, modes):
    """One stage, one epoch: the new vertex starts at the mode (the centroid of one vertex), every
    minibatch draws S Dirichlet points and minimises the MEAN loss minus lambda log(sqrt(V^2 + eps)), with
    SGD weight decay on the vertex."""
    x, y = digits.train[0][:300], digits.train[1][:300]
    data = {"train": (x, y)}
    lr, lam, eps, wd, S, bs, seed = 0.05, 0.01, 1e-4, 5e-4, 3, 64, 4
    run = train_simplex(
        modes[0],
        [modes[0]],
        data,
        vertices=1,
        epochs=1,
        lr=lr,
        lam=lam,
        samples=S,
        wd=wd,
        batch_size=bs,
        eps=eps,
        seed=seed,
        schedule="constant",
        progress=False,
    )
    space = sp.WeightSpace(modes[0])
    w0 = space.flatten(space.point(modes[0])).detach()
    v = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([v], lr=lr, momentum=0.9, weight_decay=wd)
    order = epoch_order(x.shape[0], seed, 0)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 0 + 7_919)
    net = build_model("mlp", digits.input_shape, 10, depth=1, width=16)
    for it in range(math.ceil(x.shape[0] / bs)):
        idx = order[it * bs : (it + 1) * bs]
        u = torch.rand(S, 2, generator=gen, dtype=torch.float64)  # the family's Dirichlet draw, by hand
        c = -torch.log1p(-u)
        c = (c / c.sum(1, keepdim=True)).float()
        losses = []
        for s in range(S):
            w = c[s, 0] * w0 + c[s, 1] * v
            p = space.unflatten(w)
            out = torch.func.functional_call(net, p, (x[idx],))
            losses.append(F.cross_entropy(out, y[idx]))
        vol_sq = ((v.double() - w0.double()) ** 2).sum()  # a segment: V = its length
        loss = sum(losses) / S - lam * 0.5 * torch.log(vol_sq + eps).float()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(run.family.anchor(1), v.detach(), atol=2e-5), (run.family.anchor(1) - v).abs().max()
    assert torch.equal(run.family.anchor(0), w0)  # the mode never moves


def test_spro_grows_a_low_loss_simplex_and_resumes_exactly(digits, modes, tmp_path):
    kw = dict(vertices=2, epochs=2, lr=0.05, lam=0.05, samples=2, batch_size=64, seed=1, progress=False)
    full = train_simplex(modes[0], [modes[0]], digits, **kw)
    assert full.family.n_vertices == 3 and full.family.simplices == ((0, 1, 2),)
    assert [h["vertex"] for h in full.history] == [1, 1, 2, 2]
    flat = train_simplex(modes[0], [modes[0]], digits, **{**kw, "lam": 0.0})
    assert float(full.family.volume()) > 2 * float(flat.family.volume())  # the volume term widens the simplex
    ev = Evaluator(modes[0], {"train": digits.train, "test": digits.test}, metrics=("loss", "error"))
    res = evaluate_simplex(full.family, ev, n_samples=12, seed=0)
    s = res.summary()
    assert s["train_error"]["max"] < 0.2 and res.samples.values.shape == (12, 4)
    assert s["train_loss"]["vertices"][0] == pytest.approx(float(ev([full.family.vertex(0)]).row(0)["train_loss"]))
    # interrupted after 1 and after 3 of the 4 epochs, resumed: the same vertices
    ck = tmp_path / "s.safetensors"
    train_simplex(modes[0], [modes[0]], digits, checkpoint=ck, stop_after=1, **kw)
    part, meta = load_simplex(ck)
    assert part.n_vertices == 2 and meta["stage"] == 1 and meta["epoch"] == 1
    train_simplex(modes[0], [modes[0]], digits, checkpoint=ck, stop_after=3, **kw)
    resumed = train_simplex(modes[0], [modes[0]], digits, checkpoint=ck, **kw)
    for j in range(3):
        assert torch.allclose(resumed.family.anchor(j), full.family.anchor(j), atol=1e-6)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])
    with pytest.raises(UserError, match="other settings"):
        train_simplex(modes[0], [modes[0]], digits, checkpoint=ck, **{**kw, "lam": 0.5})


def test_complex_joins_modes_through_shared_vertices_with_buffers(digits, tmp_path):
    torch.manual_seed(0)
    nets = [build_model("mlp", digits.input_shape, 10, depth=1, width=8, norm="bn") for _ in range(2)]
    for i, n in enumerate(nets):
        train(n, digits, TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=i), progress=False)
    run = train_simplex(
        nets[0],
        nets,
        digits,
        vertices=1,
        epochs=1,
        lr=0.02,
        lam=0.01,
        samples=2,
        batch_size=128,
        progress=False,
        checkpoint=tmp_path / "c.safetensors",
    )
    fam = run.family
    assert fam.simplices == ((0, 2), (1, 2)) and fam.carries_buffers
    # the models' own points carry their own statistics; the connector the mean of both
    b0 = fam.buffers_at(fam.vertex_coords(0))
    assert torch.equal(b0["norm0.running_mean"], nets[0].norm0.running_mean)
    bc = fam.buffers_at(fam.vertex_coords(2))
    assert torch.allclose(bc["norm0.running_var"], (nets[0].norm0.running_var + nets[1].norm0.running_var) / 2)
    loaded, _ = load_simplex(tmp_path / "c.safetensors")
    assert loaded.simplices == fam.simplices and loaded.carries_buffers
    assert torch.equal(loaded.anchor(2).detach(), fam.anchor(2).detach())
    # save / load keeps everything of a frozen family
    save_simplex(fam, tmp_path / "f.safetensors", {"x": 1})
    again, meta = load_simplex(tmp_path / "f.safetensors")
    assert meta["x"] == 1 and again.trainable == (False,) * 3
    assert float(again.volume()) == pytest.approx(float(fam.volume()))


def test_espro_ensembles_every_simplex_and_records_its_budget(digits, modes, tmp_path):
    settings = dict(vertices=1, members=3, epochs=1, mode_epochs=3, lr=0.05, lam=0.01, samples=1, batch_size=64)
    res = espro(modes[0], modes, digits, checkpoint_dir=tmp_path, progress=False, **settings)
    assert res.budget["epochs"] == 2 * 3 + 2 * 1 and res.budget["members"] == 6
    assert [c["simplices"] for c in res.curve] == [1, 2] and res.ensemble == res.curve[-1]
    assert (tmp_path / "simplex-00.safetensors").exists() and (tmp_path / "simplex-01.safetensors").exists()
    # recomputed from the members' points: the same ensemble
    ev = Evaluator(modes[0], {"test": digits.test}, metrics=("loss",))
    probs = []
    for i, run in enumerate(res.runs):
        for c in run.family.sample(3, seed=i):
            probs.append(predict_proba(ev, run.family(c), "test"))
    assert ensemble_metrics(probs, digits.test[1])["nll"] == pytest.approx(res.ensemble["nll"], rel=1e-6)
    # a rerun finds the finished simplices and trains nothing
    again = espro(modes[0], modes, digits, checkpoint_dir=tmp_path, progress=False, **settings)
    assert again.ensemble["nll"] == pytest.approx(res.ensemble["nll"], rel=1e-9)


def test_errors(digits, modes):
    with pytest.raises(UserError, match="at least 1"):
        train_simplex(modes[0], [modes[0]], digits, vertices=0)
    with pytest.raises(UserError, match="at least one trained mode"):
        train_simplex(modes[0], [], digits)
    with pytest.raises(UserError, match="distinct vertex"):
        Simplex([{"w": torch.zeros(2)}] * 2, [(0, 0, 1)])
    with pytest.raises(UserError, match="schedule"):
        train_simplex(modes[0], [modes[0]], digits, schedule="linear")


@pytest.mark.slow
def test_cli_simplex_complex_and_espro(tmp_path, capsys):
    ckpts = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        code, _, err = run_cli(
            ["train", "--out", out, "--epochs", "2", "--model-args", "depth=1,width=16", "--seed", seed, "--json"],
            capsys,
        )
        assert code == 0, err
        ckpts.append(out / "final.safetensors")
    sdir = tmp_path / "simplex"
    argv = [
        "simplex",
        ckpts[0],
        "--out",
        sdir,
        "--vertices",
        "2",
        "--epochs",
        "1",
        "--samples",
        "2",
        "--lr",
        "0.05",
        "--members",
        "3",
        "--eval-samples",
        "4",
        "--plane-points",
        "4",
        "--json",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["budget"] == {"epochs": 4.0, "mode_epochs": [2.0], "simplex_epochs": 2.0}
    assert len(rep["summary"]["test_error"]["vertices"]) == 3 and rep["ensemble"]["members"] == 3
    for name in ("simplex.safetensors", "simplex.json", "plane.png"):
        assert (sdir / name).exists(), name
    code, out2, err = run_cli(argv, capsys)  # finished: resumes with nothing to train, the same simplex
    assert code == 0, err
    again = json.loads(out2)["summary"]["test_loss"]  # (the evaluator may pick another, equivalent path by timing)
    assert again["vertices"] == pytest.approx(rep["summary"]["test_loss"]["vertices"], rel=1e-6)
    assert again["mean"] == pytest.approx(rep["summary"]["test_loss"]["mean"], rel=1e-6)
    code, out, err = run_cli(
        [
            "simplex",
            *ckpts,
            "--out",
            tmp_path / "cx",
            "--vertices",
            "1",
            "--epochs",
            "1",
            "--eval-samples",
            "3",
            "--members",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "cx" / "simplex.json").read_text())["simplices"] == [[0, 2], [1, 2]]
    code, out, err = run_cli(
        [
            "simplex",
            *ckpts,
            "--each",
            "--out",
            tmp_path / "es",
            "--vertices",
            "1",
            "--epochs",
            "1",
            "--members",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["budget"]["epochs"] == 2 * 2 + 2 * 1 and [c["members"] for c in rep["curve"]] == [2, 4]
    for argv, pattern in (
        (["simplex", ckpts[0], "--out", tmp_path / "x", "--vertices", "0"], "--vertices"),
        (["simplex", ckpts[0], ckpts[0], "--out", tmp_path / "x"], "twice"),
        (["simplex", tmp_path / "nope.safetensors", "--out", tmp_path / "x"], "not found"),
        (["simplex", ckpts[0], "--out", tmp_path / "x", "--bn", "fresh"], "--bn"),
        (["simplex", ckpts[0], "--out", tmp_path / "x", "--lr", "inf"], "--lr"),
        (["simplex", ckpts[0], "--out", tmp_path / "x", "--lam", "nan"], "--lam"),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and pattern in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()

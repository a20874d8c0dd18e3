"""Tests of modescape.sharpness: exact values on quadratics, Dinh et al.'s reparametrisation invariance."""

import math

import pytest
import torch
from torch import nn

from modescape import curvature as cv
from modescape import sharpness as sh
from modescape.evaluate import Evaluator
from modescape.zoo import build_model


def diag_quadratic(spectrum):
    """Mean loss exactly 0.5 sum_i l_i w_i^2 (l_i > 0), minimum at w = 0 (see test_curvature.quadratic)."""
    P = spectrum.numel()
    X = torch.diag((P * spectrum).sqrt())
    y = torch.ones(P, dtype=torch.float64)
    model = nn.Linear(P, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    loss = lambda out, t: 0.5 * t * out.squeeze(-1) ** 2  # noqa: E731
    return Evaluator(model, (X, y), loss=loss, metrics=("loss",), batch_size=4)


SPEC = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1], dtype=torch.float64)


def test_worst_case_linf_reaches_the_corner_exactly():
    t = sh.target(diag_quadratic(SPEC))
    rho = 0.3
    r = sh.worst_case(t, rho, "linf", "plain", steps=8)
    assert abs(r["value"] - 0.5 * rho**2 * float(SPEC.sum())) < 1e-12


def test_worst_case_l2_is_bounded_by_and_approaches_the_top_eigenvalue():
    t = sh.target(diag_quadratic(SPEC))
    rho = 0.5
    bound = 0.5 * float(SPEC.max()) * rho**2
    r = sh.worst_case(t, rho, "l2", "plain", steps=60)
    assert r["value"] <= bound * (1 + 1e-12)
    assert r["value"] >= 0.95 * bound


def test_keskar_box_on_a_quadratic():
    t = sh.target(diag_quadratic(SPEC))
    eps = 0.01  # at w = 0 the box is |delta_i| <= eps * (0 + 1)
    r = sh.keskar(t, epsilon=eps, steps=5)
    assert abs(r["value"] - 100 * 0.5 * eps**2 * float(SPEC.sum())) < 1e-10


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_average_case_matches_the_ball_second_moment(norm):
    t = sh.target(diag_quadratic(SPEC))
    rho, n = 0.4, 400
    P = SPEC.numel()
    # E[u_i^2]: rho^2 / 3 in the cube [-rho, rho]^P, rho^2 / (P + 2) in the L2 ball
    second = rho**2 / 3 if norm == "linf" else rho**2 / (P + 2)
    want = 0.5 * float(SPEC.sum()) * second
    r = sh.average_case(t, rho, norm, "plain", samples=n, seed=3)
    assert abs(r["value"] - want) < 4 * r["stderr"]
    assert r["stderr"] < 0.1 * want


def test_uniform_ball_samples_stay_inside():
    t = sh.target(diag_quadratic(SPEC))
    for u in sh.uniform_ball(t, 0.7, "l2", 20, 0):
        assert float(u["weight"].norm()) <= 0.7 + 1e-12
    for u in sh.uniform_ball(t, 0.7, "linf", 20, 0):
        assert float(u["weight"].abs().max()) <= 0.7


def test_pac_bayes_sigma_bisection_hits_the_target():
    t = sh.target(diag_quadratic(SPEC))
    target = 0.05
    r = sh.pac_bayes_sigma(t, magnitude=False, metric="loss", target_drop=target, tol=1e-3, depth=40, samples=400)
    assert abs(r["drift"] - target) < 1e-3
    # E[0.5 sum l_i (sigma xi_i)^2] = 0.5 sigma^2 tr(A): the Monte Carlo answer is near the analytic one
    analytic = math.sqrt(2 * target / float(SPEC.sum()))
    assert abs(r["sigma"] - analytic) < 0.15 * analytic
    assert abs(r["flatness"] - 1 / r["sigma"] ** 2) < 1e-9


def test_magnitude_aware_sigma_scales_noise_by_the_weights():
    ev = diag_quadratic(SPEC)
    w0 = torch.linspace(0.2, 1.2, SPEC.numel(), dtype=torch.float64)
    t = sh.target(ev, None, {"weight": w0.reshape(1, -1)})
    eps, target = 1e-3, 0.05
    r = sh.pac_bayes_sigma(
        t, magnitude=True, eps=eps, metric="loss", target_drop=target, tol=1e-3, depth=40, samples=400
    )
    # drift = 0.5 sum_i l_i (sigma^2 w_i^2 + eps^2) in expectation
    analytic = math.sqrt((2 * target - float((SPEC * eps**2).sum())) / float((SPEC * w0**2).sum()))
    assert abs(r["sigma"] - analytic) < 0.15 * analytic
    # at w = 0 only eps perturbs: no sigma reaches the target, the bisection runs to the upper end
    r0 = sh.pac_bayes_sigma(
        sh.target(ev), magnitude=True, eps=eps, metric="loss", target_drop=target, depth=10, samples=4
    )
    assert r0["sigma"] > 1.99 and r0["drift"] < target


# -- Dinh et al. (2017): a function-preserving rescaling --------------------------------------------


@pytest.fixture(scope="module")
def relu_net():
    torch.manual_seed(0)
    m = build_model("mlp", (6,), 3, depth=2, width=8).double()
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(60, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (60,), generator=g)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(100):  # a few steps towards a minimum
        opt.zero_grad()
        nn.functional.cross_entropy(m(X), y).backward()
        opt.step()
    ev = Evaluator(m, (X, y))
    return ev, sh.rescale_layers(ev.point0, "fc0", "fc1", 4.0)


def test_rescaling_preserves_the_function(relu_net):
    ev, p2 = relu_net
    X = ev.sources[""].batches[0][0]
    a = ev.forward(ev.point0, ev.buffers, X)
    b = ev.forward(p2, ev.buffers, X)
    assert float((a - b).abs().max()) < 1e-12


def test_plain_measures_change_adaptive_ones_do_not(relu_net):
    ev, p2 = relu_net
    H1, H2 = cv.Hessian(ev, None, ev.point0).dense(), cv.Hessian(ev, None, p2).dense()
    lam1, lam2 = float(torch.linalg.eigvalsh(H1)[-1]), float(torch.linalg.eigvalsh(H2)[-1])
    assert abs(lam2 - lam1) > 0.2 * lam1  # plain: the top eigenvalue and the trace move
    assert abs(float(H2.trace() - H1.trace())) > 0.2 * float(H1.trace())
    t1, t2 = sh.target(ev, None, ev.point0), sh.target(ev, None, p2)
    w1, w2 = sh.worst_case(t1, 0.05, "l2", "plain", 5), sh.worst_case(t2, 0.05, "l2", "plain", 5)
    assert abs(w2["value"] - w1["value"]) > 0.2 * w1["value"]
    for norm, rho in (("l2", 0.5), ("linf", 0.05)):
        a, b = sh.worst_case(t1, rho, norm, "adaptive", 5), sh.worst_case(t2, rho, norm, "adaptive", 5)
        assert abs(a["value"] - b["value"]) < 1e-6 * abs(a["value"])
        a, b = sh.average_case(t1, rho, norm, "adaptive", 8), sh.average_case(t2, rho, norm, "adaptive", 8)
        assert abs(a["value"] - b["value"]) < 1e-6 * abs(a["value"])
    a, b = sh.filter_sharpness(t1, 0.5, 7, 2), sh.filter_sharpness(t2, 0.5, 7, 2)
    assert abs(a["value"] - b["value"]) < 1e-6 * abs(a["value"])
    assert abs(a["curvature"] - b["curvature"]) < 1e-6 * abs(a["curvature"])


def test_filter_curvature_is_the_directional_second_derivative(relu_net):
    ev, _ = relu_net
    t = sh.target(ev)
    r = sh.filter_sharpness(t, 0.1, 3, 1, seed=7)
    from modescape.directions import random_direction

    d = random_direction(ev.point0, "filter", "biasbn", seed=7, space=ev.space)
    H = cv.Hessian(ev).dense()
    fd = ev.space.flatten(d)
    assert abs(r["curvature"] - float(fd @ H @ fd)) < 1e-8 * abs(float(fd @ H @ fd))


def test_measure_all_on_a_bn_mlp():
    torch.manual_seed(0)
    m = build_model("mlp", (4,), 3, depth=1, width=5, norm="bn").double()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g))
    opts = {k: {"samples": 4} for k in sh.MEASURES if "avg" in k}
    opts["pacbayes_mag"] = {"depth": 4, "samples": 3}
    opts["trace"] = {"max_samples": 20}
    out = sh.measure_all(m, data, options=opts)
    for name in sh.MEASURES:
        assert math.isfinite(out[name]), name
    assert out["loss"] > 0
    # the named set runs the measures with their documented defaults: the same numbers called directly
    t = sh.target(m, data)
    assert out["keskar"] == sh.keskar(t, **sh.DEFAULTS["keskar"])["value"]
    assert out["worst_l2"] == sh.worst_case(t, **sh.DEFAULTS["worst_l2"])["value"]
    assert out["loss"] == pytest.approx(float(sh.evaluate(t, [t.point])[0]), rel=1e-12)


# -- correlate and the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from modescape import io
    from modescape.zoo import load_dataset

    split = load_dataset("digits")
    root = tmp_path_factory.mktemp("runs")
    out = []
    for i, width in enumerate((3, 5, 8)):
        torch.manual_seed(i)
        m = build_model("mlp", split.input_shape, split.num_classes, depth=1, width=width)
        io.save_checkpoint(
            root / f"w{width}" / "final.safetensors", m, {"data": split.meta, "config": {"width": width}}
        )
        out.append(root / f"w{width}")
    return out


def test_correlate_table_taus_and_files(runs, tmp_path):
    from scipy.stats import kendalltau

    from modescape.correlate import correlate

    res = correlate(runs, measures=["lambda_max", "worst_l2"], n_train=60, options={"worst_l2": {"steps": 2}})
    assert len(res.rows) == 3
    from modescape import io
    from modescape.zoo import load_dataset

    X, y = load_dataset("digits").train
    for r, run in zip(res.rows, runs, strict=True):
        assert abs(r["gap"] - (r["test_error"] - r["train_error"])) < 1e-12
        model, _ = io.load_model(run / "final.safetensors")
        with torch.no_grad():  # the gap uses all training data, not the first n_train samples of the measures
            full = float((model.eval()(X).argmax(1) != y).double().mean())
        assert r["train_error"] == pytest.approx(full, abs=1e-12)
    for m in ("lambda_max", "worst_l2"):
        want = kendalltau([r[m] for r in res.rows], [r["gap"] for r in res.rows]).statistic
        assert res.tau[m][0] == pytest.approx(want)
    import csv
    import io as stringio

    table = list(csv.DictReader(stringio.StringIO(res.to_csv())))
    assert [row["run"] for row in table] == [str(r) for r in runs]
    for row, r in zip(table, res.rows, strict=True):
        assert float(row["gap"]) == r["gap"] and float(row["worst_l2"]) == r["worst_l2"]
    from modescape.plots import plot_correlation

    assert plot_correlation(res, tmp_path / "correlate.png").stat().st_size > 0


def test_correlate_default_measures_all_run(runs):
    """Every default measure runs through correlate (pacbayes_mag needs accuracy from its evaluator) and
    gives a finite value for every run."""
    import math

    from modescape.correlate import correlate
    from modescape.sharpness import MEASURES

    res = correlate(runs[:2], n_train=60)
    assert set(MEASURES) <= set(res.tau)
    assert all(math.isfinite(r[m]) for r in res.rows for m in MEASURES)


@pytest.mark.slow
def test_cli_hessian_and_sharpness(runs, tmp_path, capsys):
    import json

    from conftest import run_cli

    ckpt = runs[0] / "final.safetensors"
    code, out, err = run_cli(
        [
            "hessian",
            ckpt,
            "--top-k",
            "2",
            "--n-train",
            "50",
            "--trace",
            "--trace-method",
            "hutch++",
            "--density",
            "--steps",
            "10",
            "--probes",
            "2",
            "--out",
            tmp_path,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    g = res["groups"]["all"]
    from modescape import io
    from modescape.zoo import load_dataset

    model, _ = io.load_model(ckpt)
    X, y = load_dataset("digits").train
    want = cv.eigenvalues(model, (X[:50], y[:50]), k=2, tol=1e-4)
    assert g["eigenvalues"]["values"] == pytest.approx(want.values.tolist(), rel=1e-4)
    assert g["retained_graph"] == (g["hvp_method"] == "double-backward") and g["start"] == "gradient"
    assert (tmp_path / "density.png").exists() and (tmp_path / "hessian.json").exists()
    code, out, err = run_cli(
        ["hessian", ckpt, "--top-k", "2", "--n-train", "50", "--start", "random", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["groups"]["all"]["eigenvalues"]["values"] == pytest.approx(want.values.tolist(), rel=1e-4)
    code, out, err = run_cli(["hessian", ckpt, "--start", "ones"], capsys)
    assert code == 2 and "gradient or random" in err
    code, out, err = run_cli(["sharpness", ckpt, "--measures", "keskar,avg_linf", "--n-train", "50", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert set(rows[0]) >= {"keskar", "avg_linf", "loss"}
    code, out, err = run_cli(["hessian", ckpt, "--which", "biggest"], capsys)
    assert code == 2 and "largest" in err


@pytest.mark.slow
def test_cli_correlate_writes_table_json_and_figure(runs, tmp_path, capsys):
    """The command writes what the method returns (the method itself writes nothing): the CSV's gaps and
    measure values are the JSON's, and the figure exists."""
    import csv
    import json

    from conftest import run_cli

    code, out, err = run_cli(
        ["correlate", *runs, "--measures", "lambda_max", "--n-train", "60", "--out", tmp_path / "c", "--json"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    with open(tmp_path / "c" / "correlate.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["lambda_max"]) for r in table] == [r["lambda_max"] for r in report["runs"]]
    assert json.loads((tmp_path / "c" / "correlate.json").read_text())["kendall_tau"] == report["kendall_tau"]
    assert (tmp_path / "c" / "correlate.png").stat().st_size > 0
    code, out, err = run_cli(["correlate", *runs[:2], "--measures", "lambda_max", "--n-train", "60", "--json"], capsys)
    assert code == 0 and "files" not in json.loads(out), err  # no --out: nothing written

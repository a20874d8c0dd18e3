"""Tests of modescape.curvature against dense Hessians (float64) and quadratics with known spectra."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from modescape import curvature as cv
from modescape.errors import UserError
from modescape.evaluate import Evaluator
from modescape.zoo import build_model

N, D_IN, C = 50, 5, 3


def tiny_mlp(norm: str = "none", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model("mlp", (D_IN,), C, depth=2, width=6, norm=norm).double()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.3)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return m


def tiny_data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)


def dense_reference(model: nn.Module, data, train_bn: bool = False, names=None) -> torch.Tensor:
    """Hessian of the mean cross-entropy over all data in one batch, by torch.autograd.functional.hessian."""
    X, y = data
    params = dict(model.named_parameters())
    names = names or list(params)
    bufs = {k: v.clone() for k, v in model.named_buffers()}
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    mod = model.train() if train_bn else model.eval()
    for m in mod.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = not train_bn

    def f(flat):
        ps, o = {k: v.detach() for k, v in params.items()}, 0
        for n, s in zip(names, shapes, strict=True):
            ps[n] = flat[o : o + s.numel()].reshape(s)
            o += s.numel()
        return F.cross_entropy(functional_call(mod, (ps, bufs), (X,)), y)

    H = torch.autograd.functional.hessian(f, flat0, vectorize=True)
    model.eval()
    return H


def rel(a, b):
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max() / torch.as_tensor(b).abs().max())


@pytest.fixture(scope="module")
def bn_case():
    m, data = tiny_mlp("bn"), tiny_data()
    return m, data, dense_reference(m, data)


@pytest.fixture(scope="module")
def plain_case():
    m, data = tiny_mlp("none"), tiny_data()
    return m, data, dense_reference(m, data)


@pytest.mark.parametrize(
    "method,retain", [("double-backward", True), ("double-backward", False), ("forward-over-reverse", False)]
)
@pytest.mark.parametrize("case", ["bn_case", "plain_case"])
def test_dense_hessian_matches_autograd_with_unequal_batches(case, method, retain, request):
    m, data, ref = request.getfixturevalue(case)
    ev = Evaluator(m, data, batch_size=17)  # batches of 17, 17, 16
    H = cv.Hessian(ev, method=method, retain=retain)
    assert H.method == method and H.retained == retain
    v = torch.randn(ref.shape[0], 2, dtype=torch.float64)
    assert rel(torch.stack([H.matvec(v[:, 0]), H.matvec(v[:, 1])], 1), ref @ v) < 1e-10
    assert rel(H @ v[:, 0], ref @ v[:, 0]) < 1e-10  # the retained graph serves product after product
    # the vectorised path: a batched backward through the retained graph, else vmap of forward-over-reverse
    assert rel(H.dense(), ref) < 1e-10
    assert H.n_hvp == 3 + ref.shape[0]


def test_retained_graph_keeps_the_batches_when_bn_uses_batch_statistics():
    m, data = tiny_mlp("bn"), tiny_data()
    v = torch.randn(sum(p.numel() for p in m.parameters()), dtype=torch.float64)
    kept = cv.Hessian(m, data, bn="train", batch_size=17, retain=True)
    redone = cv.Hessian(m, data, bn="train", batch_size=17, retain=False, method="double-backward")
    merged = cv.Hessian(m, data, bn="train", batch_size=N)  # one batch: other batch statistics
    assert kept.retained and not redone.retained
    assert rel(kept @ v, redone @ v) < 1e-12
    assert rel(kept @ v, merged @ v) > 1e-3


def test_retained_graph_respects_its_memory_budget_and_can_be_released(plain_case):
    m, data, ref = plain_case
    v = torch.randn(ref.shape[0], dtype=torch.float64)
    assert cv.Hessian(m, data, batch_size=17, method="double-backward").retained  # fits the default budget
    H = cv.Hessian(m, data, batch_size=17, retain_mb=1e-3)  # 1 kB: too small, products recompute
    assert not H.retained and H.method in ("double-backward", "forward-over-reverse")
    assert rel(H @ v, ref @ v) < 1e-10
    H = cv.Hessian(m, data, batch_size=17, retain=True, retain_mb=1e-3)  # forced: the budget does not apply
    assert H.retained
    H.release()
    assert not H.retained and rel(H @ v, ref @ v) < 1e-10
    with pytest.raises(UserError, match="retain must be"):
        cv.Hessian(m, data, retain="always")


@pytest.mark.parametrize("retain", [True, False])
def test_gradient_is_the_whole_data_mean_gradient(bn_case, retain):
    m, data, _ = bn_case
    H = cv.Hessian(m, data, batch_size=17, retain=retain)
    X, y = data
    m.zero_grad()
    F.cross_entropy(m.eval()(X), y).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    m.zero_grad()
    assert rel(H.gradient(), ref) < 1e-12


def test_gradient_start_mixes_gradient_and_seeded_noise(plain_case):
    m, data, _ = plain_case
    H = cv.Hessian(m, data)
    g = H.gradient()
    v = cv.start_vector(H, "gradient", seed=3)
    r = cv.start_vector(H, "random", seed=3)
    assert abs(float(v.norm()) - 1) < 1e-12 and abs(float(r.norm()) - 1) < 1e-12
    expect = r + g / g.norm()
    assert rel(v, expect / expect.norm()) < 1e-12  # r / |r| + g / |g|, normalised; r fixed by the seed
    assert not torch.allclose(cv.start_vector(H, "random", seed=4), r)
    with pytest.raises(UserError, match="unknown start"):
        cv.start_vector(H, "ones")


def test_batch_weighting_equals_one_full_batch(bn_case):
    m, data, _ = bn_case
    v = torch.randn(sum(p.numel() for p in m.parameters()), dtype=torch.float64)
    many = cv.hvp(m, data, None, v, batch_size=7)  # 8 batches: 7 of 7, one of 1
    one = cv.hvp(m, data, None, v, batch_size=N)
    assert rel(many, one) < 1e-12


def test_auto_measures_and_caches_the_method(plain_case):
    m, data, _ = plain_case
    ev = Evaluator(m, data)
    H = cv.Hessian(ev)  # the graph fits: the retained product is timed against a recomputed jvp
    assert set(H.timings) == {"double-backward", "forward-over-reverse"}
    assert H.method == min(H.timings, key=H.timings.get)
    assert H.retained == (H.method == "double-backward")
    again = cv.Hessian(ev)  # a second operator on the evaluator reuses the measurement
    assert again.timings == {} and again.method == H.method and again.retained == H.retained
    H = cv.Hessian(ev, retain=False)
    assert H.method in ("double-backward", "forward-over-reverse")
    assert set(H.timings) == {"double-backward", "forward-over-reverse"}
    assert cv.Hessian(ev, retain=False).timings == {}  # a second operator on the evaluator reuses the measurement


def test_train_mode_bn_policy_differentiates_batch_statistics():
    m, data = tiny_mlp("bn"), tiny_data()
    ref = dense_reference(m, data, train_bn=True)
    H = cv.Hessian(m, data, bn="train", batch_size=N)
    v = torch.randn(ref.shape[0], dtype=torch.float64)
    assert rel(H.matvec(v), ref @ v) < 1e-10
    assert rel(H.dense(), ref) < 1e-10
    assert rel(cv.Hessian(m, data, batch_size=N).matvec(v), ref @ v) > 1e-3  # running policy: another function


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
@pytest.mark.parametrize("case", ["bn_case", "plain_case"])
def test_lanczos_eigenvalues_match_eigh(case, which, request):
    m, data, ref = request.getfixturevalue(case)
    lam, vecs = torch.linalg.eigh(ref)
    order = {
        "largest": lam.argsort(descending=True),
        "smallest": lam.argsort(),
        "magnitude": lam.abs().argsort(descending=True),
    }[which]
    r = cv.eigenvalues(m, data, k=3, which=which, tol=1e-8)
    assert bool(r.converged.all())
    assert rel(r.values, lam[order[:3]]) < 1e-4
    # Ritz vectors are eigenvectors: ||H y - lambda y|| small
    for val, y in zip(r.values, r.vectors, strict=True):
        assert float((ref @ y - val * y).norm()) < 1e-4 * float(lam.abs().max())
    assert r.n_hvp < ref.shape[0]  # far fewer products than a dense Hessian


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_power_iteration_names_its_end_correctly(plain_case, which):
    m, data, ref = plain_case
    lam = torch.linalg.eigvalsh(ref)
    want = {"largest": lam[-1], "smallest": lam[0], "magnitude": lam[lam.abs().argmax()]}[which]
    r = cv.eigenvalues(m, data, k=1, which=which, method="power", tol=1e-5, max_iter=3000)
    assert abs(float(r.values[0]) - float(want)) < 1e-4 * float(lam.abs().max())


def test_extreme_eigenvalues_from_one_run(bn_case):
    m, data, ref = bn_case
    lam = torch.linalg.eigvalsh(ref)
    lo, hi, n = cv.extreme_eigenvalues(m, data, tol=1e-8)
    assert abs(lo - float(lam[0])) < 1e-4 * float(lam.abs().max())
    assert abs(hi - float(lam[-1])) < 1e-4 * float(lam.abs().max())
    assert n < ref.shape[0]


def test_trace_hutchpp_full_sketch_is_exact(bn_case):
    m, data, ref = bn_case
    r = cv.trace(m, data, method="hutch++", sketch=ref.shape[0])
    assert abs(r.estimate - float(ref.trace())) < 1e-4 * abs(float(ref.trace()))


def test_hutchinson_with_given_probes_is_the_probe_mean(plain_case):
    m, data, ref = plain_case
    z = torch.randint(0, 2, (7, ref.shape[0]), generator=torch.Generator().manual_seed(3)).double() * 2 - 1
    r = cv.trace(m, data, probes=z)
    want = torch.einsum("ip,pq,iq->i", z, ref, z)
    assert abs(r.estimate - float(want.mean())) < 1e-10 * float(want.abs().max())
    assert abs(r.stderr - float(want.std()) / math.sqrt(7)) < 1e-8 * float(want.abs().max())


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_stopping_rule_stops_and_is_honest(plain_case, method):
    m, data, ref = plain_case
    r = cv.trace(m, data, method=method, rtol=0.1, min_samples=10, max_samples=2000, sketch=10, seed=1)
    assert r.converged and 10 <= r.n_samples < 2000
    assert r.stderr <= 0.1 * abs(r.estimate)
    assert abs(r.estimate - float(ref.trace())) < 5 * r.stderr + 1e-12
    never = cv.trace(m, data, method=method, rtol=1e-12, min_samples=5, max_samples=15, sketch=10)
    assert not never.converged and never.n_samples == 15


def test_lanczos_stops_on_ritz_residuals(plain_case):
    m, data, ref = plain_case
    loose = cv.eigenvalues(m, data, k=1, tol=1e-2, max_iter=ref.shape[0])
    tight = cv.eigenvalues(m, data, k=1, tol=1e-10, max_iter=ref.shape[0])
    assert loose.converged.all() and tight.converged.all()
    assert loose.iterations < tight.iterations < ref.shape[0]
    capped = cv.eigenvalues(m, data, k=1, tol=1e-14, max_iter=3)
    assert capped.iterations == 3 and not bool(capped.converged.all())


def test_density_moments_match_dense_quadrature(bn_case):
    m, data, ref = bn_case
    P = ref.shape[0]
    z = torch.randint(0, 2, (3, P), generator=torch.Generator().manual_seed(5)).double() * 2 - 1
    d = cv.density(m, data, probes=z, steps=30)
    for p in (1, 2, 3):
        want = torch.stack([v @ torch.linalg.matrix_power(ref, p) @ v / (v @ v) for v in z])
        assert rel(d.probe_moments(p), want) < 1e-4
    # the smoothed density integrates to one
    assert abs(float(torch.trapezoid(d.values, d.grid)) - 1.0) < 1e-3
    # with Rademacher probes the first moment is the Hutchinson trace of the same probes
    assert abs(d.trace - cv.trace(m, data, probes=z).estimate) < 1e-6 * abs(float(ref.trace())) + 1e-9


def test_density_plot_writes_a_file(plain_case, tmp_path):
    m, data, _ = plain_case
    d = cv.density(m, data, n_probes=2, steps=10)
    from modescape.plots import plot_density

    plot_density(d, tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 1000


def test_blockwise_blocks_are_diagonal_blocks(plain_case):
    m, data, ref = plain_case
    names = [n for n, _ in m.named_parameters()]
    sizes = [p.numel() for p in m.parameters()]
    out = cv.blockwise(cv.eigenvalues, m, data, by="layer", k=1, tol=1e-9)
    assert set(out) == {"fc0", "fc1", "out"}
    offs = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist(), strict=False))  # starts: one more than names
    for layer, r in out.items():
        idx = torch.cat(
            [torch.arange(offs[n], offs[n] + s) for n, s in zip(names, sizes, strict=True) if n.startswith(layer + ".")]
        )
        block = ref[idx][:, idx]
        assert abs(float(r.values[0]) - float(torch.linalg.eigvalsh(block)[-1])) < 1e-4 * float(block.abs().max())
    tr = cv.blockwise(cv.trace, m, data, by="block", method="hutch++", sketch=200)
    assert set(tr) == {"fc0", "fc1", "out"}


def test_parameter_filters(bn_case):
    m, data, ref = bn_case
    H = cv.Hessian(m, data, params="weights")
    assert H.names == ("fc0.weight", "fc1.weight", "out.weight")
    names = [n for n, _ in m.named_parameters()]
    sizes = [p.numel() for p in m.parameters()]
    start = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist(), strict=False))  # starts: one more than names
    idx = torch.cat([torch.arange(start[n], start[n] + m.get_parameter(n).numel()) for n in H.names])
    assert rel(H.dense(), ref[idx][:, idx]) < 1e-10
    assert cv.Hessian(m, data, params="norm0").names == ("norm0.weight", "norm0.bias")
    assert cv.Hessian(m, data, params="norms").names == ("norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias")
    with pytest.raises(UserError, match="selects no parameters"):
        cv.Hessian(m, data, params="conv9")


# -- a quadratic with a known spectrum ------------------------------------------------------------


def quadratic(spectrum: torch.Tensor, seed: int = 0):
    """A model and data whose mean loss is exactly 0.5 w^T A w with A = Q diag(spectrum) Q^T.

    Linear(P -> 1) without bias, per-sample loss 0.5 * y_i * (x_i . w)^2 with x_i = sqrt(P |l_i|) q_i
    and y_i = sign(l_i); evaluated at w = 0 (any point gives the same Hessian).
    """
    P = spectrum.numel()
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    X = (Q * (P * spectrum.abs()).sqrt()).T.contiguous()  # rows x_i = sqrt(P|l_i|) q_i
    y = spectrum.sign()
    model = nn.Linear(P, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    loss = lambda out, t: 0.5 * t * out.squeeze(-1) ** 2  # noqa: E731
    return Evaluator(model, (X, y), loss=loss, metrics=("loss",), batch_size=3), Q @ torch.diag(spectrum) @ Q.T


def test_quadratic_known_spectrum_exact():
    spectrum = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, -0.25, -1.5, 0.1], dtype=torch.float64)
    ev, A = quadratic(spectrum)
    H = cv.Hessian(ev)
    assert rel(H.dense(), A) < 1e-12
    s = spectrum.sort().values
    assert rel(cv.eigenvalues(ev, k=3, which="largest", tol=1e-10).values, s.flip(0)[:3]) < 1e-10
    assert rel(cv.eigenvalues(ev, k=2, which="smallest", tol=1e-10).values, s[:2]) < 1e-10
    assert rel(cv.eigenvalues(ev, k=2, which="magnitude", tol=1e-10).values, torch.tensor([5.0, 3.0])) < 1e-10
    lo, hi, _ = cv.extreme_eigenvalues(ev, tol=1e-10)
    assert abs(lo + 1.5) < 1e-10 and abs(hi - 5.0) < 1e-10
    assert abs(cv.trace(ev, method="hutch++", sketch=8).estimate - float(spectrum.sum())) < 1e-10
    z = torch.randint(0, 2, (2, 8), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    d = cv.density(ev, probes=z, steps=8)
    for p in (1, 2, 4):  # a Krylov space of the full dimension: every probe's quadrature is exact
        want = torch.stack([v @ torch.linalg.matrix_power(A, p) @ v / 8 for v in z])
        assert rel(d.probe_moments(p), want) < 1e-10


def test_dense_operator_lanczos_on_a_plain_matrix():
    spectrum = torch.linspace(-2, 10, 40, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    A = Q @ torch.diag(spectrum) @ Q.T
    lz = cv.lanczos(lambda v: A @ v, 40, k=2, which="largest", tol=1e-10, max_iter=40)
    assert isinstance(lz, cv.LanczosResult)
    m, V = lz.steps, lz.V
    assert m <= 40 and abs(float(lz.theta.max()) - 10.0) < 1e-9
    assert float((V @ V.T - torch.eye(m, dtype=torch.float64)).abs().max()) < 1e-10  # full reorthogonalisation
    assert lz.theta.shape == (m,) and lz.S.shape == (m, m) and V.shape == (m, 40)
    d = lz.to_dict()
    assert d["steps"] == m and d["theta"] == lz.theta.tolist() and "V" not in d and isinstance(d["beta"], float)


def test_blocked_trace_equals_one_probe_at_a_time(plain_case):
    m, data, ref = plain_case
    ev = Evaluator(m, data, batch_size=17)
    z = torch.randint(0, 2, (6, ref.shape[0]), generator=torch.Generator().manual_seed(9)).double() * 2 - 1
    one, blocked = cv.trace(ev, probes=z), cv.trace(ev, probes=z, block=4)
    assert abs(one.estimate - blocked.estimate) < 1e-10 * abs(one.estimate)
    a = cv.trace(ev, method="hutch++", sketch=5, rtol=0.1, seed=2)
    b = cv.trace(ev, method="hutch++", sketch=5, rtol=0.1, seed=2, block=3)
    assert a.n_samples == b.n_samples or b.n_samples % 3 == 0
    assert abs(a.low_rank - b.low_rank) < 1e-8 * abs(a.low_rank)


@pytest.mark.parametrize("method,retain", [("double-backward", True), ("forward-over-reverse", False)])
def test_recompute_policy_holds_fresh_statistics_fixed(method, retain):
    m, data = tiny_mlp("bn"), tiny_data()
    ev = Evaluator(m, data, bn="recompute", batch_size=20)
    H = cv.Hessian(ev, method=method, retain=retain)
    assert H.retained == retain
    fresh = ev.point_buffers(ev.point0)
    twin = tiny_mlp("bn")
    with torch.no_grad():
        for name, b in twin.named_buffers():
            b.copy_(fresh[name])
    assert rel(fresh["norm0.running_mean"], dict(m.named_buffers())["norm0.running_mean"]) > 1e-3
    assert rel(H.dense(), dense_reference(twin, data)) < 1e-10


class WithSpare(nn.Module):
    """A linear layer and a parameter the forward pass never uses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(D_IN, C).double()
        self.spare = nn.Parameter(torch.ones(4, dtype=torch.float64))

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize(
    "method,retain", [("double-backward", True), ("double-backward", False), ("forward-over-reverse", False)]
)
def test_unused_parameters_get_zero_curvature(method, retain):
    m, data = WithSpare(), tiny_data()
    ref = dense_reference(m, data, names=["fc.weight", "fc.bias"])
    H = cv.Hessian(m, data, batch_size=17, method=method, retain=retain)
    dense = H.dense()
    used = torch.cat([torch.full((n,), name != "spare") for name, n in zip(H.names, H.numels, strict=True)])
    assert int(used.sum()) == ref.shape[0] < H.size
    assert rel(dense[used][:, used], ref) < 1e-10
    assert float(dense[~used].abs().max()) == 0.0 and float(dense[:, ~used].abs().max()) == 0.0


# -- GGN and empirical Fisher -----------------------------------------------------------------------


def dense_ggn_and_fisher(model: nn.Module, data):
    """G = (1/N) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i and F = (1/N) sum_i g_i g_i^T, from full Jacobians."""
    X, y = data
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    flat0 = torch.cat([params[n].reshape(-1) for n in names])
    sizes, shapes = [params[n].numel() for n in names], [params[n].shape for n in names]

    def outputs(flat):
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return functional_call(model.eval(), (ps, dict(model.named_buffers())), (X,))

    J = torch.autograd.functional.jacobian(outputs, flat0)  # [N, C, P]
    p = outputs(flat0).softmax(-1)
    hl = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("ncp,ncd,ndq->pq", J, hl, J) / X.shape[0]
    g = torch.autograd.functional.jacobian(lambda f: F.cross_entropy(outputs(f), y, reduction="none"), flat0)
    return ggn, g.T @ g / X.shape[0]


@pytest.fixture(scope="module")
def ggn_case():
    m, data = tiny_mlp("bn"), tiny_data()
    return (m, data, *dense_ggn_and_fisher(m, data))


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_ggn_and_fisher_products_match_dense_jacobians_with_unequal_batches(ggn_case, kind):
    m, data, ggn, fisher = ggn_case
    want = ggn if kind == "ggn" else fisher
    op = cv.curvature_operator(kind, m, data, batch_size=17)  # 17, 17, 16: the batch weights matter
    assert rel(op.dense(), want) < 1e-10
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel(op.matvec(v), want @ v) < 1e-10 and op.n_hvp == op.size + 1
    assert torch.linalg.eigvalsh(want).min() > -1e-10  # both positive semi-definite


def test_ggn_equals_the_hessian_of_a_linear_model():
    """Without a nonlinearity between parameters and outputs the Hessian is the GGN."""
    torch.manual_seed(0)
    model, data = nn.Linear(D_IN, C).double(), tiny_data()
    torch.testing.assert_close(cv.GGN(model, data).dense(), cv.Hessian(model, data).dense())


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_lanczos_hutchpp_and_slq_accept_every_operator(ggn_case, kind):
    m, data, ggn, fisher = ggn_case
    want = ggn if kind == "ggn" else fisher
    top = torch.linalg.eigvalsh(want).flip(0)[:3]
    res = cv.eigenvalues(m, data, k=3, curvature=kind, tol=1e-8)
    torch.testing.assert_close(res.values, top, rtol=1e-6, atol=1e-9)
    assert isinstance(res.operator, cv.GGN if kind == "ggn" else cv.EmpiricalFisher) and len(res.points()) == 3
    tr = cv.trace(m, data, curvature=kind, method="hutch++", sketch=want.shape[0])
    assert tr.estimate == pytest.approx(float(torch.trace(want)), rel=1e-9)
    dens = cv.density(m, data, curvature=kind, n_probes=2, steps=want.shape[0], seed=1)
    assert dens.moment(1) == pytest.approx(float(torch.trace(want)) / want.shape[0], rel=0.5)  # a 2-probe estimate
    op = cv.curvature_operator(kind, m, data)
    assert cv.eigenvalues(op, k=1).values[0] == pytest.approx(float(top[0]), rel=1e-6)
    with pytest.raises(UserError, match="Hessian only"):
        cv.curvature_operator(kind, m, data, method="double-backward")
    with pytest.raises(UserError, match="unknown curvature"):
        cv.curvature_operator("kfac", m, data)


def test_products_match_curvlinops():
    """Our Hessian, GGN and empirical Fisher against curvlinops' operators (CrossEntropyLoss, mean)."""
    import curvlinops  # installed by `make test` (see the Makefile: without its backpack dependency)

    m, (X, y) = tiny_mlp("none"), tiny_data()
    batches = [(X[i : i + 17], y[i : i + 17]) for i in range(0, N, 17)]
    loss = nn.CrossEntropyLoss(reduction="mean")
    v = torch.randn(
        sum(p.numel() for p in m.parameters()), dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    for kind, cls in (
        ("hessian", curvlinops.HessianLinearOperator),
        ("ggn", curvlinops.GGNLinearOperator),
        ("fisher", curvlinops.EFLinearOperator),
    ):
        theirs = cls(m, loss, list(m.parameters()), batches) @ v
        ours = cv.curvature_operator(kind, m, (X, y), batch_size=17).matvec(v)
        assert rel(ours, theirs) < 1e-10, kind


DDP_CURVATURE = """
import json, sys
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from modescape import curvature as cv, distributed
from modescape.zoo import build_model, load_dataset
distributed.init()
split = load_dataset("blobs", n=150, dim=4, centers=3)
torch.manual_seed(0)
model = build_model("mlp", split.input_shape, 3, depth=1, width=6).double()
data = cv.shard(split.train)  # this rank's samples
out = {{}}
for kind in ("hessian", "ggn", "fisher"):
    e = cv.eigenvalues(model, data, k=3, curvature=kind, tol=1e-9)
    t = cv.trace(model, data, curvature=kind, method="hutchinson", min_samples=8, max_samples=8)
    out[kind] = {{"eig": e.values.tolist(), "trace": t.estimate, "n": len(data[1])}}
if distributed.rank_world()[0] == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
distributed.finish()
"""


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # one torchrun job at a time: each starts 3 processes on 2 cores
def test_data_parallel_products_under_torchrun_match_one_process(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "curv.py"
    script.write_text(DDP_CURVATURE.format(src=str(Path(__file__).resolve().parents[1] / "src")))
    env = {**os.environ, "MODESCAPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.json")], env=env, capture_output=True, text=True, timeout=180
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    r1, r2 = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    for kind in ("hessian", "ggn", "fisher"):
        assert r2[kind]["n"] < r1[kind]["n"]  # rank 0 held only its shard ...
        torch.testing.assert_close(torch.tensor(r2[kind]["eig"]), torch.tensor(r1[kind]["eig"]), rtol=1e-9, atol=0)
        assert r2[kind]["trace"] == pytest.approx(r1[kind]["trace"], rel=1e-9)  # ... and the same numbers


def test_empirical_fisher_refuses_a_loss_without_per_sample_values():
    """The empirical Fisher is built from per-sample losses: a loss returning one scalar is a user error
    (one line naming reduction='none'), not an IndexError deep in the product."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    fisher = cv.EmpiricalFisher(net, (x, y), loss=lambda out, t: F.cross_entropy(out, t))  # a mean: [] not [N]
    with pytest.raises(UserError, match="one loss per sample.*reduction='none'"):
        fisher.matvec(torch.randn(fisher.size))
    per_sample = cv.EmpiricalFisher(net, (x, y), loss=lambda out, t: F.cross_entropy(out, t, reduction="none"))
    v = torch.randn(per_sample.size)
    grads = []  # the definition: (1/N) sum_i g_i g_i^T v, with per-sample gradients by hand
    for i in range(12):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    g = torch.stack(grads)
    assert torch.allclose(per_sample.matvec(v), g.T @ (g @ v) / 12, atol=1e-5)

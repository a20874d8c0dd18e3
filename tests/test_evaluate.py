"""The Evaluator against independent computations: a plain per-model loop with nn.Module state,
and torch.optim.swa_utils.update_bn for the recompute policy, in float64, on both execution paths."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

from modescape import space as sp
from modescape.errors import UserError
from modescape.evaluate import Evaluator
from modescape.zoo import build_model

BATCH = 64


def tiny(name):
    torch.manual_seed(1)
    args = {
        "mlp": dict(depth=2, width=16, norm="bn"),
        "cnn": dict(width=4, norm="bn"),
        "resnet": dict(depth=8, width=1, norm="bn"),
    }[name]
    m = build_model(name, (1, 8, 8), 10, **args).double()
    # non-trivial running statistics so that 'running' differs from the others
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def data(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def perturbed_points(m, k=3):
    ws = sp.WeightSpace(m)
    p0 = ws.point(m)
    g = torch.Generator().manual_seed(7)
    return [
        {n: v + 0.05 * i * torch.randn(v.shape, generator=g, dtype=v.dtype) for n, v in p0.items()} for i in range(k)
    ]


def reference(m, points, x, y, policy, bn_x=None):
    """The obvious loop: copy weights into the module, (update_bn,) then evaluate batch by batch."""
    rows = []
    bn_x = x if bn_x is None else bn_x
    for p in points:
        mm = copy.deepcopy(m)
        mm.load_state_dict({**mm.state_dict(), **p})
        if policy == "recompute":
            update_bn([bn_x[i : i + BATCH] for i in range(0, bn_x.shape[0], BATCH)], mm)
        mm.train() if policy == "train" else mm.eval()
        loss = correct = 0.0
        with torch.no_grad():
            for i in range(0, x.shape[0], BATCH):
                out = mm(x[i : i + BATCH])
                loss += F.cross_entropy(out, y[i : i + BATCH], reduction="sum").item()
                correct += (out.argmax(1) == y[i : i + BATCH]).sum().item()
        rows.append([loss / x.shape[0], correct / x.shape[0]])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("policy", ["running", "recompute", "train"])
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_matches_plain_loop(name, policy, mode):
    m = tiny(name)
    x, y = data()
    pts = perturbed_points(m)
    ev = Evaluator(m, (x, y), bn=policy, batch_size=BATCH, mode=mode, chunk=2)
    got = ev(pts)
    assert got.names == ("loss", "accuracy") and got.bn == policy and got.mode == mode
    assert torch.allclose(got.values, reference(m, pts, x, y, policy), atol=1e-6, rtol=0)


def test_recompute_uses_bn_data_and_names_sources():
    m = tiny("cnn")
    x, y = data(120, seed=1)
    xt, yt = data(50, seed=2)
    pts = perturbed_points(m, 2)
    ev = Evaluator(m, {"train": (x, y), "test": (xt, yt)}, bn="recompute", batch_size=BATCH, mode="vmap")
    got = ev(pts)
    assert got.names == ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    ref_test = reference(m, pts, xt, yt, "recompute", bn_x=x)
    assert torch.allclose(got.values[:, 2:], ref_test, atol=1e-6, rtol=0)
    # statistics from the train data, not the test data
    wrong = reference(m, pts, xt, yt, "recompute", bn_x=xt)
    assert not torch.allclose(got.values[:, 2:3], wrong[:, :1], atol=1e-6)


def test_recompute_buffers_equal_update_bn():
    m = tiny("resnet")
    x, _ = data(130)
    pts = perturbed_points(m, 2)
    ev = Evaluator(m, (x, torch.zeros(130, dtype=torch.long)), bn="recompute", batch_size=BATCH)
    for vectorised in (False, True):
        bufs = ev.recompute_buffers(sp.stack(pts), vectorised=vectorised)
        for i, p in enumerate(pts):
            mm = copy.deepcopy(m)
            mm.load_state_dict({**mm.state_dict(), **p})
            update_bn([x[j : j + BATCH] for j in range(0, 130, BATCH)], mm)
            for n, b in mm.named_buffers():
                assert torch.allclose(bufs[n][i].to(b.dtype), b, atol=1e-10), n


def test_never_mutates_model_and_accepts_loaders():
    m = tiny("mlp")
    before = copy.deepcopy(m.state_dict())
    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    ev = Evaluator(m, loader, bn="recompute", metrics=("loss", "error"))
    got = ev(perturbed_points(m))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training  # mode untouched too
    ref = reference(m, perturbed_points(m), x, y, "recompute")
    assert torch.allclose(got["loss"], ref[:, 0], atol=1e-6)
    assert torch.allclose(got["error"], 1 - ref[:, 1], atol=1e-12)
    assert ev.sources[""].materialised


def test_stacked_input_auto_mode_and_loss_gradient():
    m = tiny("mlp")
    x, y = data()
    pts = perturbed_points(m, 4)
    ev = Evaluator(m, (x, y), batch_size=BATCH, chunk=4)
    a = ev(sp.stack(pts))
    assert ev.mode_chosen in ("loop", "vmap") and set(ev.mode_timings) == {"loop", "vmap"}
    b = Evaluator(m, (x, y), batch_size=BATCH, mode="loop")(pts)
    assert torch.allclose(a.values, b.values, atol=1e-12)
    # the differentiable loss agrees with the table and has a gradient
    p = {k: v.clone().requires_grad_(True) for k, v in pts[1].items()}
    loss = ev.loss(p)
    loss.backward()
    assert abs(loss.item() - a["loss"][1].item()) < 1e-10
    assert all(v.grad is not None for v in p.values())


def test_streams_when_too_large():
    from modescape.evaluate import make_source

    x, y = data(100)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    src = make_source(loader, budget_bytes=1000)
    assert not src.materialised and src.n == 100
    assert sum(xb.shape[0] for xb, _ in src) == 100


class _Batches:
    """A re-iterable of (x, y) batches with no ``.dataset`` and no length (e.g. a user's own reader)."""

    def __init__(self, x, y, bs):
        self.x, self.y, self.bs = x, y, bs

    def __iter__(self):
        for i in range(0, self.x.shape[0], self.bs):
            yield self.x[i : i + self.bs], self.y[i : i + self.bs]


def test_iterables_without_a_dataset_give_the_same_metrics():
    """A plain generator (read once, so materialised) and a streamed re-iterable with no ``.dataset``
    (counted, not n = -1) give the metrics of the same data as tensors; a generator too large to hold is
    refused, since it cannot be read twice."""
    from modescape.evaluate import make_source

    m = tiny("mlp")
    x, y = data(100)
    want = Evaluator(m, (x, y), batch_size=BATCH)([sp.WeightSpace(m).point(m)])
    gen = ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, 100, BATCH))
    got = Evaluator(m, gen)([sp.WeightSpace(m).point(m)])
    torch.testing.assert_close(got.values, want.values, rtol=1e-12, atol=1e-12)
    streamed = make_source(_Batches(x, y, BATCH), budget_bytes=1000)
    assert not streamed.materialised and streamed.n == 100
    got = Evaluator(m, streamed)([sp.WeightSpace(m).point(m)])
    torch.testing.assert_close(got.values, want.values, rtol=1e-12, atol=1e-12)
    assert float(got["loss"][0]) > 0  # the old n = -1 flipped the sign
    gen = ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, 100, BATCH))
    with pytest.raises(UserError, match="one-shot iterator"):
        make_source(gen, budget_bytes=1000)


def test_bad_input_errors():
    m = tiny("mlp")
    x, y = data()
    with pytest.raises(UserError, match="unknown BN policy"):
        Evaluator(m, (x, y), bn="fresh")
    with pytest.raises(UserError, match="unknown metric"):
        Evaluator(m, (x, y), metrics=("f1",))
    with pytest.raises(UserError, match="inputs but"):
        Evaluator(m, (x, y[:10]))
    ev = Evaluator(m, (x, y))
    bad = sp.WeightSpace(m).point(m)
    bad.pop(next(iter(bad)))
    with pytest.raises(UserError, match="missing tensor"):
        ev([bad])


class _TwiceBN(torch.nn.Module):
    def __init__(self, twice: bool):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.bn = torch.nn.BatchNorm1d(4)
        self.spare = torch.nn.BatchNorm1d(4)
        self.twice = twice

    def forward(self, x):
        h = self.bn(self.fc(x))
        return self.bn(h) if self.twice else h


@pytest.mark.parametrize("vectorised", [False, True])
def test_recompute_refuses_a_batchnorm_used_twice_or_never(vectorised):
    x = torch.randn(20, 4)
    pts = sp.stack([sp.WeightSpace(_TwiceBN(True)).point(_TwiceBN(True))])
    ev = Evaluator(_TwiceBN(True), (x, torch.zeros(20, dtype=torch.long)), bn="recompute", batch_size=8)
    with pytest.raises(UserError, match="'bn' is called twice"):
        ev.recompute_buffers(pts, vectorised=vectorised)
    ev = Evaluator(_TwiceBN(False), (x, torch.zeros(20, dtype=torch.long)), bn="recompute", batch_size=8)
    with pytest.raises(UserError, match="'spare' was not used"):
        ev.recompute_buffers(pts, vectorised=vectorised)
    assert all(m.track_running_stats is False and m.momentum == 0.1 for m in ev.bn_modules.values())

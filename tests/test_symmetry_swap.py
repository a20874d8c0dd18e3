"""REPAIR, swap paths and the symmetry CLI (modescape.symmetry)."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch.func import functional_call

from modescape import io
from modescape.families.swap import SwapPath
from modescape.symmetry import Repairer, apply, best_pair, infer_spec, state_of, swap_analysis, swap_path
from modescape.symmetry.repair import repair_layers
from modescape.zoo import build_model, load_dataset

DIG = (1, 8, 8)


def mlp(seed, width=16, depth=2, **kw):
    torch.manual_seed(seed)
    return build_model("mlp", DIG, 10, depth=depth, width=width, **kw)


def layer_stats(model, names, x):
    """Per-channel mean and (population) std of the outputs of the named modules, via forward hooks."""
    seen = {}
    hooks = [
        dict(model.named_modules())[n].register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, o.detach().double())
        )
        for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: (seen[n].mean(0), seen[n].std(0, unbiased=False)) for n in names}


# -- REPAIR ----------------------------------------------------------------------------------------


def test_repair_gives_each_unit_the_interpolated_statistics(digits):
    a_net, b_net = mlp(0), mlp(1)
    x = digits.train[0][:400]
    a, b = state_of(a_net), state_of(b_net)
    rep = Repairer(a_net, a, b, (x, digits.train[1][:400]), batch_size=400)
    assert [m for _, m in rep.layers] == ["fc0", "fc1"]  # the output layer is not permuted
    sa, sb = layer_stats(a_net, ["fc0", "fc1"], x), layer_stats(b_net, ["fc0", "fc1"], x)
    t = 0.3
    repaired = mlp(2)
    repaired.load_state_dict(rep(t))
    got = layer_stats(repaired, ["fc0", "fc1"], x)
    for n in ("fc0", "fc1"):
        goal_mean = (1 - t) * sa[n][0] + t * sb[n][0]
        goal_std = (1 - t) * sa[n][1] + t * sb[n][1]
        assert torch.allclose(got[n][0], goal_mean, atol=1e-4), n
        assert torch.allclose(got[n][1], goal_std, atol=1e-4), n
    at_a = rep(0.0)
    assert all(torch.allclose(at_a[k], a[k], atol=1e-5) for k in at_a)


def test_repair_corrects_sequence_models_on_their_last_axis():
    """A Linear applied to [B, T, C] values (a token MLP): REPAIR measures each unit over samples and
    positions on the last axis and gives it the interpolated statistics (it used to skip such layers)."""

    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4)
        )

    a_net, b_net = net(0), net(1)
    x, y = torch.randn(50, 7, 6), torch.randint(0, 4, (50, 7))
    rep = Repairer(a_net, state_of(a_net), state_of(b_net), (x, y), batch_size=50)
    assert [m for _, m in rep.layers] == ["0", "2"]

    def stats(model):
        seen = {}
        hooks = [
            model[i].register_forward_hook(lambda m, inp, o, i=i: seen.__setitem__(i, o.detach().double()))
            for i in (0, 2)
        ]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        return {i: (o.reshape(-1, 12).mean(0), o.reshape(-1, 12).std(0, unbiased=False)) for i, o in seen.items()}

    t = 0.5
    repaired = net(2)
    repaired.load_state_dict(rep(t))
    sa, sb, got = stats(a_net), stats(b_net), stats(repaired)
    for i in (0, 2):
        assert torch.allclose(got[i][0], (1 - t) * sa[i][0] + t * sb[i][0], atol=1e-4), i
        assert torch.allclose(got[i][1], (1 - t) * sa[i][1] + t * sb[i][1], atol=1e-4), i


def test_repair_leaves_batchnorm_layers_to_the_bn_reset():
    net = mlp(0, norm="bn")
    assert repair_layers(net, infer_spec(net)) == []
    net = mlp(0, norm="ln")
    assert [m for _, m in repair_layers(net, infer_spec(net))] == ["fc0", "fc1"]


# -- swap paths --------------------------------------------------------------------------------------


def test_swap_path_ends_and_midpoint():
    net = mlp(0)
    theta = {k: v.detach() for k, v in net.named_parameters()}
    path = swap_path(net, theta, "fc1", 2, 5)
    assert isinstance(path, SwapPath) and path.perm == "fc1"
    start, end, mid = path(0.0), path(1.0), path(0.5)
    assert all(torch.equal(start[k], theta[k]) for k in theta)
    manual = {k: v.clone() for k, v in theta.items()}  # exchange rows 2, 5 of fc1 and columns of out
    manual["fc1.weight"][[2, 5]] = theta["fc1.weight"][[5, 2]]
    manual["fc1.bias"][[2, 5]] = theta["fc1.bias"][[5, 2]]
    manual["out.weight"][:, [2, 5]] = theta["out.weight"][:, [5, 2]]
    assert all(torch.allclose(end[k], manual[k], atol=1e-7) for k in theta)
    assert torch.allclose(mid["fc1.weight"][2], mid["fc1.weight"][5])
    assert torch.allclose(mid["fc1.bias"][2], mid["fc1.bias"][5])
    assert torch.allclose(mid["out.weight"][:, 2], mid["out.weight"][:, 5])
    assert torch.allclose(mid["fc1.weight"][2], (theta["fc1.weight"][2] + theta["fc1.weight"][5]) / 2)
    x = torch.randn(7, *DIG)
    with torch.no_grad():
        assert (functional_call(net, end, (x,)) - net(x)).abs().max() <= 1e-5


def test_swap_on_a_residual_stream_preserves_the_function():
    torch.manual_seed(0)
    net = build_model("resnet", (3, 8, 8), 10, depth=8).eval()
    state = state_of(net)
    spec = infer_spec(net)
    path = swap_path(net, state, "stage2.0.shortcut.0", 0, 3, spec)  # the shortcut names its stream
    assert path.perm == spec.layer_perm("stage2.0.conv2")
    swapped_buffers = apply(
        spec,
        {k: v for k, v in state.items() if k not in path(1.0)},
        {path.perm: torch.tensor([3, 1, 2, 0] + list(range(4, spec.sizes[path.perm])))},
    )
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert (functional_call(net, {**path(1.0), **swapped_buffers}, (x,)) - net(x)).abs().max() <= 1e-5


def _loss(net, point, x, y):
    return F.cross_entropy(functional_call(net, point, (x,)), y)


def test_swap_analysis_matches_a_dense_hessian_and_direct_losses(digits):
    net = mlp(3, width=4, depth=2)
    x, y = digits.train[0][:150], digits.train[1][:150]
    theta = {k: v.detach() for k, v in net.named_parameters()}
    res = swap_analysis(net, theta, "fc0", 0, 2, (x, y), n_points=9, k=3)
    path = swap_path(net, theta, "fc0", 0, 2)
    direct = torch.stack([_loss(net, path(float(t)), x, y).detach() for t in res["t"]]).double()
    assert torch.allclose(torch.tensor(res["loss"], dtype=torch.float64), direct, atol=1e-5)
    chord = (1 - torch.tensor(res["t"], dtype=torch.float64)) * direct[0] + torch.tensor(
        res["t"], dtype=torch.float64
    ) * direct[-1]
    assert res["barrier"]["barrier_linear"] == pytest.approx(float((direct - chord).max()), abs=1e-5)
    mid = {k: v.double() for k, v in path(0.5).items()}
    names, shapes = list(mid), [v.shape for v in mid.values()]
    flat = torch.cat([v.reshape(-1) for v in mid.values()])
    net64 = mlp(3, width=4, depth=2).double()

    def f(vec):
        parts, off = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = vec[off : off + s.numel()].reshape(s)
            off += s.numel()
        return _loss(net64, parts, x.double(), y)

    dense = torch.autograd.functional.hessian(f, flat)
    expected = torch.linalg.eigvalsh(dense)[:3]
    scale = float(torch.linalg.eigvalsh(dense).abs().max())
    assert torch.allclose(torch.tensor(res["eigenvalues"], dtype=torch.float64), expected, atol=2e-3 * scale)


def test_best_pair_is_the_lowest_barrier_pair(digits):
    net = mlp(4, width=4, depth=1)
    x, y = digits.train[0][:200], digits.train[1][:200]
    theta = {k: v.detach() for k, v in net.named_parameters()}
    found = best_pair(net, theta, "fc0", (x, y), candidates=10, n_points=5)
    assert found["exhaustive"] and len(found["scored"]) == 6
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    barriers = {}
    for i, j in itertools.combinations(range(4), 2):
        path = swap_path(net, theta, "fc0", i, j)
        loss = torch.stack([_loss(net, path(float(s)), x, y).detach() for s in t]).double()
        barriers[(i, j)] = float((loss - ((1 - t) * loss[0] + t * loss[-1])).max())
    best = min(barriers, key=barriers.get)
    assert barriers[(found["i"], found["j"])] == pytest.approx(barriers[best], abs=1e-5)


def test_relaxation_keeps_the_units_tied(digits):
    net = mlp(5, width=6, depth=1)
    x, y = digits.train[0][:200], digits.train[1][:200]
    theta = {k: v.detach() for k, v in net.named_parameters()}
    res = swap_analysis(net, theta, "fc0", 1, 4, (x, y), n_points=5, eigen=False, relax_steps=5, relax_lr=0.1)
    assert res["relaxed"]["loss"] < res["midpoint_loss"]
    from modescape.evaluate import Evaluator
    from modescape.symmetry.swap import relax

    spec = infer_spec(net)
    ev = Evaluator(net, (x, y))
    relaxed = relax(ev, swap_path(net, theta, "fc0", 1, 4)(0.5), spec, "fc0", 1, 4, steps=5, lr=0.1)
    assert torch.allclose(relaxed["fc0.weight"][1], relaxed["fc0.weight"][4], atol=1e-6)
    assert torch.allclose(relaxed["fc0.bias"][1], relaxed["fc0.bias"][4], atol=1e-6)


# -- CLI -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("sym")
    data = load_dataset("digits")
    paths = []
    for seed in (0, 1):
        net = mlp(seed, width=8)
        paths.append(io.save_checkpoint(out / f"m{seed}.safetensors", net, {"data": data.meta}))
    return out, paths


@pytest.mark.slow
def test_cli_spec_permute_align_swap(checkpoints, capsys):
    out, (a, b) = checkpoints
    code, text, err = run_cli(["spec", a, "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(text)["permutations"]) == {"fc0", "fc1"}
    perm_file = out / "perm.safetensors"
    code, text, err = run_cli(["permute", a, "--seed", "3", "--out", perm_file, "--json"], capsys)
    assert code == 0, err
    net_a, _ = io.load_model(a)
    net_p, meta = io.load_model(perm_file)
    x = torch.randn(9, *DIG)
    with torch.no_grad():
        assert (net_a(x) - net_p(x)).abs().max() <= 1e-5
    assert not torch.equal(net_a.fc0.weight, net_p.fc0.weight) and meta["permuted"]["seed"] == 3
    code, text, err = run_cli(["align", a, perm_file, "--out", out / "al", "--points", "3", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(text)
    assert abs(summary["barriers"]["after"]["test_loss"]["barrier_linear"]) <= 1e-6
    aligned, _ = io.load_model(out / "al" / "b_aligned.safetensors")
    assert torch.allclose(aligned.fc0.weight, net_a.fc0.weight, atol=1e-6)
    assert (out / "al" / "interpolation.png").exists() and (out / "al" / "align.json").exists()
    code, text, err = run_cli(
        ["align", a, b, "--out", out / "al2", "--method", "activations", "--repair", "--points", "3"], capsys
    )
    assert code == 0, err
    assert "after+repair" in text
    code, text, err = run_cli(
        [
            "swap",
            a,
            "--layer",
            "fc1",
            "--i",
            "0",
            "--j",
            "1",
            "--points",
            "3",
            "--k",
            "2",
            "--n-eval",
            "100",
            "--json",
            "--out",
            out / "sw",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(text)
    assert len(res["loss"]) == 3 and len(res["eigenvalues"]) == 2 and (out / "sw" / "swap.png").exists()


def test_cli_errors_are_one_line(checkpoints, capsys):
    _, (a, _) = checkpoints
    code, _, err = run_cli(["swap", a, "--layer", "nope", "--i", "0", "--j", "1"], capsys)
    assert code == 2 and "layer 'nope'" in err and "Traceback" not in err
    code, _, err = run_cli(["swap", a, "--layer", "fc0", "--i", "0"], capsys)
    assert code == 2 and "--best" in err
    code, _, err = run_cli(["align", a, a, "--out", "/tmp/x-unused", "--method", "magic"], capsys)
    assert code == 2 and "unknown --method" in err


# -- models outside the zoo: the spec's input shape comes from the data ---------------------------------


def test_align_and_swap_work_on_a_model_outside_the_zoo():
    """A plain nn.Sequential has no ``modescape_spec``: align, REPAIR and the swap analysis infer its spec
    with the input shape of the data they hold (this failed with "infer_spec needs the shape of one
    input"), and a planted permutation is undone exactly."""
    from modescape.symmetry import align, random_perms

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3)
    )
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    a = state_of(net)
    spec = infer_spec(net, example=x[:2])
    b = apply(spec, a, random_perms(spec, seed=4))
    res = align(net, a, b, {"train": (x, y), "test": (x, y)}, method="weights", repair=True, n_points=5)
    for k, v in res.b_aligned.items():
        torch.testing.assert_close(v, a[k])
    assert res.curves["after"].barriers()["train_loss"]["barrier_linear"] <= 1e-6
    out = swap_analysis(net, a, "2", 0, 1, (x, y), n_points=5, k=2)
    assert len(out["loss"]) == 5 and out["perm"] in spec.sizes


def test_swap_path_carries_the_permuted_running_statistics(digits):
    """Under bn="running" the swap path's far end is the swapped network with its running statistics
    permuted too: it computes the same function, so the loss at t = 1 equals the loss at t = 0."""
    from modescape.evaluate import Evaluator

    net = mlp(0, norm="bn")
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    x, y = digits.train[0][:200], digits.train[1][:200]
    ev = Evaluator(net, (x, y), bn="running")
    res = swap_analysis(net, state_of(net), "fc0", 0, 3, evaluator=ev, n_points=5, eigen=False)
    assert res["loss"][-1] == pytest.approx(res["loss"][0], rel=1e-6)
    path = swap_path(net, state_of(net), "fc0", 0, 3)
    start, end = path.buffers_at(0.0)["norm0.running_mean"], path.buffers_at(1.0)["norm0.running_mean"]
    assert torch.equal(end[[0, 3]], start[[3, 0]]) and torch.equal(end[1:3], start[1:3])


def test_relaxation_keeps_attention_heads_tied_in_every_segment():
    """Two heads of a fused q/k/v projection (three segments of one tensor, a block per head): relaxing
    from the swap midpoint keeps the heads' q, k and v rows equal (only the q segment stayed tied before)."""
    from modescape.evaluate import Evaluator
    from modescape.symmetry.swap import relax

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(4, 8)
            self.att = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            a, _ = self.att(h, h, h, need_weights=False)
            return self.out(a).mean(1)

    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(16, 5, 4), torch.randint(0, 3, (16,))
    spec = infer_spec(net, data=(x, y))
    theta = {k: v.detach() for k, v in net.named_parameters()}
    mid = swap_path(net, theta, "att:heads", 0, 1, spec=spec)(0.5)
    # the outgoing weights are free: make them differ, so that the two heads' gradients differ too
    mid["att.out_proj.weight"] = mid["att.out_proj.weight"] + torch.randn(8, 8) * torch.tensor([0.0] * 4 + [1.0] * 4)
    ev = Evaluator(net, (x, y), progress=False)
    relaxed = relax(ev, mid, spec, "att:heads", 0, 1, steps=5, lr=0.5)
    w, b = relaxed["att.in_proj_weight"], relaxed["att.in_proj_bias"]
    assert not torch.allclose(w, mid["att.in_proj_weight"])  # it moved
    for seg in (0, 8, 16):  # q, k, v: head h holds rows seg + 4 h : seg + 4 h + 4
        assert torch.allclose(w[seg : seg + 4], w[seg + 4 : seg + 8], atol=1e-6), seg
        assert torch.allclose(b[seg : seg + 4], b[seg + 4 : seg + 8], atol=1e-6), seg

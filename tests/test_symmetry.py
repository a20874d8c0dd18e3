"""Permutation specs, applying permutations, and re-basin matching (modescape.symmetry)."""

import copy
import importlib
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from spec_helpers import MHA, A, Concat, GroupedConv, canon, perm
from torch import nn

from modescape.errors import UserError
from modescape.symmetry import (
    PermutationSpec,
    activation_matching,
    apply,
    example_input,
    infer_spec,
    interpolation,
    invert,
    random_perms,
    state_of,
    ste_matching,
    weight_matching,
)
from modescape.symmetry.probe import Probe
from modescape.zoo import build_model

IMG = (3, 8, 8)
DIG = (1, 8, 8)


# -- hand-written specs -------------------------------------------------------------------------


def norm(prefix, bn=True):
    names = ["weight", "bias"] + (["running_mean", "running_var"] if bn else [])
    return [A(f"{prefix}.{n}") for n in names]


def mlp_spec(norm_kind):
    def hidden(i, nxt):
        own = [A(f"fc{i}.weight")]
        if norm_kind == "none":
            own.append(A(f"fc{i}.bias"))
        else:
            own += norm(f"norm{i}", bn=norm_kind == "bn")
        return perm(8, own, A(f"{nxt}.weight", 1))

    return canon(hidden(0, "fc1"), hidden(1, "out"))


def cnn_spec(norm_kind):
    def block(i, size, nxt):
        own = [A(f"conv{i}.weight")]
        own += [A(f"conv{i}.bias")] if norm_kind == "none" else norm(f"norm{i}", bn=norm_kind == "bn")
        return perm(size, own, A(f"{nxt}.weight", 1))

    return canon(block(0, 4, "conv1"), block(1, 8, "conv2"), block(2, 16, "fc"))


def vgg_spec(bn):
    sizes = [8, 16, 32, 32, 64, 64, 64, 64]
    out = []
    for i, size in enumerate(sizes):
        own = [A(f"conv{i}.weight")] + (norm(f"norm{i}") if bn else [A(f"conv{i}.bias")])
        nxt = f"conv{i + 1}" if i + 1 < len(sizes) else "fc"
        out.append(perm(size, own, A(f"{nxt}.weight", 1)))
    return canon(*out)


def resnet8_spec():
    s1, s2, s3 = "stage1.0", "stage2.0", "stage3.0"
    return canon(
        # residual stream of stage 1: stem, block output, inputs of stage 2
        perm(
            16,
            A("conv.weight"),
            norm("norm"),
            A(f"{s1}.conv1.weight", 1),
            A(f"{s1}.conv2.weight"),
            norm(f"{s1}.norm2"),
            A(f"{s2}.conv1.weight", 1),
            A(f"{s2}.shortcut.0.weight", 1),
        ),
        perm(16, A(f"{s1}.conv1.weight"), norm(f"{s1}.norm1"), A(f"{s1}.conv2.weight", 1)),
        perm(32, A(f"{s2}.conv1.weight"), norm(f"{s2}.norm1"), A(f"{s2}.conv2.weight", 1)),
        # stream of stage 2: block output and projection shortcut share one permutation
        perm(
            32,
            A(f"{s2}.conv2.weight"),
            norm(f"{s2}.norm2"),
            A(f"{s2}.shortcut.0.weight"),
            norm(f"{s2}.shortcut.1"),
            A(f"{s3}.conv1.weight", 1),
            A(f"{s3}.shortcut.0.weight", 1),
        ),
        perm(64, A(f"{s3}.conv1.weight"), norm(f"{s3}.norm1"), A(f"{s3}.conv2.weight", 1)),
        perm(
            64,
            A(f"{s3}.conv2.weight"),
            norm(f"{s3}.norm2"),
            A(f"{s3}.shortcut.0.weight"),
            norm(f"{s3}.shortcut.1"),
            A("fc.weight", 1),
        ),
    )


def resnet8_noskip_ln_spec():
    out = [perm(16, A("conv.weight"), norm("norm", bn=False), A("stage1.0.conv1.weight", 1))]
    for s, size in ((1, 16), (2, 32), (3, 64)):
        b = f"stage{s}.0"
        nxt = f"stage{s + 1}.0.conv1" if s < 3 else "fc"
        out.append(perm(size, A(f"{b}.conv1.weight"), norm(f"{b}.norm1", bn=False), A(f"{b}.conv2.weight", 1)))
        out.append(perm(size, A(f"{b}.conv2.weight"), norm(f"{b}.norm2", bn=False), A(f"{nxt}.weight", 1)))
    return canon(*out)


ZOO = {
    "mlp": (("mlp", DIG, dict(depth=2, width=8)), mlp_spec("none")),
    "mlp-bn": (("mlp", DIG, dict(depth=2, width=8, norm="bn")), mlp_spec("bn")),
    "mlp-ln": (("mlp", DIG, dict(depth=2, width=8, norm="ln")), mlp_spec("ln")),
    "cnn-bn": (("cnn", IMG, dict(width=4, norm="bn")), cnn_spec("bn")),
    "cnn-gn": (("cnn", IMG, dict(width=4, norm="ln")), cnn_spec("ln")),
    "cnn": (("cnn", IMG, dict(width=4, norm="none")), cnn_spec("none")),
    "vgg": (("vgg", IMG, dict(depth=11, width=1, bn=False)), vgg_spec(False)),
    "vgg-bn": (("vgg", IMG, dict(depth=11, width=1, bn=True)), vgg_spec(True)),
    "resnet": (("resnet", IMG, dict(depth=8)), resnet8_spec()),
    "resnet-noskip-gn": (("resnet", IMG, dict(depth=8, skip=False, norm="ln")), resnet8_noskip_ln_spec()),
}


def make(key, seed=0):
    (name, shape, args), _ = ZOO[key]
    torch.manual_seed(seed)
    model = build_model(name, shape, 10, **args)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # non-trivial norm parameters and running statistics
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model, shape


@pytest.mark.parametrize("key", list(ZOO))
def test_inferred_spec_equals_hand_written(key):
    model, _ = make(key)
    spec = infer_spec(model)
    assert spec.canonical() == ZOO[key][1]


def test_flatten_of_a_feature_map_gives_blocks():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    spec = infer_spec(model, input_shape=DIG)
    assert spec.canonical() == canon(perm(4, A("0.weight"), A("0.bias"), A("3.weight", 1, 64)))
    x = torch.randn(5, *DIG)
    permuted = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    permuted.load_state_dict(apply(spec, model.state_dict(), random_perms(spec, 3)))
    assert (model(x) - permuted(x)).abs().max() <= 1e-5


# -- function preservation (Hypothesis) -----------------------------------------------------------

_BUILT = {}


def built(key):
    if key not in _BUILT:
        model, shape = make(key)
        _BUILT[key] = (model, shape, infer_spec(model))
    return _BUILT[key]


@settings(max_examples=12, deadline=None)
@given(
    key=st.sampled_from(["mlp-bn", "mlp-ln", "cnn-gn", "vgg-bn", "resnet", "resnet-noskip-gn"]),
    seed=st.integers(0, 2**31 - 1),
    train=st.booleans(),
)
def test_permuted_model_computes_the_same_function(key, seed, train):
    model, shape, spec = built(key)
    perms = random_perms(spec, seed)
    twin, _ = make(key)
    twin.load_state_dict(apply(spec, model.state_dict(), perms))
    x = torch.randn((6, *shape), generator=torch.Generator().manual_seed(seed))
    model.train(train)
    twin.train(train)
    with torch.no_grad():
        assert (model(x) - twin(x)).abs().max() <= 1e-5
    model.eval()
    if train:  # train mode must update the running statistics consistently too
        moved = apply(spec, model.state_dict(), perms)
        for k, v in twin.state_dict().items():
            assert torch.allclose(v.float(), moved[k].float(), atol=1e-6), k


def test_apply_inverse_and_spec_round_trip():
    model, _, spec = built("resnet")
    state = state_of(model)
    perms = random_perms(spec, 7)
    back = apply(spec, apply(spec, state, perms), invert(perms))
    assert all(torch.equal(back[k], state[k]) for k in state)
    again = PermutationSpec.from_dict(spec.to_dict())
    assert again.canonical() == spec.canonical() and again.nodes == spec.nodes


def test_random_perms_are_seeded():
    _, _, spec = built("mlp")
    a, b, c = random_perms(spec, 1), random_perms(spec, 1), random_perms(spec, 2)
    assert all(torch.equal(a[p], b[p]) for p in a)
    assert any(not torch.equal(a[p], c[p]) for p in a)


# -- what fx cannot handle ------------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x)
        return x


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc1(torch.cumsum(self.fc0(x), dim=0))  # acts on each unit separately (over the batch)


def test_untraceable_model_raises_a_user_error():
    with pytest.raises(UserError, match="torch.fx could not trace Branchy"):
        infer_spec(Branchy(), input_shape=(4,))


def test_unknown_op_names_the_node_and_override_works():
    model = Cumulative()
    with pytest.raises(UserError, match="fx node 'cumsum'"):
        infer_spec(model, input_shape=(4,))
    spec = infer_spec(model, input_shape=(4,), elementwise=["cumsum"])
    assert spec.canonical() == canon(perm(6, A("fc0.weight"), A("fc0.bias"), A("fc1.weight", 1)))
    hand = PermutationSpec.from_dict(
        {"permutations": {"h": {"size": 6, "axes": [["fc0.weight", 0], ["fc0.bias", 0], ["fc1.weight", 1]]}}}
    )
    assert hand.canonical() == spec.canonical()


def test_apply_rejects_a_spec_for_another_model():
    _, _, spec = built("mlp")
    wide = build_model("mlp", DIG, 10, depth=2, width=9)
    with pytest.raises(UserError, match="different model"):
        apply(spec, wide.state_dict(), random_perms(spec, 0))


# -- matching --------------------------------------------------------------------------------------


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("key", ["mlp", "vgg-bn", "resnet"])
def test_planted_permutation_is_recovered(key, digits):
    model, shape, spec = built(key)
    a = state_of(model)
    planted = random_perms(spec, 11)
    b = apply(spec, a, planted)
    pa = {k: a[k] for k in _params(model)}
    found = weight_matching(spec, pa, {k: b[k] for k in pa}, seed=3)
    for p in spec.sizes:
        assert torch.equal(found[p], invert(planted)[p]), p
    aligned = apply(spec, b, found)
    for k in a:
        assert torch.allclose(aligned[k].double(), a[k].double(), atol=1e-6), k
    if shape == DIG:
        x, y = digits.test[0][:200], digits.test[1][:200]
    else:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    curve = interpolation(model, a, aligned, {"train": (x, y), "test": (x, y)}, n_points=25)
    for name, bar in curve.barriers().items():
        assert abs(bar["barrier_linear"]) <= 1e-6 and abs(bar["barrier_mean"]) <= 1e-6, name
    assert len(curve.t) == 25


def _objective(spec, a, b, perms):
    bp = apply(spec, b, perms)
    return sum(float((a[k].double() * bp[k].double()).sum()) for k in a)


def test_weight_matching_single_layer_is_the_brute_force_optimum():
    torch.manual_seed(1)
    net_a, net_b = (
        nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)),
        nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)),
    )
    spec = infer_spec(net_a, input_shape=(3,))
    a, b = _params(net_a), _params(net_b)
    (name,) = spec.sizes
    best = max(_objective(spec, a, b, {name: torch.tensor(p)}) for p in itertools.permutations(range(5)))
    found, info = weight_matching(spec, a, b, return_info=True)
    assert info["objective"] == pytest.approx(best, rel=1e-12)
    assert _objective(spec, a, b, found) == pytest.approx(best, rel=1e-12)


def test_weight_matching_stops_at_a_coordinate_optimum():
    torch.manual_seed(2)
    make_net = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))  # noqa
    net_a, net_b = make_net(), make_net()
    spec = infer_spec(net_a, input_shape=(3,))
    a, b = _params(net_a), _params(net_b)
    found = weight_matching(spec, a, b, seed=5)
    value = _objective(spec, a, b, found)
    assert value >= _objective(spec, a, b, {p: torch.arange(n) for p, n in spec.sizes.items()}) - 1e-12
    for p in spec.sizes:  # no single permutation can be improved with the others held (brute force)
        for q in itertools.permutations(range(4)):
            trial = {**found, p: torch.tensor(q)}
            assert _objective(spec, a, b, trial) <= value + 1e-9


def test_activation_matching_recovers_a_planted_permutation(digits):
    torch.manual_seed(0)
    model = build_model("mlp", DIG, 10, depth=2, width=16, activation="tanh")
    spec = infer_spec(model)
    a = state_of(model)
    planted = random_perms(spec, 4)
    found = activation_matching(model, a, apply(spec, a, planted), digits.train, spec=spec, batch_size=300)
    assert all(torch.equal(found[p], invert(planted)[p]) for p in spec.sizes)


def test_activation_matching_on_a_bn_resnet_recovers_the_planted_permutation():
    model, shape, spec = built("resnet")
    a = state_of(model)
    planted = random_perms(spec, 5)
    x = torch.randn(128, *shape, generator=torch.Generator().manual_seed(1))
    found = activation_matching(model, a, apply(spec, a, planted), (x, torch.zeros(128, dtype=torch.long)), spec=spec)
    for p in spec.sizes:
        # units that rarely fire (on the same few inputs) are interchangeable on this data: check the others
        acts = [n for n, kind in spec.nodes[p] if kind == "act"]
        values = Probe(model, acts)(a, x)
        live = torch.stack(
            [(v.transpose(0, 1).reshape(v.shape[1], -1) > 0).double().mean(1) > 0.1 for v in values]
        ).any(0)
        assert live.sum() >= spec.sizes[p] // 2, p
        assert torch.equal(found[p][live], invert(planted)[p][live]), p


def test_ste_matching_keeps_an_exact_match(digits):
    model, _, spec = built("mlp")
    a = state_of(model)
    planted = random_perms(spec, 9)
    found, info = ste_matching(
        model, a, apply(spec, a, planted), digits.train, spec=spec, steps=3, lr=1e-4, return_info=True
    )
    assert all(torch.equal(found[p], invert(planted)[p]) for p in spec.sizes)
    assert len(info["losses"]) == 3


def test_activation_matching_cross_moment_recovers_a_planted_permutation(digits):
    torch.manual_seed(0)
    model = build_model("mlp", DIG, 10, depth=2, width=16, activation="tanh")
    spec = infer_spec(model)
    a = state_of(model)
    planted = random_perms(spec, 4)
    found = activation_matching(
        model, a, apply(spec, a, planted), digits.train, spec=spec, batch_size=300, objective="cross-moment"
    )
    assert all(torch.equal(found[p], invert(planted)[p]) for p in spec.sizes)
    with pytest.raises(UserError, match="'correlation' or 'cross-moment'"):
        activation_matching(model, a, a, digits.train, spec=spec, objective="cosine")


def test_cross_moment_is_the_assignment_on_e_ab_where_correlation_disagrees():
    # one hidden layer of 6 linear units; A's and B's units differ in offset and scale, so the
    # uncentred E[ab] and the Pearson correlation prefer different pairings
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    spec = infer_spec(net, input_shape=(4,))
    (p,) = spec.sizes
    a = state_of(net)
    b = dict(a)
    a["0.bias"] = 3 * torch.randn(6, generator=gen)
    b["0.weight"] = torch.randn(6, 4, generator=gen) * torch.rand(6, 1, generator=gen) * 3
    b["0.bias"] = 3 * torch.randn(6, generator=gen)
    x = torch.randn(300, 4, generator=gen)
    za = (x.double() @ a["0.weight"].double().T + a["0.bias"].double()).numpy()
    zb = (x.double() @ b["0.weight"].double().T + b["0.bias"].double()).numpy()
    e_ab = za.T @ zb / len(x)
    corr = np.corrcoef(za.T, zb.T)[:6, 6:]
    want = linear_sum_assignment(e_ab, maximize=True)[1]
    by_corr = linear_sum_assignment(corr, maximize=True)[1]
    assert not np.array_equal(want, by_corr)  # the example discriminates the two objectives
    data = (x, torch.zeros(300, dtype=torch.long))
    found = activation_matching(net, a, b, data, spec=spec, objective="cross-moment", batch_size=64)
    assert found[p].tolist() == want.tolist()
    assert activation_matching(net, a, b, data, spec=spec, batch_size=64)[p].tolist() == by_corr.tolist()


def test_ste_returns_the_permutation_of_the_step_with_the_lowest_loss(digits, monkeypatch):
    model, _, spec = built("mlp")
    x, y = digits.train
    trained = copy.deepcopy(model)  # a trained A: a wrong permutation visibly raises the midpoint's loss
    opt = torch.optim.Adam(trained.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
    a = state_of(trained)
    planted = random_perms(spec, 9)
    steps = 5
    # weight matching is scripted: random permutations, except the exact match at step 1; the last
    # step's projection is a random one, so returning it (or a final re-projection) fails the test
    script = [random_perms(spec, 100 + i) for i in range(steps + 1)]
    script[1] = invert(planted)
    calls = []

    def scripted(spec_, a_, b_, init=None, seed=0, **kwargs):
        calls.append(script[len(calls)])
        return calls[-1]

    monkeypatch.setattr(importlib.import_module("modescape.symmetry.match"), "weight_matching", scripted)
    found, info = ste_matching(
        trained, a, apply(spec, a, planted), digits.train, spec=spec, steps=steps, lr=1e-4, return_info=True
    )
    assert len(calls) == steps and len(info["losses"]) == steps
    best = int(np.argmin(info["losses"]))
    assert info["best_step"] == best == 1 and info["best_loss"] == min(info["losses"])
    assert all(torch.equal(found[p], calls[best][p]) for p in spec.sizes)
    assert any(not torch.equal(found[p], calls[-1][p]) for p in spec.sizes)


# -- inference for models outside the zoo, and the rule table ---------------------------------------


def test_model_outside_the_zoo_gets_its_spec_from_data(digits):
    x, y = digits.train[0].flatten(1), digits.train[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 10))
    assert not hasattr(model, "modescape_spec")
    with pytest.raises(UserError, match="data="):
        infer_spec(model)
    spec = infer_spec(model, data=(x, y))
    assert spec.canonical() == canon(
        perm(12, A("0.weight"), A("0.bias"), A("2.weight", 1)), perm(10, A("2.weight"), A("2.bias"), A("4.weight", 1))
    )
    a = state_of(model)
    planted = random_perms(spec, 3)
    b = apply(spec, a, planted)
    found = weight_matching(spec, a, b, seed=1)
    assert all(torch.equal(found[p], invert(planted)[p]) for p in spec.sizes)
    # activation matching infers the spec from its data too (no input shape anywhere)
    found = activation_matching(model, a, b, (x, y))
    assert torch.equal(found["0"], invert(planted)["0"])


def test_example_input_takes_every_data_form(digits):
    x, y = digits.train
    ds = torch.utils.data.TensorDataset(x, y)
    forms = [
        (x, y),
        ds,
        torch.utils.data.DataLoader(ds, batch_size=7),
        [(x[:5], y[:5])],
        {"train": (x, y)},
        {"test": (x, y)},
        digits,
    ]
    for form in forms:
        assert torch.equal(example_input(form, n=3), x[:3]), type(form).__name__
    for bad in (3, [], torch.utils.data.TensorDataset(x[:0], y[:0])):
        with pytest.raises(UserError, match="example_input"):
            example_input(bad)


class Assorted(nn.Module):
    """One of each rule the zoo models do not use (functions, methods, PReLU, reductions, sizes)."""

    def __init__(self):
        super().__init__()
        self.soft = nn.Softmax(dim=-1)  # a parameter-free module no rule knows, on the fixed input
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.act = nn.PReLU(6)
        self.drop = nn.Dropout(0.1)
        self.fc0, self.fc1, self.out = nn.Linear(6 * 64, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.cumsum(self.soft(x), dim=0)  # an unknown function on fixed values
        h = self.drop(self.act(self.conv(x)))
        h = -torch.sigmoid(h) / 2
        g = h.mean((2, 3))
        f = h.contiguous().view(h.size(0) * 1, -1)
        return self.out(nn.functional.relu(self.fc0(f)) + self.fc1(g))


def test_every_rule_in_the_tables_is_exercised(monkeypatch):
    infer = importlib.import_module("modescape.symmetry.infer")
    defaults = ("rule_activation", "rule_fixed", "rule_constant")  # what the dispatchers name directly
    every = {rule.__name__ for table in (infer.MODULE_RULES, infer.FUNCTION_RULES) for rule in table.values()}
    assert {n for n in dir(infer) if n.startswith("rule_")} == every | set(defaults)  # no rule outside them
    used = set()

    def recording(rule):
        def wrapped(ctx, node):
            used.add(rule.__name__)
            return rule(ctx, node)

        return wrapped

    for table in (infer.MODULE_RULES, infer.FUNCTION_RULES):
        for key, rule in list(table.items()):
            monkeypatch.setitem(table, key, recording(rule))
    for name in defaults:
        monkeypatch.setattr(infer, name, recording(getattr(infer, name)))
    for name, shape, args in (
        ("mlp", DIG, dict(depth=2, width=8, norm="bn")),
        ("cnn", IMG, dict(width=4)),
        ("resnet", IMG, dict(depth=8)),
        ("vgg", IMG, dict(depth=11, width=1)),
        ("transformer", (3,), dict(width=8, heads=2)),
    ):
        infer.infer_spec(build_model(name, shape, 10, **args))
    for extra in (Concat(), GroupedConv(), MHA()):  # the rules of concatenation, transposes, attention modules
        infer.infer_spec(extra, example=extra.example())
    model = Assorted().eval()
    spec = infer.infer_spec(model, input_shape=DIG)
    assert used == every | set(defaults)
    assert spec.canonical() == canon(
        perm(6, A("conv.weight"), A("conv.bias"), A("act.weight"), A("fc0.weight", 1, 64), A("fc1.weight", 1)),
        perm(8, A("fc0.weight"), A("fc0.bias"), A("fc1.weight"), A("fc1.bias"), A("out.weight", 1)),
    )
    twin = Assorted().eval()
    twin.load_state_dict(apply(spec, model.state_dict(), random_perms(spec, 2)))
    x = torch.randn(5, *DIG)
    assert (model(x) - twin(x)).abs().max() <= 1e-5


class Unknowns(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how, self.conv, self.soft = how, nn.Conv2d(1, 4, 3, padding=1), nn.Softmax(dim=1)

    def forward(self, x):
        h = self.conv(x)
        if self.how == "module":
            return self.soft(h)  # softmax over the channels: not channel-wise
        return torch.cumsum(h, dim=1)  # a running sum over the channels


@pytest.mark.parametrize(
    "how, node, what",
    [
        ("module", "soft", "module type Softmax is not known"),
        ("function", "cumsum", "an operation not known to act channel-wise"),
    ],
)
def test_unknown_ops_on_permuted_channels_raise_naming_the_node(how, node, what):
    with pytest.raises(UserError, match=f"fx node '{node}'.*{what}.*elementwise="):
        infer_spec(Unknowns(how), input_shape=DIG)

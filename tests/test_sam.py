"""SAM and ASAM: the two-step update against a hand-written step, BatchNorm left alone in the second pass,
and the trainer's SAM against the same hand step."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modescape import train as tr
from modescape.errors import UserError
from modescape.sam import SAM, bias_mask, frozen_batchnorm, sam_step
from modescape.zoo import build_model


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)


def hand_sam(model, x, y, steps, lr, momentum, wd, rho, scale_of):
    """SAM by hand: e = rho T^2 g / (||T g|| + 1e-12) with T = scale_of(name, w) (None: 1); the gradient at
    w + e; SGD with momentum, the weight decay on w (torch's SGD: buf = momentum buf + (g' + wd w))."""
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    buf = {}

    def loss_at(point):
        return F.cross_entropy(torch.func.functional_call(model, point, (x,)), y)

    for step in range(steps):
        leaves = {n: w[n].clone().requires_grad_(True) for n in names}
        g = dict(zip(names, torch.autograd.grad(loss_at(leaves), [leaves[n] for n in names]), strict=True))
        t = {n: scale_of(n, w[n]) for n in names}
        tg = {n: g[n] if t[n] is None else t[n] * g[n] for n in names}
        norm = torch.sqrt(sum((v**2).sum() for v in tg.values()))
        e = {n: rho * (g[n] if t[n] is None else t[n] ** 2 * g[n]) / (norm + 1e-12) for n in names}
        up = {n: (w[n] + e[n]).requires_grad_(True) for n in names}
        g2 = dict(zip(names, torch.autograd.grad(loss_at(up), [up[n] for n in names]), strict=True))
        for n in names:
            d = g2[n] + wd * w[n]
            buf[n] = d if step == 0 else momentum * buf[n] + d
            w[n] = w[n] - lr * buf[n]
    return w


@pytest.mark.parametrize("kind", ["sam", "asam", "asam-all"])
def test_sam_two_steps_equal_the_hand_written_update(kind):
    model = tiny()
    x, y = batch()
    lr, momentum, wd, rho, eta = 0.1, 0.9, 5e-3, 0.05, 0.01
    if kind == "sam":
        opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=momentum, weight_decay=wd)
        scale_of = lambda n, w: None  # noqa: E731
    elif kind == "asam":  # Kwon et al. / SamsungLabs: |w| + eta on weights, 1 on biases
        opt = SAM(
            model.parameters(),
            torch.optim.SGD,
            rho=rho,
            adaptive=True,
            eta=eta,
            scaled=bias_mask(model),
            lr=lr,
            momentum=momentum,
            weight_decay=wd,
        )
        scale_of = lambda n, w: None if n.endswith("bias") else w.abs() + eta  # noqa: E731
    else:  # davda54/sam's adaptive rule: |w| on every parameter, no eta
        opt = SAM(
            model.parameters(), torch.optim.SGD, rho=rho, adaptive=True, lr=lr, momentum=momentum, weight_decay=wd
        )
        scale_of = lambda n, w: w.abs()  # noqa: E731
    expected = hand_sam(copy.deepcopy(model), x, y, 2, lr, momentum, wd, rho, scale_of)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        sam_step(model, opt, lambda: F.cross_entropy(model(x), y))
    for n, p in model.named_parameters():
        assert not torch.allclose(p, before[n])
        torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=0)
    # plain SGD with the gradient at w (rho = 0 would be it) lands elsewhere: the test can tell them apart
    plain = copy.deepcopy(tiny())
    sgd = torch.optim.SGD(plain.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for _ in range(2):
        sgd.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        sgd.step()
    assert max((p - expected[n]).abs().max() for n, p in plain.named_parameters()) > 1e-4


def test_sam_step_with_a_closure_and_its_state_is_the_base_optimisers():
    model, ref = tiny(), tiny()
    x, y = batch()
    kw = dict(rho=0.05, lr=0.1, momentum=0.9, weight_decay=0.0)
    a = SAM(model.parameters(), torch.optim.SGD, **kw)
    b = SAM(ref.parameters(), torch.optim.SGD, **kw)
    F.cross_entropy(model(x), y).backward()
    a.step(lambda: F.cross_entropy(model(x), y).backward())
    sam_step(ref, b, lambda: F.cross_entropy(ref(x), y))
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    sd = a.state_dict()
    assert sd == a.base_optimizer.state_dict() and all("momentum_buffer" in s for s in sd["state"].values())
    with pytest.raises(UserError, match="closure"):
        a.step()
    with pytest.raises(UserError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)


def test_second_pass_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x, y = batch()
    ref = copy.deepcopy(model).train()
    ref(x)  # one train-mode forward at w: what the running statistics should hold after the step
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    model.train()
    sam_step(model, opt, lambda: F.cross_entropy(model(x), y))
    bn, bn_ref = model[1], ref[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats
    with frozen_batchnorm(model):  # inside: batch statistics, no update
        model(x + 1.0)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)


@pytest.mark.parametrize("adaptive", [False, True])
def test_trainer_sam_epoch_equals_the_hand_step(digits, adaptive):
    """One epoch of one full batch: the trainer's SAM (and ASAM) against the hand-written update."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=8)
    x, y = digits.train
    x, y = x[:64], y[:64]

    class Small:
        train, test, meta = (x, y), digits.test, {}

    start = copy.deepcopy(model)
    cfg = tr.TrainConfig(
        epochs=1,
        batch_size=64,
        lr=0.1,
        wd=5e-4,
        optimizer="sam",
        momentum=0.9,
        schedule="constant",
        rho=0.1,
        adaptive=adaptive,
        eta=0.01,
    )
    tr.train(model, Small, cfg)
    order = tr.epoch_order(64, cfg.seed, 0)
    scale_of = (lambda n, w: None if n.endswith("bias") else w.abs() + 0.01) if adaptive else (lambda n, w: None)
    expected = hand_sam(start, x[order], y[order], 1, 0.1, 0.9, 5e-4, 0.1, scale_of)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=0)


def test_config_checks_sam_options():
    with pytest.raises(UserError, match="needs --optimizer sam"):
        tr.TrainConfig(adaptive=True).check()
    with pytest.raises(UserError, match="--rho"):
        tr.TrainConfig(optimizer="sam", rho=-0.1).check()
    tr.TrainConfig(optimizer="sam", adaptive=True).check()

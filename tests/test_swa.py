"""SWA and SWAG: the average is the arithmetic mean of the iterates (hand loop), BatchNorm statistics for
the average agree with update_bn, SWALR's schedule, SWAG's moments and sample covariance against their
closed forms, resumption, budgets and the command line."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from modescape import io
from modescape import space as sp
from modescape import train as tr
from modescape.errors import UserError
from modescape.swa import SWAG, module_at, swa, swa_learning_rate, swag_ensemble
from modescape.zoo import build_model


def test_swa_learning_rate_follows_swalr_closed_form():
    for strategy, alpha in (("cos", lambda t: (1 - math.cos(math.pi * t)) / 2), ("linear", lambda t: t)):
        for k in range(7):
            t = min(1.0, k / 4)
            want = 0.02 * alpha(t) + 0.1 * (1 - alpha(t))
            assert swa_learning_rate(0.1, 0.02, 4, strategy, k) == pytest.approx(want, rel=1e-12)
    assert swa_learning_rate(0.1, 0.02, 0, "cos", 0) == pytest.approx(0.02)
    with pytest.raises(UserError, match="annealing"):
        swa_learning_rate(0.1, 0.02, 1, "step", 0)


class Vec(nn.Module):
    """A model whose weights are one vector (for closed forms)."""

    def __init__(self, d=3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))


def iterates(n, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    return [base + torch.randn(d, generator=g) * torch.tensor([0.5, 1.0, 2.0][:d]) for _ in range(n)]


def test_swag_moments_equal_their_closed_forms():
    ws = iterates(7)
    m = Vec()
    swag = SWAG(m, rank=4)
    for w in ws:
        with torch.no_grad():
            m.w.copy_(w)
        swag.collect(m)
    W = torch.stack(ws).double()
    assert swag.n == 7
    torch.testing.assert_close(swag.mean()["w"].double(), W.mean(0), atol=1e-6, rtol=0)  # AveragedModel
    torch.testing.assert_close(swag.variance(), (W**2).mean(0) - W.mean(0) ** 2, atol=1e-9, rtol=0)
    # deviations: w_i minus the running mean just after w_i, for the last 4 iterates (the reference's)
    running = [W[: i + 1].mean(0) for i in range(7)]
    dev = torch.stack([W[i] - running[i] for i in range(3, 7)])
    torch.testing.assert_close(swag.deviations.double(), dev, atol=1e-6, rtol=0)
    want = 0.5 * (torch.diag((W**2).mean(0) - W.mean(0) ** 2) + dev.T @ dev / 3)
    torch.testing.assert_close(swag.covariance(0.5), want, atol=1e-6, rtol=0)


def test_swag_sample_covariance_matches_the_closed_form():
    m = Vec()
    swag = SWAG(m, rank=4)
    for w in iterates(6, seed=1):
        with torch.no_grad():
            m.w.copy_(w)
        swag.collect(m)
    n = 20000
    s = swag.draw(n, 0, scale=0.5)
    var = swag.variance()
    d = swag.deviations.double()
    sigma = 0.5 * (torch.diag(var) + d.T @ d / (d.shape[0] - 1))
    emp = torch.from_numpy(np.cov(s.numpy(), rowvar=False))
    # Monte Carlo: the entries' standard error is about sqrt(2 / n) of the scale (1%)
    assert (emp - sigma).abs().max() < 0.04 * sigma.diag().max()
    assert (s.mean(0) - swag.mean()["w"].double()).abs().max() < 0.04 * sigma.diag().max().sqrt()
    diag = swag.draw(n, 1, scale=0.5, cov=False)
    emp_d = torch.from_numpy(np.cov(diag.numpy(), rowvar=False))
    assert (emp_d - 0.5 * torch.diag(var)).abs().max() < 0.04 * var.max()
    # the same seed gives the same sample; a point is `draw` with n = 1
    assert torch.equal(swag.sample(3)["w"], swag.sample(3)["w"])
    torch.testing.assert_close(swag.sample(3)["w"].double(), swag.draw(1, 3)[0], atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="at least 2"):
        one = SWAG(m, rank=4)
        one.collect(m)
        one.sample(0)


def small_split(digits, n=256):
    class Split:
        train = (digits.train[0][:n], digits.train[1][:n])
        test = digits.test
        meta = {"name": "digits-subset"}

    return Split


def test_trainer_swa_is_the_mean_of_the_epoch_iterates(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=16)
    cfg = tr.TrainConfig(epochs=5, batch_size=64, lr=0.05, swa_start=2, swa_lr=0.02, swag_rank=2)
    hist = tr.train(model, small_split(digits), cfg, out=tmp_path)
    # the hand loop: the mean of the checkpoints after epochs 3, 4 and 5
    states = [io.load_tensors(tr.checkpoint_path(tmp_path, e)) for e in (3, 4, 5)]
    swa_state = io.load_tensors(tmp_path / "swa.safetensors")
    for name, _ in model.named_parameters():
        want = torch.stack([s[name] for s in states]).mean(0)
        torch.testing.assert_close(swa_state[name], want, atol=1e-6, rtol=0)
        torch.testing.assert_close(hist.swag.mean()[name], want, atol=1e-6, rtol=0)
    assert [h["lr"] for h in hist.epochs[2:]] == pytest.approx([0.02] * 3)  # SWALR, no annealing
    assert hist.epochs[1]["lr"] != pytest.approx(0.02) and "swa_n" not in hist.epochs[1]
    assert [h["swa_n"] for h in hist.epochs[2:]] == [1, 2, 3]
    meta = io.read_meta(tmp_path / "swa.safetensors")
    assert meta["budget"]["epochs"] == 5 and meta["swa"]["n_averaged"] == 3
    swag, smeta = SWAG.load(tmp_path / "swag.safetensors", model)
    assert swag.n == 3 and swag.deviations.shape[0] == 2 and smeta["epochs"] == 5


def test_swa_batchnorm_statistics_agree_with_update_bn(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes, depth=2, width=16, norm="bn")
    split = small_split(digits, 512)
    hist = tr.train(model, split, tr.TrainConfig(epochs=3, batch_size=64, swa_start=1, swag_rank=0), out=tmp_path)
    ours = io.load_tensors(tmp_path / "swa.safetensors")
    # the reference way: update_bn on the AveragedModel, batches of the evaluator's size (1024) in order
    avg = copy.deepcopy(hist.swag.averaged)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*split.train), batch_size=1024)
    torch.optim.swa_utils.update_bn(loader, avg)
    ref = dict(avg.module.named_buffers())
    stale = dict(model.named_buffers())
    for name in ("norm0.running_mean", "norm0.running_var", "norm1.running_mean", "norm1.running_var"):
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours[name], stale[name], atol=1e-3)  # not the last iterate's statistics


def test_swa_run_resumes_to_the_same_average(digits, tmp_path, monkeypatch):
    def run(out):
        torch.manual_seed(0)
        m = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=8)
        return tr.train(
            m, small_split(digits), tr.TrainConfig(epochs=4, batch_size=64, swa_start=1, swag_rank=3), out=out
        )

    full = run(tmp_path / "a")
    real = tr._save_optimizer

    def crash_at_3(path, opt, epoch, *args, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        real(path, opt, epoch, *args, **kwargs)

    monkeypatch.setattr(tr, "_save_optimizer", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(tr, "_save_optimizer", real)
    resumed = run(tmp_path / "b")
    for k, v in full.swag.state_tensors().items():
        assert torch.equal(v, resumed.swag.state_tensors()[k]), k
    assert (
        io.read_meta(tmp_path / "a" / "swa.safetensors")["weights_hash"]
        == io.read_meta(tmp_path / "b" / "swa.safetensors")["weights_hash"]
    )


@pytest.fixture(scope="module")
def start_ckpt(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("start")
    torch.manual_seed(0)
    m = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=16)
    tr.train(m, digits, tr.TrainConfig(epochs=2, batch_size=128), out=out, meta={"data": digits.meta})
    return m, out / "final.safetensors"


def test_swa_from_a_checkpoint_budget_and_start(digits, start_ckpt, tmp_path):
    model, ckpt = start_ckpt
    before = sp.WeightSpace(model).point(model)
    res = swa(model, ckpt, digits, epochs=3, lr=0.02, start=1, rank=2, out=tmp_path / "swa")
    assert res.n_averaged == 2 and res.budget == {"epochs": 5, "start_epochs": 2, "swa_epochs": 3}
    assert all(torch.equal(v, sp.WeightSpace(model).point(model)[k]) for k, v in before.items())  # not modified
    assert io.read_meta(tmp_path / "swa" / "swa.safetensors")["budget"]["epochs"] == 5
    assert io.read_meta(tmp_path / "swa" / "checkpoints" / "epoch-001.safetensors")["budget"]["epochs"] == 3
    for k in ("accuracy", "nll", "brier", "ece"):
        assert k in res.metrics and k in res.start and k in res.last
    # the same folder with another start is another run
    other = module_at(model, {k: v + 0.01 for k, v in before.items()})
    with pytest.raises(UserError, match="another start"):
        swa(model, other, digits, epochs=3, lr=0.02, start=1, rank=2, out=tmp_path / "swa")


def test_swag_ensemble_is_seeded_cached_and_uses_the_one_evaluation(digits, start_ckpt, tmp_path):
    model, ckpt = start_ckpt
    res = swa(model, ckpt, digits, epochs=3, lr=0.05, start=0, rank=3)
    a = swag_ensemble(model, res.swag, digits, n_samples=3, seed=1, cache=tmp_path / "c", budget_info=res.budget)
    b = swag_ensemble(model, res.swag, digits, n_samples=3, seed=1, cache=tmp_path / "c")
    assert all(torch.equal(p, q) for p, q in zip(a.probs, b.probs, strict=True))
    assert a.budget["epochs"] == 5 and a.kind == "swag" and a.metrics["members"] == 3
    c = swag_ensemble(model, res.swag, digits, n_samples=1, seed=2)
    assert not torch.equal(a.probs[0], c.probs[0])
    # sample 2 of seed 1 is the point swag.sample draws from seed 1 * 1_000_003 + 1
    from modescape.ensembles import ensemble_metrics, predict_proba
    from modescape.evaluate import Evaluator

    ev = Evaluator(model, {"train": digits.train, "test": digits.test})
    p = predict_proba(ev, res.swag.sample(1_000_004, 0.5), "test")
    torch.testing.assert_close(p, a.probs[1])
    assert a.metrics == ensemble_metrics(a.probs, digits.test[1])


@pytest.mark.slow
def test_cli_swa_swag_train(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "train",
            "--out",
            tmp_path / "a",
            "--model-args",
            "depth=1,width=16",
            "--epochs",
            "3",
            "--batch-size",
            "128",
            "--swa-start",
            "1",
            "--swa-lr",
            "0.02",
            "--swag-rank",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["swa_metrics"]["n"] == 2 and (tmp_path / "a" / "swa.safetensors").exists()
    code, out, err = run_cli(
        [
            "swa",
            tmp_path / "a" / "final.safetensors",
            "--epochs",
            "2",
            "--lr",
            "0.02",
            "--rank",
            "2",
            "--out",
            tmp_path / "s",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["budget"] == {"epochs": 5, "start_epochs": 3, "swa_epochs": 2} and rep["n_averaged"] == 2
    assert {"swa-result.json", "swa.png", "swa.safetensors", "swag.safetensors"} <= {
        p.name for p in (tmp_path / "s").iterdir()
    }
    code, out2, err = run_cli(
        [
            "swa",
            tmp_path / "a" / "final.safetensors",
            "--epochs",
            "2",
            "--lr",
            "0.02",
            "--rank",
            "2",
            "--out",
            tmp_path / "s",
            "--json",
        ],
        capsys,
    )  # resumes: finished
    assert code == 0 and json.loads(out2)["swa"] == rep["swa"]
    code, out, err = run_cli(["swag", tmp_path / "a", "--samples", "2", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["metrics"]["members"] == 2 and rep["budget"]["epochs"] == 3
    assert (tmp_path / "a" / "swag-samples" / "sample-002.safetensors").exists()
    for argv, pattern in (
        (
            ["swa", tmp_path / "a" / "final.safetensors", "--epochs", "2", "--start", "2", "--out", tmp_path / "x"],
            "--start",
        ),
        (["swag", tmp_path / "s" / "checkpoints"], "no swag.safetensors"),
        (["swag", tmp_path / "a" / "final.safetensors"], "--out"),
        (["swag", tmp_path / "s", "--samples", "0"], "--samples"),
        (["train", "--out", tmp_path / "y", "--swa-start", "5", "--epochs", "5"], "--swa-start"),
        (["train", "--out", tmp_path / "y", "--adaptive"], "--optimizer sam"),
    ):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and pattern in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()

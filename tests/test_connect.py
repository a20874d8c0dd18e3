"""Mode connectivity: curve training, path evaluation (BN recompute and carried buffers), summaries, FGE."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch.optim.swa_utils import update_bn

from modescape import space as sp
from modescape.connect import load_curve, reference_schedule, save_curve, train_curve
from modescape.ensembles import cyclic_lr, ensemble_curve, fge
from modescape.errors import UserError
from modescape.evaluate import Evaluator
from modescape.families.curves import Bezier, PolyChain
from modescape.paths import evaluate_path
from modescape.point_sgd import epoch_order
from modescape.train import TrainConfig, train
from modescape.zoo import build_model


def _mlp(split, seed, **args):
    torch.manual_seed(seed)
    return build_model("mlp", split.input_shape, split.num_classes, **args)


@pytest.fixture(scope="module")
def minima(digits):
    """Two digits MLPs trained from different seeds."""
    models = []
    for seed in (0, 1):
        m = _mlp(digits, seed, width=32)
        train(m, digits, TrainConfig(epochs=5, lr=0.05, batch_size=64, seed=seed), progress=False)
        models.append(m)
    return models


# the reference's learning_rate_schedule(base_lr, epoch, 20) for its 1-based epochs 1..20, worked out by hand:
# factor 1 up to alpha = epoch / 20 = 0.5, then 1 - (alpha - 0.5) / 0.4 * 0.99 down to 0.01 at alpha = 0.9
REFERENCE_CURVE_FACTORS = [1.0] * 10 + [0.87625, 0.7525, 0.62875, 0.505, 0.38125, 0.2575, 0.13375, 0.01, 0.01, 0.01]
# the reference's cyclic_learning_rate(epoch, 2, 0.05, 0.001) at iterations 0..3 of 4, epochs 0 and 1
REFERENCE_CYCLE = [0.05, 0.03775, 0.0255, 0.01325, 0.001, 0.01325, 0.0255, 0.03775]


def test_reference_schedule_matches_the_references_table():
    got = [reference_schedule(0.3, e, 20) for e in range(20)]
    assert got == pytest.approx([0.3 * f for f in REFERENCE_CURVE_FACTORS], rel=1e-12)


def test_cyclic_lr_matches_the_references_table():
    got = [cyclic_lr(e, i, 4, 2, 0.05, 0.001) for e in (0, 1) for i in range(4)]
    assert got == pytest.approx(REFERENCE_CYCLE, rel=1e-12)
    assert cyclic_lr(2, 0, 4, 2, 0.05, 0.001) == pytest.approx(0.05)  # the next cycle starts over


@pytest.mark.slow
def test_curve_training_beats_the_segment(digits, minima):
    a, b = minima
    ev = Evaluator(a, {"train": digits.train}, metrics=("loss", "error"), bn="recompute")
    line = evaluate_path((a, b), ev, n_points=11)
    run = train_curve(a, a, b, digits, kind="bezier", bends=3, epochs=5, lr=0.05, wd=5e-4, batch_size=64, seed=0)
    curve = evaluate_path(run.family, ev, n_points=11)
    assert curve.summary()["train_loss"]["max"] < line.summary()["train_loss"]["max"]
    # the endpoints were frozen: the curve still starts at a and ends at b
    space = sp.WeightSpace(a)
    for j, m in ((0, a), (2, b)):
        for k, v in space.point(m).items():
            assert torch.equal(run.family.bend(j)[k], v)
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4, 5]
    # the model passed in was not modified
    for k, v in space.point(a).items():
        assert torch.equal(v, dict(a.named_parameters())[k].detach())


def test_segment_and_summary_recomputed_independently(digits, minima):
    a, b = minima
    ev = Evaluator(a, {"train": digits.train, "test": digits.test}, metrics=("loss", "error"), bn="running")
    res = evaluate_path((a, b), ev, n_points=7)
    space = sp.WeightSpace(a)
    pa, pb = space.point(a), space.point(b)
    # metrics at each t: a plain module at (1 - t) a + t b
    net = copy.deepcopy(a).eval()
    for i, t in enumerate(res.t.tolist()):
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_((1 - t) * pa[k] + t * pb[k])
            x, y = digits.test
            out = net(x)
            assert res.metrics["test_loss"][i].item() == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-4)
            assert res.metrics["test_error"][i].item() == pytest.approx(
                (out.argmax(1) != y).double().mean().item(), abs=1e-9
            )
    s = res.summary()
    length = math.sqrt(sum(float(((pb[k] - pa[k]).double() ** 2).sum()) for k in pa))
    assert s["length"] == pytest.approx(length, rel=1e-5)
    v = res.metrics["train_loss"].numpy()
    t = res.t.numpy()
    assert s["train_loss"]["barrier_linear"] == pytest.approx(np.max(v - ((1 - t) * v[0] + t * v[-1])))
    assert s["train_loss"]["barrier_mean"] == pytest.approx(v.max() - (v[0] + v[-1]) / 2)
    assert s["train_loss"]["int"] == pytest.approx(np.trapezoid(v, t), rel=1e-5)  # uniform speed on a segment
    assert (s["train_loss"]["start"], s["train_loss"]["end"]) == (pytest.approx(v[0]), pytest.approx(v[-1]))


def test_bn_recompute_along_path_equals_update_bn(digits):
    a, b, c = (_mlp(digits, s, width=16, norm="bn") for s in (0, 1, 2))
    space = sp.WeightSpace(a)
    curve = PolyChain([space.point(a), space.point(c), space.point(b)])
    ev = Evaluator(
        a,
        {"train": digits.train, "test": digits.test},
        metrics=("loss", "error"),
        bn="recompute",
        batch_size=256,
        mode="vmap",
    )
    res = evaluate_path(curve, ev, n_points=5)
    x, y = digits.test
    loader = [(xb,) for xb in digits.train[0].split(256)]
    for i in (1, 2, 3):
        net = copy.deepcopy(a)
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(curve(res.t[i])[k])
        update_bn(loader, net)
        net.eval()
        with torch.no_grad():
            out = net(x)
        assert res.metrics["test_loss"][i].item() == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-4, abs=1e-5)
        assert res.metrics["test_error"][i].item() == pytest.approx(
            (out.argmax(1) != y).double().mean().item(), abs=1e-9
        )


@pytest.mark.slow
def test_curve_training_with_batchnorm_and_resume(digits, tmp_path):
    a, b = _mlp(digits, 0, width=16, norm="bn"), _mlp(digits, 1, width=16, norm="bn")
    kw = dict(kind="polychain", bends=4, epochs=2, lr=0.02, batch_size=128, seed=3)
    whole = train_curve(a, a, b, digits, **kw)
    ckpt = tmp_path / "curve.safetensors"
    first = train_curve(a, a, b, digits, checkpoint=ckpt, stop_after=1, **kw)
    assert len(first.history) == 1
    resumed = train_curve(a, a, b, digits, checkpoint=ckpt, **kw)
    assert len(resumed.history) == 2
    for j in range(4):
        assert torch.equal(resumed.family.anchor(j), whole.family.anchor(j))
    loaded, meta = load_curve(ckpt)
    assert isinstance(loaded, PolyChain) and meta["epoch"] == 2
    for j in range(4):
        assert torch.equal(loaded.anchor(j), whole.family.anchor(j))
    with pytest.raises(UserError, match="other settings"):
        train_curve(a, a, b, digits, checkpoint=ckpt, **{**kw, "lr": 0.5})


def test_save_load_roundtrip(tmp_path):
    pts = [{"w": torch.randn(3, 2), "b": torch.randn(3)} for _ in range(3)]
    fam = Bezier(pts)
    path = save_curve(fam, tmp_path / "c.safetensors", {"note": "x"})
    back, meta = load_curve(path)
    assert isinstance(back, Bezier) and meta["note"] == "x" and back.layout == fam.layout
    for t in (0.0, 0.3, 1.0):
        for k in ("w", "b"):
            assert torch.equal(back(t)[k], fam(t)[k])


def test_fge_learning_rate_and_ensemble(digits, minima):
    a = minima[0]
    cycle, epochs, bs, (a1, a2) = 2, 4, 256, (0.05, 0.001)
    res = fge(a, a, digits, cycle=cycle, lr=(a1, a2), epochs=epochs, batch_size=bs, seed=0)
    iters = math.ceil(digits.train[0].shape[0] / bs)
    assert res.lrs == [cyclic_lr(e, i, iters, cycle, a1, a2) for e in range(epochs) for i in range(iters)]
    assert min(res.lrs) == pytest.approx(a2, rel=1e-12) and max(res.lrs) == pytest.approx(a1, rel=1e-12)
    # snapshots at the end of epochs 1 and 3 (the LR minima of the 2-epoch cycle)
    assert [m["epoch"] for m in res.members] == [1, 3]
    # the ensemble recomputed independently: softmax of plain modules, averaged with numpy
    x, y = digits.test
    probs = []
    for snap in res.snapshots:
        net = copy.deepcopy(a).eval()
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(snap[k])
            probs.append(F.softmax(net(x).double(), dim=1).numpy())
    for m, member in enumerate(res.members, 1):
        avg = np.mean(probs[:m], axis=0)
        assert member["accuracy"] == pytest.approx(np.mean(avg.argmax(1) == y.numpy()), abs=1e-12)
        assert member["nll"] == pytest.approx(-np.mean(np.log(avg[np.arange(len(y)), y.numpy()])), rel=1e-5)
        assert member["single_accuracy"] == pytest.approx(np.mean(probs[m - 1].argmax(1) == y.numpy()), abs=1e-12)
    # the model passed in was not modified
    for k, v in sp.WeightSpace(a).point(a).items():
        assert torch.equal(v, dict(a.named_parameters())[k].detach())


def _hand_fge(model, x, y, lr, wd, bs, seed, epochs):
    """FGE with a constant learning rate written by hand: a train-mode module, torch.optim.SGD, FGE's data
    order; BatchNorm tracks its running statistics as any train-mode loop does."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for epoch in range(epochs):
        order = epoch_order(x.shape[0], seed, epoch)
        for i in range(0, x.shape[0], bs):
            idx = order[i : i + bs]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.mark.slow
def test_fge_snapshots_carry_their_own_batchnorm_statistics(digits):
    """Each snapshot is scored and saved with statistics of its own weights: under ``running`` the ones
    BatchNorm tracked during the FGE run (equal to a hand-written train-mode torch.optim.SGD loop), under
    ``recompute`` fresh ones (equal to the same loop followed by update_bn); neither is the start's."""
    m = _mlp(digits, 0, width=16, norm="bn")
    train(m, digits, TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=0), progress=False)
    lr, wd, bs, seed = 0.02, 5e-4, 200, 1  # 1797 = 8 * 200 + 197: no batch of one sample
    x, y = digits.train
    hand = _hand_fge(m, x, y, lr, wd, bs, seed, epochs=1)
    hand_state = dict(hand.state_dict())
    xt, yt = digits.test
    for bn in ("running", "recompute"):
        res = fge(m, m, digits, cycle=2, lr=(lr, lr), epochs=1, wd=wd, batch_size=bs, seed=seed, bn=bn)
        assert res.bn == bn and len(res.snapshots) == 1 == len(res.buffers)
        for k, v in res.snapshots[0].items():
            torch.testing.assert_close(v, hand_state[k], rtol=1e-5, atol=1e-6)
        ref = copy.deepcopy(hand)
        if bn == "recompute":
            update_bn([(xb,) for xb in x.split(1024)], ref)  # the evaluator's batches of 1024
            ref.eval()
        for k, v in res.buffers[0].items():
            if k.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(v, dict(ref.named_buffers())[k], rtol=1e-4, atol=1e-5)
                assert not torch.allclose(v, dict(m.named_buffers())[k])  # not the start's statistics
        with torch.no_grad():
            acc = float((ref(xt).argmax(1) == yt).double().mean())
        assert res.members[0]["single_accuracy"] == pytest.approx(acc, abs=1e-12)


def test_path_between_batchnorm_models_ends_at_each_model(digits):
    """A straight line between two BN models carries both models' statistics: under every policy its ends
    evaluate exactly as the models themselves (the bug was B evaluated with A's running statistics)."""
    a, b = (_mlp(digits, s, width=16, norm="bn") for s in (0, 1))
    for net, s in ((a, 0), (b, 1)):
        train(net, digits, TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=s), progress=False)
    data = {"train": digits.train, "test": digits.test}
    results = {}
    for bn in ("running", "recompute", "train"):
        ev = Evaluator(a, data, bn=bn, mode="loop")
        results[bn] = res = evaluate_path((a, b), ev, n_points=5)
        for i, net in ((0, a), (-1, b)):
            own = Evaluator(net, data, bn=bn, mode="loop")([sp.WeightSpace(net).point(net)])
            torch.testing.assert_close(res.metrics.values[i], own.values[0], rtol=1e-6, atol=1e-7)
    # with A's statistics at B the loss would differ: the carried buffers matter
    with_a = Evaluator(a, data, bn="running", mode="loop")([sp.WeightSpace(b).point(b)])["train_loss"][0]
    assert abs(float(with_a) - float(results["running"].metrics["train_loss"][-1])) > 1e-3


def test_ensemble_curve_matches_numpy():
    g = torch.Generator().manual_seed(0)
    probs = [F.softmax(torch.randn(50, 4, generator=g, dtype=torch.float64), 1) for _ in range(3)]
    y = torch.randint(0, 4, (50,), generator=g)
    out = ensemble_curve(probs, y)
    for m in (1, 2, 3):
        avg = np.mean([p.numpy() for p in probs[:m]], axis=0)
        assert out[m - 1]["accuracy"] == pytest.approx(np.mean(avg.argmax(1) == y.numpy()))
        assert out[m - 1]["nll"] == pytest.approx(-np.mean(np.log(avg[np.arange(50), y.numpy()])))


def test_errors(digits, minima):
    a, b = minima
    with pytest.raises(UserError, match="even"):
        fge(a, a, digits, cycle=3, epochs=4)
    with pytest.raises(UserError, match="unknown curve"):
        train_curve(a, a, b, digits, kind="spline", epochs=1)
    other = _mlp(digits, 0, width=8)
    with pytest.raises(UserError, match="shape"):
        train_curve(a, a, other, digits, epochs=1)
    ev = Evaluator(a, {"train": digits.train})
    with pytest.raises(UserError, match="at least 2 points"):
        evaluate_path((a, b), ev, n_points=1)


@pytest.mark.slow
def test_fge_restores_the_training_runs_momentum(digits, tmp_path):
    """With a constant cycle (a1 = a2) FGE is plain SGD from the run's state: equal to a hand-written loop
    of torch.optim.SGD that starts from the trainer's saved momentum buffers, in FGE's data order."""
    from modescape.train import momentum_of

    m = _mlp(digits, 0, width=16)
    train(
        m, digits, TrainConfig(epochs=2, lr=0.05, batch_size=64, wd=5e-4, seed=0), out=tmp_path / "run", progress=False
    )
    ckpt = tmp_path / "run" / "final.safetensors"
    buffers, why = momentum_of(ckpt, m)
    assert buffers is not None and "restored" in why
    assert set(buffers) == {n for n, _ in m.named_parameters()}
    assert all(float(b.abs().max()) > 0 for b in buffers.values())
    lr, wd, bs, seed = 0.01, 5e-4, 256, 3
    res = fge(
        m, ckpt, digits, cycle=2, lr=(lr, lr), epochs=1, wd=wd, batch_size=bs, seed=seed, momentum_buffers=buffers
    )
    zero = fge(m, ckpt, digits, cycle=2, lr=(lr, lr), epochs=1, wd=wd, batch_size=bs, seed=seed)

    net = copy.deepcopy(m)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for name, p in net.named_parameters():
        opt.state[p]["momentum_buffer"] = buffers[name].clone()
    x, y = digits.train
    order = epoch_order(x.shape[0], seed, 0)
    for i in range(0, x.shape[0], bs):
        idx = order[i : i + bs]
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    got = {n: float((res.snapshots[0][n] - p.detach()).abs().max()) for n, p in net.named_parameters()}
    off = {n: float((zero.snapshots[0][n] - p.detach()).abs().max()) for n, p in net.named_parameters()}
    assert max(got.values()) < 1e-6, got
    assert max(off.values()) > 1e-3, off  # zero momentum: another trajectory
    # an epoch checkpoint other than the last has no saved optimiser state
    assert momentum_of(tmp_path / "run" / "checkpoints" / "epoch-001.safetensors", m)[0] is None
    assert momentum_of(tmp_path / "run" / "checkpoints" / "epoch-002.safetensors", m)[0] is not None


@pytest.mark.slow
def test_cli_connect_path_fge(tmp_path, capsys):
    import json

    ckpts = []
    for seed in (0, 1):
        out = tmp_path / f"run{seed}"
        code, _, err = run_cli(
            ["train", "--out", out, "--epochs", "2", "--model-args", "depth=1,width=16", "--seed", seed, "--json"],
            capsys,
        )
        assert code == 0, err
        ckpts.append(out / "final.safetensors")
    cdir = tmp_path / "curve"
    code, out, err = run_cli(
        ["connect", *ckpts, "--out", cdir, "--epochs", "1", "--points", "5", "--plane-points", "4", "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert set(summary) == {"bezier", "segment"} and summary["segment"]["points"] == 5
    written = {p["name"]: p for p in json.loads((cdir / "path.json").read_text())["paths"]}
    err_t = np.array(written["segment"]["metrics"]["test_error"])  # the barrier recomputed from the values
    assert summary["segment"]["test_error"]["barrier_mean"] == pytest.approx(err_t.max() - (err_t[0] + err_t[-1]) / 2)
    for name in ("curve.safetensors", "curve.json", "path.json", "path.png", "plane.png"):
        assert (cdir / name).exists(), name
    code, out, err = run_cli(["path", cdir, "--points", "5", "--json"], capsys)
    assert code == 0, err
    again = json.loads(out)["summary"]["bezier"]
    assert again["test_loss"]["max"] == pytest.approx(summary["bezier"]["test_loss"]["max"], rel=1e-6)
    code, out, err = run_cli(["path", *ckpts, "--points", "5", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["summary"]["segment"]["test_loss"]["max"] == pytest.approx(
        summary["segment"]["test_loss"]["max"], rel=1e-6
    )
    fdir = tmp_path / "fge"
    code, out, err = run_cli(
        ["fge", ckpts[0], "--cycle", "2", "--epochs", "2", "--lr", "0.05:0.001", "--out", fdir, "--json"], capsys
    )
    assert code == 0, err
    rep = json.loads(out)
    assert [m["members"] for m in rep["members"]] == [1] and (fdir / "snapshot-01.safetensors").exists()
    assert rep["momentum"].startswith("restored from")
    code, out, err = run_cli(["fge", ckpts[0], "--cycle", "2", "--epochs", "2", "--zero-momentum", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["momentum"].startswith("zero")
    # user errors: one line, exit status 2
    for argv, pattern in (
        (["fge", ckpts[0], "--lr", "fast"], "A1:A2"),
        (["fge", ckpts[0], "--cycle", "3"], "even"),
        (["path", tmp_path], "not a curve folder"),
        (["connect", *ckpts, "--out", tmp_path / "c2", "--curve", "spline"], "unknown curve"),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and pattern in err and "Traceback" not in err, err


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {src!r})
torch.set_num_threads(1)
from modescape import distributed
from modescape.connect import train_curve
from modescape.zoo import build_model, load_dataset
distributed.init()
split = load_dataset("digits")
torch.manual_seed(0); a = build_model("mlp", split.input_shape, 10, depth=1, width=16)
torch.manual_seed(1); b = build_model("mlp", split.input_shape, 10, depth=1, width=16)
train_curve(a, a, b, split, kind="bezier", bends=3, epochs=1, lr=0.05, batch_size=64, seed=0, checkpoint=sys.argv[1],
            progress=False)
distributed.finish()
"""


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # one torchrun job at a time: each starts 3 processes on 2 cores
def test_torchrun_two_ranks_match_one_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(src=src))
    env = {**os.environ, "MODESCAPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
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
            str(tmp_path / "two.safetensors"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    c1, m1 = load_curve(tmp_path / "one.safetensors")
    c2, m2 = load_curve(tmp_path / "two.safetensors")
    # each rank takes half of every minibatch; the all-reduced gradient is the full-batch gradient
    torch.testing.assert_close(c2.anchor(1), c1.anchor(1), rtol=1e-4, atol=1e-5)
    assert m2["history"][-1]["train_loss"] == pytest.approx(m1["history"][-1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("bends", [3, 4])
def test_curve_steps_through_the_flat_binding_equal_the_functional_steps(digits, bends):
    """`sgd_epoch`'s fast path (w(t) written into the model's flat parameters, the gradient read from one
    flat vector, the L2 penalty's gradient added by hand) and its functional path (w(t) through autograd,
    `functional_call`, the penalty in the loss) give the same bends and losses after an epoch, on a
    BatchNorm MLP (batch statistics) with weight decay."""
    from modescape.point_sgd import sgd_epoch

    model = _mlp(digits, 0, width=16, norm="bn")
    a, b = sp.WeightSpace(model).point(model), sp.WeightSpace(model).point(_mlp(digits, 1, width=16, norm="bn"))
    x, y = digits.train
    runs = []
    for fast in (False, True):
        fam = Bezier.on_segment(a, b, bends)
        params = [p for p in fam.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        ev = Evaluator(model, (x[:2], y[:2]), bn="train", mode="loop")

        def make_point(gen, fam=fam):
            flat = fam.flat(torch.rand((), generator=gen, dtype=torch.float64))
            return fam.layout.unflatten(flat), flat

        class Step:
            def write(self, gen, out, fam=fam):
                return fam.write_flat(torch.rand((), generator=gen, dtype=torch.float64), out)

            def pull(self, coefs, grad, fam=fam):
                fam.pull_flat(coefs, grad)

        stats = sgd_epoch(
            ev,
            params,
            opt,
            None if fast else make_point,
            x,
            y,
            0,
            3,
            64,
            5e-3,
            lambda i, n: 0.05,
            lambda k: None,
            flat_step=Step() if fast else None,
        )
        runs.append((stats, [p.detach().clone() for p in params]))
    (s0, p0), (s1, p1) = runs
    assert s0["loss"] == pytest.approx(s1["loss"], rel=1e-5) and s0["error"] == s1["error"]
    for u, v in zip(p0, p1, strict=True):
        assert (u - v).abs().max() < 1e-5 * max(1.0, float(u.abs().max()))
    assert not torch.equal(p0[0], Bezier.on_segment(a, b, bends).anchor(1))  # the bends moved

"""The one ensemble evaluation: accuracy, NLL, Brier, ECE and disagreement recomputed in numpy; the
reliability diagram behind ECE; deep ensembles of checkpoints (resumable, budgets from sidecars); FGE's
budget; the `ensemble` command."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from modescape import train as tr
from modescape.ensembles import (
    budget_epochs,
    calibration_error,
    deep_ensemble,
    ensemble_metrics,
    evaluate_ensemble,
    fge,
    reliability,
)
from modescape.errors import UserError
from modescape.zoo import build_model


def numpy_metrics(members, y, bins=15):
    """Everything from scratch in numpy (float64)."""
    members = [np.asarray(p, dtype=np.float64) for p in members]
    avg = np.mean(members, axis=0)
    n, c = avg.shape
    pred = avg.argmax(1)
    acc = float((pred == y).mean())
    nll = float(-np.log(avg[np.arange(n), y]).mean())
    onehot = np.eye(c)[y]
    brier = float(((avg - onehot) ** 2).sum(1).mean())
    conf = avg.max(1)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    preds = [p.argmax(1) for p in members]
    pairs = [(i, j) for i in range(len(members)) for j in range(i + 1, len(members))]
    dis = float(np.mean([(preds[i] != preds[j]).mean() for i, j in pairs])) if pairs else 0.0
    return {"accuracy": acc, "nll": nll, "brier": brier, "ece": ece, "disagreement": dis}


def random_members(k=3, n=600, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    members = []
    for _ in range(k):
        logits = rng.normal(size=(n, c)) * 2.0
        logits[np.arange(n), y] += rng.uniform(0, 3, n)  # mostly right, not always
        p = np.exp(logits - logits.max(1, keepdims=True))
        members.append(p / p.sum(1, keepdims=True))
    return members, y


@pytest.mark.parametrize("k", [1, 3])
def test_ensemble_metrics_equal_a_numpy_recomputation(k):
    members, y = random_members(k)
    got = ensemble_metrics([torch.from_numpy(p).float() for p in members], torch.from_numpy(y))
    want = numpy_metrics([torch.from_numpy(p).float().double().numpy() for p in members], y)
    assert got["members"] == k
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    assert 0 < got["ece"] < 0.5 and (k == 1 or got["disagreement"] > 0)


def test_ece_by_hand_and_its_reliability_bins():
    # confidences 0.9 (right), 0.9 (wrong), 0.65 (right), 0.25 (right): bins 13 = (13/15, 14/15], 9 and 3
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.65, 0.35, 0.0], [0.25, 0.24, 0.51]], dtype=torch.float64)
    probs[3] = torch.tensor([0.25, 0.24, 0.23], dtype=torch.float64)  # ECE reads max p only
    y = torch.tensor([0, 0, 0, 0])
    want = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.65) + 0.25 * abs(1 - 0.25)
    assert calibration_error(probs, y) == pytest.approx(want, abs=1e-12)
    r = reliability(probs, y)
    assert r["count"].sum() == 4 and r["count"][13] == 2 and r["count"][9] == 1 and r["count"][3] == 1
    assert r["accuracy"][13] == 0.5 and r["confidence"][9] == pytest.approx(0.65) and torch.isnan(r["accuracy"][0])


def test_evaluate_ensemble_members_curve_and_budget():
    members, y = random_members(3, seed=1)
    probs = [torch.from_numpy(p) for p in members]
    res = evaluate_ensemble(probs, torch.from_numpy(y), "deep", {"epochs": 30}, labels=["a", "b", "c"])
    assert [m["label"] for m in res.members] == ["a", "b", "c"]
    assert res.members[1]["nll"] == pytest.approx(numpy_metrics([members[1]], y)["nll"], abs=1e-12)
    assert [c["members"] for c in res.curve] == [1, 2, 3] and res.curve[-1] == res.metrics
    d = res.to_dict()
    assert d["budget"] == {"epochs": 30} and d["kind"] == "deep"
    json.dumps(d)
    with pytest.raises(UserError, match="at least one member"):
        ensemble_metrics([], torch.from_numpy(y))


def test_budget_epochs_from_sidecars():
    assert budget_epochs({"epoch": 7}) == 7
    assert budget_epochs({"epoch": 3, "start": {"epochs": 10}}) == 13
    assert budget_epochs({"epoch": 3, "budget": {"epochs": 12}}) == 12
    assert budget_epochs({"epoch": 3, "start": {"epochs": None}}) is None
    assert budget_epochs({}) is None


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    paths, models = [], []
    for seed, epochs in ((0, 2), (1, 3)):
        torch.manual_seed(seed)
        m = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=16)
        tr.train(
            m,
            digits,
            tr.TrainConfig(epochs=epochs, batch_size=128, seed=seed),
            out=out / f"r{seed}",
            meta={"data": digits.meta},
        )
        paths.append(out / f"r{seed}" / "final.safetensors")
        models.append(m)
    return paths, models


def test_deep_ensemble_of_checkpoints_by_hand_and_resumable(digits, runs, tmp_path, monkeypatch):
    paths, models = runs
    res = deep_ensemble(models[0], paths, digits, cache=tmp_path)
    x, y = digits.test
    with torch.no_grad():
        hand = [torch.softmax(m(x).double(), -1) for m in models]
    want = numpy_metrics([p.numpy() for p in hand], y.numpy())
    for key, v in want.items():
        assert res.metrics[key] == pytest.approx(v, abs=1e-6), key
    assert res.budget == {"epochs": 5, "members": [2, 3]} and res.kind == "deep" and res.bn == "running"
    # a rerun reads each member's probabilities back instead of evaluating again
    import modescape.ensembles as ens

    monkeypatch.setattr(ens, "predict_proba", lambda *a, **k: (_ for _ in ()).throw(AssertionError("evaluated")))
    again = deep_ensemble(models[0], paths, digits, cache=tmp_path)
    assert again.metrics == res.metrics


def test_deep_ensemble_of_modules_and_fge_budget(digits, runs):
    paths, models = runs
    res = deep_ensemble(models[0], models, digits, budgets=[2, 3])
    assert res.budget["epochs"] == 5 and res.members[0]["label"] == "member 1"
    assert deep_ensemble(models[0], models, digits).budget["epochs"] is None
    f = fge(models[0], paths[0], digits, cycle=2, lr=(0.05, 0.01), epochs=1, batch_size=256)
    assert f.budget == {"epochs": 3, "start_epochs": 2, "fge_epochs": 1} and f.to_dict()["budget"] == f.budget
    assert fge(models[0], models[0], digits, cycle=2, epochs=1, batch_size=256).budget["epochs"] is None


@pytest.mark.slow
def test_cli_ensemble(runs, tmp_path, capsys):
    paths, _ = runs
    code, out, err = run_cli(["ensemble", *paths, "--out", tmp_path / "e", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert rep["budget"]["epochs"] == 5 and rep["metrics"]["members"] == 2 and len(rep["members"]) == 2
    assert {"ensemble.json", "ensemble.png", "reliability.png", "members"} <= {
        p.name for p in (tmp_path / "e").iterdir()
    }
    code, out2, err = run_cli(["ensemble", *paths, "--out", tmp_path / "e", "--json"], capsys)
    assert code == 0 and json.loads(out2)["metrics"] == rep["metrics"]
    code, out, err = run_cli(["ensemble", *paths], capsys)
    assert code == 0 and "ensemble" in out and "budget" in out
    for argv, pattern in (
        (["ensemble", paths[0], tmp_path / "missing.safetensors"], "not found"),
        (["ensemble", paths[0], "--bn", "fresh"], "--bn"),
    ):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and pattern in err, err

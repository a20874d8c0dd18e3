"""The trainer: reaches the accuracy the demo promises, resumes bit for bit, schedules as documented."""

import pytest
import torch

from modescape import io
from modescape import train as tr
from modescape.errors import UserError
from modescape.zoo import build_model


@pytest.mark.slow
def test_digits_mlp_reaches_95_percent(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    hist = tr.train(model, digits, tr.TrainConfig(), out=tmp_path)
    assert hist.last["test_accuracy"] >= 0.95
    assert (tmp_path / "final.safetensors").exists()
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors"))
    assert files == [f"epoch-{i:03d}.safetensors" for i in range(21)]
    _, meta = io.load_model(tmp_path / "checkpoints" / "epoch-020.safetensors")
    assert meta["epoch"] == 20 and meta["metrics"]["test_accuracy"] == hist.last["test_accuracy"]


def small_run(split, out, cfg):
    torch.manual_seed(cfg.seed)
    m = build_model("mlp", split.input_shape, split.num_classes, depth=1, width=16)
    return m, tr.train(m, split, cfg, out=out)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sam"])
def test_resume_after_crash_is_bit_identical(digits, tmp_path, monkeypatch, optimizer):
    cfg = tr.TrainConfig(
        epochs=3, batch_size=128, lr=0.01 if optimizer == "adam" else 0.05, optimizer=optimizer, seed=4
    )
    full, _ = small_run(digits, tmp_path / "a", cfg)

    real = tr._save_optimizer

    def crash_at_3(path, opt, epoch, config, history, identity, **kw):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        real(path, opt, epoch, config, history, identity, **kw)

    monkeypatch.setattr(tr, "_save_optimizer", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        small_run(digits, tmp_path / "b", cfg)
    monkeypatch.setattr(tr, "_save_optimizer", real)
    assert not (tmp_path / "b" / "final.safetensors").exists()
    resumed, hist = small_run(digits, tmp_path / "b", cfg)
    assert [h["epoch"] for h in hist.epochs] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_resume_refuses_other_settings(digits, tmp_path):
    small_run(digits, tmp_path, tr.TrainConfig(epochs=1, batch_size=256))
    with pytest.raises(UserError, match="different settings"):
        small_run(digits, tmp_path, tr.TrainConfig(epochs=1, batch_size=256, lr=0.1))


def test_resume_refuses_another_model_or_data(digits, tmp_path):
    cfg = tr.TrainConfig(epochs=1, batch_size=256)
    small_run(digits, tmp_path, cfg)
    torch.manual_seed(0)
    tanh = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=16, activation="tanh")
    with pytest.raises(UserError, match="another model"):
        tr.train(tanh, digits, cfg, out=tmp_path)
    from modescape.zoo import load_dataset

    other = load_dataset("digits", split_seed=1)
    with pytest.raises(UserError, match="another data"):
        small_run(other, tmp_path, cfg)
    small_run(digits, tmp_path, cfg)  # the same run resumes (here: is already finished)


def test_schedules():
    cfg = tr.TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert tr.learning_rate(cfg, 0, 0, 5) == pytest.approx(0.1)
    assert tr.learning_rate(cfg, 5, 0, 5) == pytest.approx(0.05)
    # per-step cosine decay: torch's CosineAnnealingLR stepped once per step over all 50 steps
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    for step in range(50):
        assert tr.learning_rate(cfg, step // 5, step % 5, 5) == pytest.approx(
            sched.get_last_lr()[0], rel=1e-9, abs=1e-12
        )
        opt.step()
        sched.step()
    step = tr.TrainConfig(epochs=9, lr=0.1, schedule="step", gamma=0.5)
    assert [tr.learning_rate(step, e, 0, 1) for e in (0, 2, 3, 6, 8)] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.025])
    assert tr.learning_rate(tr.TrainConfig(schedule="constant", lr=0.3), 4, 1, 2) == 0.3
    assert torch.equal(tr.epoch_order(10, 1, 2), tr.epoch_order(10, 1, 2))
    assert not torch.equal(tr.epoch_order(100, 1, 2), tr.epoch_order(100, 1, 3))
    with pytest.raises(UserError, match="unknown schedule"):
        tr.TrainConfig(schedule="linear").check()


def test_divergence_is_a_clear_error(digits):
    torch.manual_seed(0)
    m = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=8)
    with pytest.raises(UserError, match="diverged"):
        tr.train(m, digits, tr.TrainConfig(epochs=2, lr=1e6, momentum=0.0))


def test_runs_saved_before_new_settings_resume_and_sam_runs_give_momentum(digits, tmp_path):
    import json

    cfg = tr.TrainConfig(epochs=2, batch_size=256, optimizer="sam")
    m, _ = small_run(digits, tmp_path, cfg)
    side = tmp_path / "trainer.json"
    saved = json.loads(side.read_text())
    for key in ("rho", "adaptive", "eta", "swa_start", "swa_lr", "swa_anneal_epochs", "swa_anneal", "swag_rank"):
        saved["config"].pop(key)  # as written before these settings existed (defaults then: what they mean)
    saved["config"]["optimizer"] = "sgd"
    side.write_text(json.dumps(saved))
    small_run(digits, tmp_path, tr.TrainConfig(epochs=2, batch_size=256))  # the same run: resumes (finished)
    with pytest.raises(UserError, match="different settings"):
        small_run(digits, tmp_path, tr.TrainConfig(epochs=2, batch_size=256, rho=0.1))
    saved["config"]["optimizer"] = "sam"
    side.write_text(json.dumps(saved))
    buffers, why = tr.momentum_of(tmp_path / "final.safetensors", m)  # SAM's base optimiser is SGD
    assert buffers is not None and set(buffers) == {n for n, _ in m.named_parameters()}, why


def test_optimiser_state_is_used_only_with_its_own_weights(digits, tmp_path):
    """trainer.json names the weights its momentum belongs to: a checkpoint rewritten in place (e.g. a
    permuted copy written over final.safetensors) keeps its epoch but not its hash, and the momentum is
    refused for it instead of being restored in the wrong basis."""
    from modescape.symmetry import apply, infer_spec, random_perms

    torch.manual_seed(0)
    m = build_model("mlp", digits.input_shape, digits.num_classes, depth=1, width=8)
    tr.train(m, digits, tr.TrainConfig(epochs=1, lr=0.05, batch_size=128), out=tmp_path / "run", progress=False)
    final = tmp_path / "run" / "final.safetensors"
    assert tr.momentum_of(final, m)[0] is not None
    spec = infer_spec(m)
    m.load_state_dict(apply(spec, m.state_dict(), random_perms(spec, seed=1)))
    io.save_checkpoint(final, m, io.read_meta(final))  # same epoch in the sidecar, other weights
    buffers, why = tr.momentum_of(final, m)
    assert buffers is None and "belongs to other weights" in why

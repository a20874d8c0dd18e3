"""Hugging Face models built from a config (never downloaded) through modescape.hf: the adapter's inputs and
outputs, checkpoints, surfaces, curves, Hessian / GGN and sharpness, and the GPT-2 permutation spec."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are built from configs: nothing may be downloaded
import transformers  # noqa: E402,F401  (the `hf` extra; `make test` installs it)
from conftest import run_cli  # noqa: E402

from modescape import curvature as cv  # noqa: E402
from modescape import hf, io, sharpness  # noqa: E402
from modescape import space as sp  # noqa: E402
from modescape.directions import random_directions  # noqa: E402
from modescape.errors import UserError  # noqa: E402
from modescape.evaluate import Evaluator, cross_entropy  # noqa: E402
from modescape.families import Plane  # noqa: E402
from modescape.landscape import sweep  # noqa: E402
from modescape.symmetry import apply, infer_spec, invert, random_perms, weight_matching  # noqa: E402
from modescape.zoo import load_dataset  # noqa: E402

SMALL = dict(n_layer=1, n_embd=16, n_head=2)


@pytest.fixture(scope="module")
def add():
    return load_dataset("modular-add", p=5, train_fraction=0.6)


def gpt2(split, seed=0, **args):
    torch.manual_seed(seed)
    return hf.build("gpt2", split.input_shape, split.num_classes, **{**SMALL, **args})


def test_models_are_built_from_a_config_and_return_logits(add):
    model = gpt2(add, n_layer="1", n_embd="16", n_head="2")  # strings, as from --model-args
    cfg = model.model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_positions) == (1, 16, add.num_classes, 3)
    assert cfg.resid_pdrop == cfg.attn_pdrop == cfg.embd_pdrop == 0.0 and cfg._attn_implementation == "eager"
    x = add.train[0][:4]
    assert model(x).shape == (4, add.num_classes)  # the last position's logits: a tensor, not a ModelOutput
    every = gpt2(add, output="all")
    torch.testing.assert_close(every(x)[:, -1], gpt2(add)(x))
    assert model.modescape_spec == {
        "name": "hf:gpt2",
        "args": {**SMALL, "output": "last"},
        "input_shape": [3],
        "num_classes": add.num_classes,
    }
    torch.manual_seed(0)
    bert = hf.build(
        "bert",
        add.input_shape,
        add.num_classes,
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
    )
    assert bert(x).shape == (4, add.num_classes) and bert.model.config.pad_token_id is None
    with pytest.raises(UserError, match="unknown argument 'n_layers'"):
        gpt2(add, n_layers=2)
    with pytest.raises(UserError, match="must be a int"):
        gpt2(add, n_layer="two")
    with pytest.raises(UserError, match="hf:gpt2, hf:bert"):
        hf.build("llama", (3,), 6)
    with pytest.raises(UserError, match="sequence task"):
        hf.build("gpt2", (1, 8, 8), 10)


def test_checkpoints_rebuild_hf_models_from_their_sidecar(add, tmp_path):
    model = gpt2(add)
    path = io.save_checkpoint(tmp_path / "m.safetensors", model, {"data": add.meta})
    again, meta = io.load_model(path)
    assert isinstance(again, hf.HFModel) and meta["model"]["name"] == "hf:gpt2"
    x = add.test[0]
    torch.testing.assert_close(again(x), model(x))


def test_surface_curve_hessian_and_sharpness_through_the_adapter(add):
    from modescape.connect import train_curve

    a, b = gpt2(add, 0), gpt2(add, 1)
    ev = Evaluator(a, {"train": add.train, "test": add.test})
    dx, dy = random_directions(a, 2, normalization="filter", seed=0)
    ds = sweep(Plane(ev.point0, dx, dy), ev, {"x": "-1:1:3", "y": "0:1:2"})
    assert float(ds["train_loss"].sel(x=0.0, y=0.0)) == pytest.approx(float(ev([ev.point0])["train_loss"][0]), rel=1e-5)
    run = train_curve(a, a, b, add, epochs=1, batch_size=8, lr=0.01)
    mid = run.family(torch.tensor([[0.5]], dtype=torch.float64))
    assert torch.isfinite(ev(mid)["train_loss"]).all()
    block = "model.transformer.h.0.attn.c_proj"
    for kind in ("hessian", "ggn"):
        op = cv.curvature_operator(kind, ev, params=block, source="train")
        dense = op.dense().double()
        top = torch.linalg.eigvalsh(0.5 * (dense + dense.T))[-1]
        assert cv.eigenvalues(op, k=1, tol=1e-6).values[0] == pytest.approx(float(top), rel=1e-3)
    res = sharpness.measure_all(
        a, add.train, measures=["keskar", "filter_1d"], options={"keskar": {"steps": 2}, "filter_1d": {"n_points": 5}}
    )
    assert res["keskar"] >= 0 and res["filter_1d"] >= 0


def test_bert_hessian_through_the_adapter(add):
    torch.manual_seed(0)
    bert = hf.build(
        "bert",
        add.input_shape,
        add.num_classes,
        num_hidden_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        intermediate_size=16,
    )
    res = cv.eigenvalues(bert, add.train, k=2, params="model.bert.encoder.layer.0.output", tol=1e-5)
    assert res.converged.all() and res.values[0] >= res.values[1]


def test_gpt2_spec_preserves_the_function_and_a_planted_permutation_is_recovered(add):
    model = gpt2(add, n_layer=2, n_embd=16, n_head=4).double()
    spec = infer_spec(model)  # the model's own spec, written once for the GPT-2 family
    assert spec.sizes["residual"] == 16 and spec.sizes["model.transformer.h.1.attn:heads"] == 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    x, y = add.train
    for _ in range(40):
        loss = cross_entropy(model(x), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    perms = random_perms(spec, 2)
    twin = gpt2(add, 7, n_layer=2, n_embd=16, n_head=4).double().eval()
    twin.load_state_dict(apply(spec, model.state_dict(), perms))  # lm_head.weight (tied) permuted alike
    xs = torch.cat([add.train[0], add.test[0]])
    with torch.no_grad():
        assert (twin(xs) - model(xs)).abs().max() <= 1e-5
    a = {k: v.detach() for k, v in model.named_parameters()}
    found = weight_matching(spec, a, apply(spec, a, perms))
    inv = invert(perms)
    assert all(torch.equal(found[p], inv[p]) for p in spec.sizes)
    with pytest.raises(UserError, match="GPT-2 family"):
        infer_spec(
            hf.build(
                "bert",
                add.input_shape,
                add.num_classes,
                num_hidden_layers=1,
                hidden_size=8,
                num_attention_heads=2,
                intermediate_size=16,
            )
        )
    assert sp.WeightSpace(model).numel > 0


@pytest.mark.slow
def test_cli_trains_hf_gpt2_and_measures_its_ggn(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "train",
            "--out",
            tmp_path,
            "--model",
            "hf:gpt2",
            "--model-args",
            "n_layer=1,n_embd=16,n_head=2",
            "--data",
            "modular-add",
            "--data-args",
            "p=5",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--optimizer",
            "adamw",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            "hessian",
            tmp_path / "final.safetensors",
            "--curvature",
            "ggn",
            "--top-k",
            "1",
            "--params",
            "model.transformer.h.0.mlp.c_proj",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    import json

    res = json.loads(out)
    assert res["curvature"] == "ggn" and list(res["groups"].values())[0]["eigenvalues"]["values"][0] > 0

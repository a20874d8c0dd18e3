"""The zoo transformer and the sequence tasks: data, model, sequence losses through the Evaluator, training,
and every method on a trained transformer (lines, filter- and head-normalised planes, curves, FGE, SWA,
Hessian spectra and sharpness, alignment)."""

import codecs
import importlib

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from modescape import curvature as cv
from modescape import directions as D
from modescape import paths, sharpness
from modescape import space as sp
from modescape.errors import UserError
from modescape.evaluate import Evaluator, cross_entropy
from modescape.families import Plane
from modescape.landscape import sweep
from modescape.symmetry import align, apply, infer_spec, invert, random_perms, weight_matching
from modescape.symmetry.spec import head_blocks
from modescape.train import TrainConfig, train
from modescape.zoo import build_model, corpus_text, load_dataset

P = 7  # modular addition mod 7: 49 equations


def tiny(split, seed=0, **args):
    torch.manual_seed(seed)
    kw = dict(width=16, heads=2, layers=1)
    kw.update(args)
    return build_model("transformer", split.input_shape, split.num_classes, **kw)


def fit(model, split, steps=150, lr=1e-2, wd=0.1):
    """Full-batch AdamW: a transformer that has memorised its training set."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    x, y = split.train
    for _ in range(steps):
        loss = cross_entropy(model(x), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def add():
    return load_dataset("modular-add", p=P, train_fraction=0.6)


@pytest.fixture(scope="module")
def trained(add):
    torch.manual_seed(0)
    return fit(tiny(add, 0), add), fit(tiny(add, 1), add)


# -- the tasks ------------------------------------------------------------------------------------


def test_modular_add_holds_every_equation_once_split_by_the_train_fraction(add):
    x = torch.cat([add.train[0], add.test[0]])
    y = torch.cat([add.train[1], add.test[1]])
    assert x.dtype == torch.int64 and add.input_shape == (3,) and add.num_classes == P + 1
    assert sorted((int(a) * P + int(b)) for a, b, _ in x) == list(range(P * P))  # every pair once
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % P) and bool((x[:, 2] == P).all())  # [a, b, =] -> a + b mod p
    assert len(add.train[1]) == round(0.6 * P * P)
    again = load_dataset("modular-add", p=P, train_fraction=0.6)
    other = load_dataset("modular-add", p=P, train_fraction=0.6, split_seed=1)
    assert torch.equal(again.train[0], add.train[0]) and not torch.equal(other.train[0], add.train[0])
    with pytest.raises(UserError, match="train_fraction"):
        load_dataset("modular-add", p=P, train_fraction=1.0)


def test_char_lm_reads_the_zen_of_python_as_shifted_windows(capsys):
    import this  # noqa: F401  (prints the Zen: captured)

    capsys.readouterr()
    assert corpus_text("zen") == codecs.decode(this.s, "rot13")
    split = load_dataset("char-lm", length=16, test_fraction=0.25)
    text = corpus_text("zen")
    chars = sorted(set(text))
    assert split.num_classes == len(chars) and split.input_shape == (16,)
    (x, y), (xt, _) = split.train, split.test
    assert x.shape[1:] == y.shape[1:] == (16,) and torch.equal(x[1:, :15], x[:-1, 1:])  # stride 1
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the next character
    decode = "".join(chars[int(i)] for i in x[0])
    assert text.startswith(decode)
    cut = int(len(text) * 0.75)
    assert "".join(chars[int(i)] for i in xt[0]) == text[cut : cut + 16]  # test windows from the last quarter
    assert split.meta["text_sha256"] == load_dataset("char-lm").meta["text_sha256"]
    with pytest.raises(UserError, match="module"):
        load_dataset("char-lm", text="module:no_such_module_here")


# -- the model --------------------------------------------------------------------------------------


def test_transformer_outputs_ties_and_traces(add):
    model = tiny(add, tied=True, layers=2)
    assert model.head.weight is model.tok.weight
    x = add.train[0][:5]
    assert model(x).shape == (5, P + 1)
    seq = tiny(add, output="all")
    assert seq(x).shape == (5, 3, P + 1)
    gm = fx.symbolic_trace(model)  # plain modules: fx traces it, torch.func runs it
    torch.testing.assert_close(gm(x), model(x))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    with pytest.raises(UserError, match="vocab == num_classes"):
        build_model("transformer", (3,), 8, vocab=9, tied=True)
    with pytest.raises(UserError, match="multiple of heads"):
        build_model("transformer", (3,), 8, width=10, heads=4)


def test_causal_attention_ignores_later_positions(add):
    model = tiny(add, output="all").eval()
    x = add.train[0][:4].clone()
    y = x.clone()
    y[:, 2] = (y[:, 2] + 1) % (P + 1)
    torch.testing.assert_close(model(x)[:, :2], model(y)[:, :2])  # positions 0, 1 do not see position 2
    assert not torch.allclose(model(x)[:, 2], model(y)[:, 2])


# -- sequence losses through the Evaluator -----------------------------------------------------------


def test_sequence_outputs_give_mean_per_token_loss_and_accuracy():
    split = load_dataset("char-lm", length=8)
    model = build_model("transformer", split.input_shape, split.num_classes, width=16, heads=2, output="all")
    x, y = split.train[0][:50], split.train[1][:50]
    ev = Evaluator(model, (x, y))
    m = ev([ev.point0]).row(0)
    with torch.no_grad():
        out = model(x)
    ref = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    assert m["loss"] == pytest.approx(float(ref), rel=1e-5)  # the mean per token
    assert m["accuracy"] == pytest.approx(float((out.argmax(-1) == y).double().mean()), abs=1e-12)
    vm = Evaluator(model, (x, y), mode="vmap")([ev.point0, ev.point0]).values
    torch.testing.assert_close(vm[0], vm[1])
    torch.testing.assert_close(vm[0].float(), torch.tensor([m["loss"], m["accuracy"]]).float())
    last = Evaluator(build_model("transformer", split.input_shape, split.num_classes, width=16, heads=2), (x, y))
    with pytest.raises(UserError, match="output=all"):  # a last-position model on sequence targets
        last([last.point0])


def test_two_dimensional_metrics_are_bit_identical_to_the_plain_formula():
    """[N, C] outputs with [N] targets: per-sample ``F.cross_entropy`` summed in float64, bit for bit (the
    sequence path must not change the 2-D one)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
    x, y = torch.randn(60, 5), torch.randint(0, 4, (60,))
    ev = Evaluator(model, (x, y), batch_size=25)
    pts = sp.stack([ev.point0, sp.scale(ev.point0, 1.1), sp.scale(ev.point0, 0.5)])
    got = ev.measure(pts, None, vectorised=False)
    loss = torch.zeros(3, dtype=torch.float64)
    correct = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, 60, 25):
            xb, yb = x[i : i + 25], y[i : i + 25]
            out = torch.stack(
                [torch.func.functional_call(model, {k: v[j] for k, v in pts.items()}, (xb,)) for j in range(3)]
            )
            k, b = out.shape[:2]
            per = F.cross_entropy(out.reshape(k * b, -1), yb.repeat(k), reduction="none").reshape(k, b)
            loss += per.double().sum(1)
            correct += (out.argmax(-1) == yb).double().sum(1)
    assert torch.equal(got, torch.stack([loss / 60, correct / 60], 1))


# -- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_learns_modular_addition_and_checkpoints_every_k_epochs(add, tmp_path):
    model = tiny(add)
    hist = train(
        model,
        add,
        TrainConfig(
            epochs=60, batch_size=10_000, lr=1e-2, wd=0.1, optimizer="adamw", schedule="constant", save_every=25
        ),
        out=tmp_path,
        progress=False,
    )
    assert hist.last["train_accuracy"] == 1.0 and hist.last["train_loss"] < 0.1 * hist.epochs[0]["train_loss"]
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors"))
    assert saved == ["epoch-000.safetensors", "epoch-025.safetensors", "epoch-050.safetensors", "epoch-060.safetensors"]


@pytest.mark.slow
def test_cli_trains_a_transformer_on_modular_addition_and_a_char_lm(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "train",
            "--out",
            tmp_path / "add",
            "--model",
            "transformer",
            "--model-args",
            "width=16,heads=2",
            "--data",
            "modular-add",
            "--data-args",
            f"p={P}",
            "--epochs",
            "3",
            "--batch-size",
            "1000",
            "--lr",
            "0.01",
            "--optimizer",
            "adamw",
            "--wd",
            "1",
            "--schedule",
            "constant",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            "train",
            "--out",
            tmp_path / "lm",
            "--model",
            "transformer",
            "--model-args",
            "width=16,heads=2,output=all",
            "--data",
            "char-lm",
            "--data-args",
            "length=8",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--lr",
            "0.003",
            "--optimizer",
            "adam",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            "hessian",
            tmp_path / "lm" / "final.safetensors",
            "--top-k",
            "1",
            "--params",
            "blocks.0.mlp",
            "--n-train",
            "32",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err


# -- every method on a trained transformer -------------------------------------------------------------


def test_filter_normalisation_is_per_row_and_head_normalisation_per_head(trained):
    model = trained[0]
    w = dict(model.named_parameters())
    f = D.random_direction(model, "filter", seed=3)
    for name in ("tok.weight", "pos.weight", "blocks.0.attn.q.weight", "blocks.0.attn.o.weight"):
        torch.testing.assert_close(f[name].norm(dim=1), w[name].detach().norm(dim=1))  # rows
    h = D.random_direction(model, "head", seed=3)
    heads = head_blocks(infer_spec(model))
    assert heads["blocks.0.attn.q.weight"] == (0, 8) and heads["blocks.0.attn.o.weight"] == (1, 8)
    for name, axis in (("blocks.0.attn.q.weight", 0), ("blocks.0.attn.v.weight", 0), ("blocks.0.attn.o.weight", 1)):

        def per_head(t, axis=axis):
            return t.detach().movedim(axis, 0).reshape(2, -1).norm(dim=1)

        torch.testing.assert_close(per_head(h[name]), per_head(w[name]))
        assert not torch.allclose(h[name].norm(dim=1), w[name].detach().norm(dim=1))  # not per row
    torch.testing.assert_close(h["tok.weight"], f["tok.weight"])  # outside attention: as filter
    assert float(h["blocks.0.attn.q.bias"].abs().sum()) == 0.0  # biases ignored (biasbn)
    with pytest.raises(UserError, match="head_blocks"):
        D.random_direction(dict(w), "head")


def test_line_and_filter_normalised_plane_on_a_transformer(add, trained):
    a, b = trained
    ev = Evaluator(a, {"train": add.train, "test": add.test})
    ends = ev([sp.WeightSpace(a).point(a), sp.WeightSpace(b).point(b)])
    line = paths.evaluate_path((a, b), ev, n_points=5)
    torch.testing.assert_close(line.metrics["train_loss"][[0, -1]], ends["train_loss"])
    assert line.summary()["train_loss"]["barrier_linear"] >= 0
    dx, dy = D.random_directions(a, 2, normalization="filter", seed=0)
    ds = sweep(Plane(ev.point0, dx, dy), ev, {"x": "-1:1:3", "y": "-1:1:3"})
    centre = float(ds["train_loss"].sel(x=0.0, y=0.0))
    assert centre == pytest.approx(float(ends["train_loss"][0]), rel=1e-5)
    assert float(ds["train_loss"].max()) > centre  # a minimum of the training loss


@pytest.mark.slow
def test_curve_fge_and_swa_on_a_transformer(add, trained):
    from modescape.connect import train_curve
    from modescape.ensembles import fge

    a, b = trained
    run = train_curve(a, a, b, add, kind="bezier", bends=3, epochs=2, lr=0.01, batch_size=16, seed=0)
    space = sp.WeightSpace(a)
    ends = run.family(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    torch.testing.assert_close({k: v[0] for k, v in ends.items()}, space.point(a))
    torch.testing.assert_close({k: v[1] for k, v in ends.items()}, space.point(b))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in run.history)
    res = fge(a, a, add, cycle=2, epochs=4, lr=(0.01, 0.001), batch_size=16)
    assert len(res.snapshots) == 2 and 0.0 <= res.members[-1]["accuracy"] <= 1.0
    import modescape.swa as swa_mod

    out = swa_mod.swa(a, a, add, epochs=3, lr=0.005, start=0, batch_size=16, progress=False)
    assert out.n_averaged == 3 and torch.isfinite(torch.tensor(out.metrics["nll"]))


def test_hessian_ggn_fisher_spectra_and_sharpness_on_a_transformer(add, trained):
    model = trained[0]
    ev = Evaluator(model, add.train)
    sel = "blocks.0.attn.v"
    for kind in ("hessian", "ggn", "fisher"):
        op = cv.curvature_operator(kind, ev, params=sel)
        dense = op.dense().double()
        want = torch.linalg.eigvalsh(0.5 * (dense + dense.T))[-2:].flip(0)
        got = cv.eigenvalues(op, k=2, tol=1e-6).values
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
    res = sharpness.measure_all(
        ev, None, None, measures=["lambda_max", "worst_l2"], options={"worst_l2": {"rho": 0.05, "steps": 3}}
    )
    assert res["lambda_max"] > 0 and res["worst_l2"] >= 0


def test_planted_permutation_of_a_trained_transformer_is_recovered_exactly(add, trained):
    model = trained[0]
    spec = infer_spec(model)
    assert {p for p in spec.sizes if ":" in p} == {"blocks.0.attn:heads", "blocks.0.attn:qk", "blocks.0.attn:vo"}
    a = {k: v.detach() for k, v in model.named_parameters()}
    perms = random_perms(spec, 5)
    b = apply(spec, a, perms)
    x = torch.cat([add.train[0], add.test[0]])
    original, twin = tiny(add, 9).double().eval(), tiny(add, 9).double().eval()
    original.load_state_dict(a)
    twin.load_state_dict(b)
    with torch.no_grad():  # the same function: to 1e-5 in float64 (float32 rounds logits of ~10 at ~1e-6)
        assert (twin(x) - original(x)).abs().max() <= 1e-5
        assert (tiny(add, 3).double().eval()(x) - original(x)).abs().max() > 0.1  # (another model is not)
    found = weight_matching(spec, a, b)
    inv = invert(perms)
    assert all(torch.equal(found[p], inv[p]) for p in spec.sizes)
    res = align(model, a, b, {"train": add.train, "test": add.test}, n_points=5)
    assert res.summary()["barriers"]["after"]["train_loss"]["barrier_linear"] < 1e-5


def test_two_seeds_align_with_lower_barrier_and_activation_matching_falls_back_to_weights(add, trained):
    a, b = trained
    sa, sb = ({k: v.detach() for k, v in m.named_parameters()} for m in trained)
    res = align(a, sa, sb, {"train": add.train, "test": add.test}, n_points=7)
    assert sp.dot(sa, res.b_aligned) >= sp.dot(sa, sb)  # what weight matching maximises
    assert set(res.summary()["barriers"]) == {"before", "after"}
    act = importlib.import_module("modescape.symmetry.match").activation_matching(a, sa, sb, add.train)
    assert set(act) == set(infer_spec(a).sizes)  # heads and within-head units by weights, the rest by activations

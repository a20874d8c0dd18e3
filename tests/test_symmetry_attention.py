"""Permutation specs for concatenation, grouped convolutions, GroupNorm groups and attention (modescape.symmetry)."""

import copy

import pytest
import torch
from spec_helpers import MHA, A, Concat, G, GroupedConv, canon, perm

from modescape.errors import UserError
from modescape.symmetry import (
    PermutationSpec,
    activation_matching,
    apply,
    infer_spec,
    invert,
    random_perms,
    state_of,
    weight_matching,
)
from modescape.zoo import build_model

# -- concatenation, grouped convolutions, GroupNorm groups, attention ----------------------------------


def _same_function(model, spec, x, seed=3):
    twin = copy.deepcopy(model)
    twin.load_state_dict(apply(spec, model.state_dict(), random_perms(spec, seed)))
    with torch.no_grad():
        return float((model.eval()(x) - twin.eval()(x)).abs().max())


def test_concatenation_along_channels_keeps_each_part_on_its_segment():
    model = Concat()
    spec = infer_spec(model, example=model.example())
    assert spec.canonical() == canon(
        perm(4, A("c1.weight"), A("c1.bias"), A("c2.weight", 1), G("c3.weight", 1, 1, 1, 0)),
        perm(3, A("c2.weight"), A("c2.bias"), G("c3.weight", 1, 1, 1, 4)),
        perm(5, A("c3.weight"), A("c3.bias"), A("fc.weight", 1)),
    )
    assert _same_function(model, spec, model.example()) <= 1e-5
    other = copy.deepcopy(model)  # the check can fail: permuting one part's columns alone breaks the function
    other.c3.weight.data = other.c3.weight.data[:, [1, 0, 2, 3, 4, 5, 6]]
    with torch.no_grad():
        assert float((other(model.example()) - model(model.example())).abs().max()) > 1e-4


def test_grouped_convolution_and_groupnorm_permute_groups_and_channels_within():
    model = GroupedConv()
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.gn.bias.normal_()
    spec = infer_spec(model, example=model.example())
    inside0 = [G(n, 0, 1, 2) for n in ("c0.weight", "c0.bias", "gn.weight", "gn.bias")]
    groups = [G(n, 0, 4) for n in ("c0.weight", "c0.bias", "gn.weight", "gn.bias")]
    assert spec.canonical() == canon(
        perm(2, *groups, G("c1.weight", 0, 3), G("c1.bias", 0, 3), G("fc.weight", 1, 3)),  # groups as wholes
        perm(4, *inside0, A("c1.weight", 1)),  # c0's channels inside each group (and c1's inputs of a group)
        perm(3, G("c1.weight", 0, 1, 2), G("c1.bias", 0, 1, 2), G("fc.weight", 1, 1, 2)),
    )  # c1's within groups
    assert set(spec.sizes) == {"c0:groups", "c0:within", "c1:within"}
    assert _same_function(model, spec, model.example()) <= 1e-5
    assert PermutationSpec.from_dict(spec.to_dict()).canonical() == spec.canonical()


@pytest.mark.parametrize("batch_first, kdim", [(True, None), (False, None), (True, 6)])
def test_multihead_attention_heads_and_within_head_permutations(batch_first, kdim):
    torch.manual_seed(0)
    model = MHA(batch_first, kdim)
    spec = infer_spec(model, example=model.example())
    assert spec.sizes["attn:heads"] == 2 and spec.sizes["attn:qk"] == 4 and spec.sizes["attn:vo"] == 4
    if kdim is None:
        assert spec.canonical() == canon(
            perm(
                8,
                A("emb.weight"),
                A("emb.bias"),
                A("attn.in_proj_weight", 1),
                A("attn.out_proj.weight"),
                A("attn.out_proj.bias"),
                A("fc.weight", 1),
            ),
            perm(
                2,
                *[G(f"attn.in_proj_{t}", 0, 4, 1, o) for t in ("weight", "bias") for o in (0, 8, 16)],
                G("attn.bias_k", 2, 4),
                G("attn.bias_v", 2, 4),
                G("attn.out_proj.weight", 1, 4),
            ),
            perm(
                4,
                *[G(f"attn.in_proj_{t}", 0, 1, 2, o) for t in ("weight", "bias") for o in (0, 8)],
                G("attn.bias_k", 2, 1, 2),
            ),
            perm(
                4,
                G("attn.in_proj_weight", 0, 1, 2, 16),
                G("attn.in_proj_bias", 0, 1, 2, 16),
                G("attn.bias_v", 2, 1, 2),
                G("attn.out_proj.weight", 1, 1, 2),
            ),
        )
    else:  # separate key/value inputs: their own permutation on k_proj/v_proj's columns
        assert A("kv.weight") in spec.axes[spec.layer_perm("kv")]
        assert G("attn.k_proj_weight", 1) in spec.axes[spec.layer_perm("kv")]
    assert _same_function(model, spec, model.example()) <= 1e-5


def test_zoo_transformer_spec_is_the_residual_stream_mlp_and_heads():
    model = build_model("transformer", (3,), 10, width=8, heads=2, layers=1, tied=True)
    spec = infer_spec(model)
    b = "blocks.0."
    ln = [A(f"{b}{n}.{s}") for n in ("ln1", "ln2") for s in ("weight", "bias")] + [A("ln_f.weight"), A("ln_f.bias")]
    heads = [G(f"{b}attn.{p}.{s}", 0, 4) for p in "qkv" for s in ("weight", "bias")] + [G(f"{b}attn.o.weight", 1, 4)]
    assert spec.canonical() == canon(
        perm(
            8,
            A("tok.weight", 1),
            A("pos.weight", 1),
            A("head.weight", 1),
            *ln,
            *[A(f"{b}attn.{p}.weight", 1) for p in "qkv"],
            A(f"{b}attn.o.weight"),
            A(f"{b}attn.o.bias"),
            A(f"{b}mlp.fc.weight", 1),
            A(f"{b}mlp.proj.weight"),
            A(f"{b}mlp.proj.bias"),
        ),  # the residual stream
        perm(32, A(f"{b}mlp.fc.weight"), A(f"{b}mlp.fc.bias"), A(f"{b}mlp.proj.weight", 1)),  # MLP hidden units
        perm(2, *heads),  # heads as wholes
        perm(4, *[G(f"{b}attn.{p}.{s}", 0, 1, 2) for p in "qk" for s in ("weight", "bias")]),  # inside each head
        perm(4, G(f"{b}attn.v.weight", 0, 1, 2), G(f"{b}attn.v.bias", 0, 1, 2), G(f"{b}attn.o.weight", 1, 1, 2)),
    )
    assert spec.node_axes and set(spec.node_axes.values()) == {2}  # [B, T, C] values: channels last
    x = torch.randint(0, 10, (4, 3))
    assert _same_function(model, spec, x) <= 1e-5


def test_activation_matching_on_a_sequence_model_uses_the_last_axis():
    torch.manual_seed(0)
    model = build_model("transformer", (3,), 10, width=8, heads=2, layers=1)
    spec = infer_spec(model)
    a = state_of(model)
    perms = random_perms(spec, 4)
    b = apply(spec, a, perms)
    x = torch.randint(0, 10, (64, 3))
    found = activation_matching(model, a, b, (x, torch.zeros(64, dtype=torch.long)))
    inv = invert(perms)
    assert torch.equal(found["tok"], inv["tok"]) and torch.equal(found["blocks.0.mlp.fc"], inv["blocks.0.mlp.fc"])


def test_shared_axes_are_checked_by_segment():
    spec = PermutationSpec({"p": 2, "q": 2}, {"p": [G("w", 0, 1, 1, 0)], "q": [G("w", 0, 1, 1, 2)]})
    w = torch.arange(4.0)
    out = apply(spec, {"w": w}, {"p": torch.tensor([1, 0]), "q": torch.tensor([1, 0])})
    assert out["w"].tolist() == [1.0, 0.0, 3.0, 2.0]
    with pytest.raises(UserError, match="from entry 2"):
        apply(spec, {"w": torch.arange(3.0)}, {})
    with pytest.raises(UserError, match="claimed by two permutations"):
        PermutationSpec({"p": 2, "q": 2}, {"p": [G("w", 0)], "q": [G("w", 0)]})


def test_weight_matching_restarts_keep_the_largest_objective():
    torch.manual_seed(0)
    model = build_model("transformer", (3,), 10, width=8, heads=2, layers=2)
    spec = infer_spec(model)
    a = state_of(model)
    torch.manual_seed(1)
    b = state_of(build_model("transformer", (3,), 10, width=8, heads=2, layers=2))
    singles = [weight_matching(spec, a, b, seed=s, restarts=1, return_info=True)[1]["objective"] for s in range(4)]
    perms, info = weight_matching(spec, a, b, seed=0, return_info=True)  # 4 restarts: the spec has heads
    assert info["objective"] == pytest.approx(max(singles), abs=1e-12) and info["restart"] in range(4)

"""Weight space: roles, flatten/unflatten, stacking and the vector operations, as properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modescape import space as sp
from modescape.errors import UserError


def model():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 2),
        nn.GroupNorm(1, 2),
    )


def test_roles_and_buffers():
    ws = sp.WeightSpace(model())
    assert ws.roles == {
        "0.weight": "weight",
        "0.bias": "bias",
        "1.weight": "norm",
        "1.bias": "norm",
        "4.weight": "weight",
        "4.bias": "bias",
        "5.weight": "norm",
        "5.bias": "norm",
        "6.weight": "weight",
        "6.bias": "bias",
        "7.weight": "norm",
        "7.bias": "norm",
    }
    assert ws.buffer_names == ("1.running_mean", "1.running_var", "1.num_batches_tracked")
    assert ws.numel == sum(p.numel() for p in model().parameters())


def test_point_is_a_copy():
    m = model()
    ws = sp.WeightSpace(m)
    p = ws.point(m)
    p["0.weight"].add_(1.0)
    assert not torch.equal(p["0.weight"], m[0].weight)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_flatten_roundtrip_and_stack(k, seed):
    torch.manual_seed(seed)
    m = model()
    ws = sp.WeightSpace(m)
    pts = [{n: torch.randn(s) for n, s in ws.shapes.items()} for _ in range(k)]
    for p in pts:
        q = ws.unflatten(ws.flatten(p))
        assert all(torch.equal(p[n], q[n]) for n in p)
    st_ = sp.stack(pts)
    flat = ws.flatten(st_)
    assert flat.shape == (k, ws.numel)
    assert torch.equal(flat[-1], ws.flatten(pts[-1]))
    back = sp.unstack(ws.unflatten(flat))
    assert all(torch.equal(back[i][n], pts[i][n]) for i in range(k) for n in ws.names)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.floats(-2, 2))
def test_vector_ops_match_flat_numpy(seed, t):
    torch.manual_seed(seed)
    ws = sp.WeightSpace(model())
    a = {n: torch.randn(s, dtype=torch.float64) for n, s in ws.shapes.items()}
    b = {n: torch.randn(s, dtype=torch.float64) for n, s in ws.shapes.items()}
    fa, fb = ws.flatten(a).numpy(), ws.flatten(b).numpy()
    assert abs(float(sp.dot(a, b)) - float(fa @ fb)) < 1e-9
    assert abs(float(sp.norm(a)) - float((fa @ fa) ** 0.5)) < 1e-9
    assert torch.allclose(ws.flatten(sp.lerp(a, b, t)), torch.tensor((1 - t) * fa + t * fb))
    assert torch.allclose(ws.flatten(sp.add(a, sp.scale(b, t))), torch.tensor(fa + t * fb))
    assert torch.allclose(ws.flatten(sp.sub(a, b)), torch.tensor(fa - fb))
    assert torch.allclose(ws.flatten(sp.axpy(t, a, b)), torch.tensor(t * fa + fb))
    assert torch.allclose(sp.flatten(sp.unflatten(sp.flatten(a), a)), sp.flatten(a))


def test_lerp_stacked_and_batched_dot():
    ws = sp.WeightSpace(model())
    a = {n: torch.randn(s, dtype=torch.float64) for n, s in ws.shapes.items()}
    b = {n: torch.randn(s, dtype=torch.float64) for n, s in ws.shapes.items()}
    ts = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    line = sp.lerp(a, b, ts)
    for i, t in enumerate(ts.tolist()):
        ref = sp.lerp(a, b, t)
        assert all(torch.allclose(line[n][i], ref[n]) for n in ws.names)
    assert torch.allclose(
        sp.batched_dot(line, line), torch.stack([sp.dot(sp.unstack(line)[i], sp.unstack(line)[i]) for i in range(3)])
    )


def test_check_names_first_difference():
    ws = sp.WeightSpace(model())
    p = {n: torch.zeros(s) for n, s in ws.shapes.items()}
    p["4.weight"] = torch.zeros(5, 7)
    with pytest.raises(UserError, match=r"'4.weight' has shape \[5, 7\]; the model expects \[5, 108\]"):
        ws.check(p)
    del p["4.weight"]
    with pytest.raises(UserError, match="missing tensor '4.weight'"):
        ws.check(p)
    with pytest.raises(UserError, match="empty"):
        sp.stack([])


def test_is_finite():
    assert sp.is_finite({"a": torch.ones(2)}) is None
    assert sp.is_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}) == "b"

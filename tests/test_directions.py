"""Directions and the line/plane families: normalisation invariants, seeding, PCA, planes through models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modescape import space as sp
from modescape.directions import orthogonalize, pca_directions, random_direction, random_directions
from modescape.errors import UserError
from modescape.families import Line, Plane, PlaneThrough


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():  # as after training: BN affine parameters away from their 1 / 0 initialisation
        net[1].weight.add_(0.1 * torch.randn(4))
        net[1].bias.add_(0.1 * torch.randn(4))
    return net


shapes = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100.0))
def test_filter_normalised_slices_have_the_weights_norms(shapes, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    point = {f"t{i}.weight": scale * torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    d = random_direction(point, "filter", ignore="none", seed=seed)
    for name, w in point.items():
        if w.dim() > 1:
            expect = torch.stack([w[i].norm() for i in range(w.shape[0])])
            got = torch.stack([d[name][i].norm() for i in range(w.shape[0])])
        else:  # a 1-d tensor is one group
            expect, got = w.norm(), d[name].norm()
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_biasbn_zeroes_bias_and_norm_params_and_keeps_buffers():
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    space = sp.WeightSpace(net)
    d = random_direction(net, "filter", ignore="biasbn", seed=3)
    assert set(d) == set(space.names)  # parameters only: buffers are never perturbed
    for name, role in space.roles.items():
        if role in ("bias", "norm"):
            assert torch.count_nonzero(d[name]) == 0
        else:
            assert torch.count_nonzero(d[name]) == d[name].numel()
    for k, v in net.state_dict().items():  # the model is untouched
        assert torch.equal(v, before[k])


def test_biasbn_zeroes_every_tensor_of_dim_at_most_one_as_the_reference():
    """The reference's rule is by shape (``if d.dim() <= 1: d.fill_(0)``): a PReLU slope vector, which is
    neither a bias nor a norm parameter, is zeroed too; a 2-d tensor named ``bias`` is not."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.act = nn.PReLU(3)
            self.bias_table = nn.Parameter(torch.randn(2, 3))  # role "weight", dim 2

        def forward(self, x):
            return self.act(self.fc(x)) + self.bias_table.sum(0)

    d = random_direction(Odd(), "filter", ignore="biasbn", seed=0)
    assert torch.count_nonzero(d["act.weight"]) == 0 and torch.count_nonzero(d["fc.bias"]) == 0
    assert torch.count_nonzero(d["fc.weight"]) == 12 and torch.count_nonzero(d["bias_table"]) == 6


def test_ignore_none_normalises_bias_and_norm_without_copying_weights():
    net = small_net()
    w = sp.WeightSpace(net).point(net)
    d = random_direction(net, "filter", ignore="none", seed=1)
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):
        torch.testing.assert_close(d[name].norm(), w[name].norm(), rtol=1e-5, atol=1e-7)
        assert not torch.allclose(d[name], w[name]) and not torch.allclose(d[name], w[name].abs())


def test_layer_model_none_normalisations():
    net = small_net()
    w = sp.WeightSpace(net).point(net)
    kept = ["0.weight", "4.weight"]
    layer = random_direction(net, "layer", seed=2)
    for n in kept:
        torch.testing.assert_close(layer[n].norm(), w[n].norm(), rtol=1e-5, atol=0)
    model = random_direction(net, "model", seed=2)
    total_d = torch.sqrt(sum((model[n] ** 2).sum() for n in kept))
    total_w = torch.sqrt(sum((w[n] ** 2).sum() for n in kept))
    torch.testing.assert_close(total_d, total_w, rtol=1e-5, atol=0)
    raw = random_direction(net, "none", seed=2)
    gen = torch.Generator().manual_seed(2)
    expect = {n: torch.randn(tuple(t.shape), generator=gen) for n, t in w.items()}
    torch.testing.assert_close(raw["0.weight"], expect["0.weight"])


def test_seeded_and_device_independent_bits():
    net = small_net()
    a = random_direction(net, seed=5)
    b = random_direction(net, seed=5)
    c = random_direction(net, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    # the recipe (CPU generator, float64 normalisation) does not depend on where the weights live:
    w64 = {k: v.double() for k, v in sp.WeightSpace(net).point(net).items()}
    d64 = random_direction(w64, seed=5, space=sp.WeightSpace(net))
    assert all(torch.equal(d64[k].float(), a[k]) for k in a)


def test_orthogonal_second_direction():
    net = small_net()
    d1, d2 = random_directions(net, 2, seed=0, orthogonal=True)
    raw2 = random_direction(net, seed=1)
    assert abs(float(sp.dot(d1, d2))) < 1e-4 * float(sp.norm(d1) * sp.norm(d2))
    torch.testing.assert_close(sp.norm(d2), sp.norm(raw2), rtol=1e-5, atol=0)
    o = orthogonalize({"a": torch.tensor([1.0, 1.0])}, {"a": torch.tensor([1.0, 0.0])}, keep_norm=False)
    torch.testing.assert_close(o["a"], torch.tensor([0.0, 1.0]))


def test_unknown_options_are_user_errors():
    with pytest.raises(UserError, match="normalization"):
        random_direction(small_net(), "filters")
    with pytest.raises(UserError, match="ignore"):
        random_direction(small_net(), ignore="bn")


def test_pca_matches_sklearn_and_projects_the_path():
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(0)
    final = {"w": torch.randn(6, 5, generator=gen), "b": torch.randn(5, generator=gen)}
    u, v = torch.randn(35, generator=gen), torch.randn(35, generator=gen)
    pts = []
    for t in range(8):
        off = (8 - t) * u + np.sin(t) * v + 0.01 * torch.randn(35, generator=gen)
        pts.append(sp.unflatten(sp.flatten(final) + off, final))
    pca = pca_directions(pts + [final], final)
    m = np.stack([(sp.flatten(p) - sp.flatten(final)).numpy() for p in pts + [final]]).astype(np.float64)
    ref = PCA(n_components=2).fit(m)
    np.testing.assert_allclose(pca.explained.numpy(), ref.explained_variance_ratio_, rtol=1e-4)
    dirs = np.stack([sp.flatten(d).numpy() for d in pca.directions])
    np.testing.assert_allclose(np.abs(dirs @ ref.components_.T), np.eye(2), atol=1e-4)
    np.testing.assert_allclose(pca.path.numpy(), m @ dirs.T, rtol=1e-4, atol=1e-4)
    assert float(pca.path[-1].abs().max()) == 0.0  # the final point is the origin
    assert float(pca.residual.max()) < 0.05


def test_families_line_plane_and_plane_through():
    gen = torch.Generator().manual_seed(1)
    a, b, c = ({"w": torch.randn(3, 4, generator=gen, dtype=torch.float64)} for _ in range(3))
    line = Line(a, b)
    pts = line(torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(pts["w"][0], a["w"])
    torch.testing.assert_close(pts["w"][1], b["w"])
    torch.testing.assert_close(pts["w"][2], 0.75 * a["w"] + 0.25 * b["w"])
    plane = Plane(a, b, c)
    torch.testing.assert_close(plane(torch.tensor([2.0, -1.0]))["w"], a["w"] + 2 * b["w"] - c["w"])
    through = PlaneThrough(a, b, c)
    u, v = through.directions
    torch.testing.assert_close(sp.norm(u), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(sp.norm(v), torch.tensor(1.0, dtype=torch.float64))
    assert abs(float(sp.dot(u, v))) < 1e-12
    at = through(through.model_coords)
    for i, m in enumerate((a, b, c)):
        torch.testing.assert_close(at["w"][i], m["w"])
        torch.testing.assert_close(through.project(m), through.model_coords[i])
    with pytest.raises(UserError, match="collinear"):
        PlaneThrough(a, b, {"w": 2 * b["w"] - a["w"]})

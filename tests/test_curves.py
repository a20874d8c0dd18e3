"""Bezier and PolyChain families: exact endpoints, bends, coefficients, trainable inner bends only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modescape.errors import UserError
from modescape.families.curves import Bezier, PolyChain, curve_class


def _points(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g)} for _ in range(n)]


@pytest.mark.parametrize("cls", [Bezier, PolyChain])
@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_exact_endpoints(cls, n):
    pts = _points(n, seed=n)
    curve = cls(pts)
    for t, ref in ((0.0, pts[0]), (1.0, pts[-1])):
        out = curve(t)
        for k in ref:
            assert torch.equal(out[k], ref[k])
    stacked = curve(torch.tensor([0.0, 0.3, 1.0]))
    for k in pts[0]:
        assert torch.equal(stacked[k][0], pts[0][k]) and torch.equal(stacked[k][2], pts[-1][k])


@pytest.mark.parametrize("n", [3, 4, 6, 11, 50])
def test_polychain_passes_through_each_bend(n):
    pts = _points(n, seed=1)
    curve = PolyChain(pts)
    ts = torch.tensor([j / (n - 1) for j in range(n)], dtype=torch.float64)
    out = curve(ts)
    for j in range(n):
        for k in pts[j]:
            assert torch.equal(out[k][j], pts[j][k]), (j, k)


def test_polychain_is_piecewise_linear():
    pts = _points(4, seed=2)
    curve = PolyChain(pts)
    t, j = 0.5, 1  # between bend 1 (t = 1/3) and bend 2 (t = 2/3), half way
    s = t * 3 - j
    out = curve(t)
    for k in pts[0]:
        torch.testing.assert_close(out[k], (1 - s) * pts[j][k] + s * pts[j + 1][k])


@pytest.mark.parametrize("n", [3, 5])
def test_bezier_matches_bernstein_formula(n):
    pts = _points(n, seed=3)
    curve = Bezier(pts)
    ts = np.array([0.1, 0.37, 0.5, 0.92])
    out = curve(torch.tensor(ts))
    for i, t in enumerate(ts):
        for k in pts[0]:
            ref = sum(
                math.comb(n - 1, j) * t**j * (1 - t) ** (n - 1 - j) * pts[j][k].double().numpy() for j in range(n)
            )
            np.testing.assert_allclose(out[k][i].detach().numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [Bezier, PolyChain])
@pytest.mark.parametrize("n", [3, 5])
def test_on_segment_is_the_segment(cls, n):
    a, b = _points(2, seed=4)
    curve = cls.on_segment(a, b, bends=n)
    for j in range(n):
        for k in a:
            torch.testing.assert_close(curve.bend(j)[k], a[k] + j / (n - 1) * (b[k] - a[k]))
    # equally spaced control points on a line give the line itself, for both families
    ts = torch.tensor([0.0, 0.2, 0.55, 1.0], dtype=torch.float64)
    out = curve(ts)
    for i, t in enumerate(ts.tolist()):
        for k in a:
            torch.testing.assert_close(out[k][i], a[k] + t * (b[k] - a[k]), atol=1e-6, rtol=1e-6)


def test_through_given_points():
    a, m1, m2, b = _points(4, seed=5)
    curve = Bezier.through(a, b, [m1, m2])
    assert curve.n_bends == 4
    for j, ref in enumerate((a, m1, m2, b)):
        for k in a:
            assert torch.equal(curve.bend(j)[k], ref[k])


@pytest.mark.parametrize("cls", [Bezier, PolyChain])
def test_gradients_reach_only_inner_bends(cls):
    pts = _points(5, seed=6)
    curve = cls(pts)
    trainable = [name for name, p in curve.named_parameters() if p.requires_grad]
    assert trainable == ["anchor_1", "anchor_2", "anchor_3"]
    assert not curve.anchor(0).requires_grad and not curve.anchor(4).requires_grad
    ts = torch.tensor([0.1, 0.45, 0.8], dtype=torch.float64)
    point = curve(ts)
    loss = sum((v**2).sum() for v in point.values())
    loss.backward()
    for j in (1, 2, 3):
        g = curve.anchor(j).grad
        assert g is not None and float(g.abs().sum()) > 0
    for j in (0, 4):
        assert curve.anchor(j).grad is None
    # the gradient of sum_t ||w(t)||^2 w.r.t. w_j is sum_t 2 a_j(t) w(t): recompute it independently
    a = curve.coefficients(ts[:, None]).float()  # [3, 5]
    flat = curve.flat(ts).detach()  # [3, D]
    for j in (1, 2, 3):
        torch.testing.assert_close(curve.anchor(j).grad, 2 * (a[:, j : j + 1] * flat).sum(0))


def test_errors():
    a, b = _points(2)
    with pytest.raises(UserError, match="at least 3 bends"):
        Bezier([a, b])
    with pytest.raises(UserError, match="bends must be >= 3"):
        PolyChain.on_segment(a, b, bends=2)
    with pytest.raises(UserError, match="unknown curve"):
        curve_class("spline")
    assert curve_class("Bezier") is Bezier


@pytest.mark.parametrize("cls", [Bezier, PolyChain])
@pytest.mark.parametrize("n", [3, 5])
def test_flat_matches_one_product_and_its_gradient(cls, n):
    """The split product (cached endpoints + inner bends) gives coefficients @ W, for K points and for
    one, with the gradient of the plain product; the training penalty's gradient is wd * w."""
    from modescape.point_sgd import half_squared_norm

    curve = cls(_points(n, seed=3))
    ts = torch.tensor([0.0, 0.17, 0.5, 0.93, 1.0], dtype=torch.float64)
    w = torch.stack([curve.anchor(j).detach() for j in range(n)]).double()
    a = curve.coefficients(ts[:, None])
    torch.testing.assert_close(curve.flat(ts).double(), a @ w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(curve.flat(0.17).double(), (a @ w)[1], rtol=1e-6, atol=1e-6)
    g = torch.Generator().manual_seed(5)
    r = torch.randn(len(ts), w.shape[1], generator=g)
    ((curve.flat(ts) * r).sum() + 0.3 * half_squared_norm(curve.flat(0.5))).backward()
    w_half = (curve.coefficients(torch.tensor([[0.5]], dtype=torch.float64)) @ w)[0]
    a_half = curve.coefficients(torch.tensor([[0.5]], dtype=torch.float64))[0]
    for j in range(1, n - 1):  # independent: d/dw_j of sum_k r_k . w(t_k) + 0.3 * 0.5 ||w(0.5)||^2
        ref = (a[:, j : j + 1] * r.double()).sum(0) + 0.3 * a_half[j] * w_half
        torch.testing.assert_close(curve.anchor(j).grad.double(), ref, rtol=1e-5, atol=1e-6)
    assert curve.anchor(0).grad is None and curve.anchor(n - 1).grad is None
    # a changed endpoint is seen (the cached stack follows the buffer's version)
    with torch.no_grad():
        curve.anchor(0).add_(1.0)
    torch.testing.assert_close(curve.flat(0.0), curve.anchor(0).detach())


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("trainable", [(False, True, True, False), (True, True, True, True), (False,) * 4])
def test_family_point_and_gradient_equal_the_dense_coefficient_product(k, trainable):
    """`LinearFamily.flat` (frozen anchors stacked, trainable ones added in place, a hand-written backward)
    equals coefficients @ W and its autograd gradient, for one point and several, whichever anchors train."""
    from modescape.families.simplex import Simplex

    gen = torch.Generator().manual_seed(1)
    pts = [
        {
            "w": torch.randn(3, 4, generator=gen, dtype=torch.float64),
            "b": torch.randn(5, generator=gen, dtype=torch.float64),
        }
        for _ in range(4)
    ]
    fam = Simplex(pts, simplices=[(0, 1, 2, 3)], trainable=list(trainable))
    coords = fam.sample(k, generator=gen)
    g = torch.randn(k, 17, generator=gen, dtype=torch.float64)
    out = fam.flat(coords)
    if any(trainable):
        (out * g).sum().backward()
    leaves = [fam.anchor(j).detach().clone().requires_grad_(True) for j in range(4)]
    ref = fam.coefficients(coords).double() @ torch.stack(leaves)
    (ref * g).sum().backward()
    assert torch.allclose(out.detach(), ref.detach(), atol=1e-12)
    for j, t in enumerate(trainable):
        if t:
            assert torch.allclose(fam.anchor(j).grad, leaves[j].grad, atol=1e-12)
        else:
            assert not fam.anchor(j).requires_grad
    one = fam.flat(coords[0])  # a single coordinate: [D]
    assert one.shape == (17,) and torch.allclose(one.detach(), ref[0].detach(), atol=1e-12)


@pytest.mark.parametrize("trainable", [(False, True, True, False), (True, False, False, True)])
def test_write_flat_and_pull_flat_equal_the_point_and_its_gradient(trainable):
    """The training fast path: `write_flat` writes coefficients @ W in place, and `pull_flat` gives each
    trainable anchor coefficient_j * G, as autograd through coefficients @ W does (accumulating)."""
    from modescape.families.simplex import Simplex

    gen = torch.Generator().manual_seed(3)
    pts = [
        {
            "w": torch.randn(3, 4, generator=gen, dtype=torch.float64),
            "b": torch.randn(5, generator=gen, dtype=torch.float64),
        }
        for _ in range(4)
    ]
    fam = Simplex(pts, simplices=[(0, 1, 2, 3)], trainable=list(trainable))
    coords = fam.sample(1, generator=gen)
    out = torch.full((17,), float("nan"), dtype=torch.float64)
    coefs = fam.write_flat(coords[0], out)
    leaves = [fam.anchor(j).detach().clone().requires_grad_(True) for j in range(4)]
    ref = (fam.coefficients(coords).double() @ torch.stack(leaves))[0]
    assert torch.allclose(out, ref.detach(), atol=1e-12)
    g = torch.randn(17, generator=gen, dtype=torch.float64)
    (ref * g).sum().backward()
    assert not out.requires_grad
    fam.pull_flat(coefs, g)
    fam.pull_flat(coefs, g)  # a second sample accumulates
    for j, t in enumerate(trainable):
        if t:
            assert torch.allclose(fam.anchor(j).grad, 2 * leaves[j].grad, atol=1e-12)

"""Landscape topology: persistence pairs against gudhi's cubical complexes and against Betti numbers counted
by scipy's connected components, known answers (a 1-D sequence, Gaussian wells of known depths), invariance
to constants and monotone maps, the merge tree, the CLI; and the directions of a plane made exact
(Hessian eigenvectors checked against a dense eigendecomposition, random directions orthogonal)."""

from __future__ import annotations

import json

import gudhi
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from torch import nn

from modescape import space as sp
from modescape.directions import hessian_directions, parse_directions, random_directions
from modescape.errors import UserError
from modescape.topology import neighbourhood_kind, persistence


def gudhi_pairs(a: np.ndarray, kind: str) -> list[tuple[float, float]]:
    """H0 pairs of the lower-star filtration: ``vertices=`` joins axis neighbours (4 in 2-D); top cells that
    share any face, a corner included, are joined by it (8 in 2-D, 3^N - 1 in N-D)."""
    cc = gudhi.CubicalComplex(vertices=a) if kind == "axis" else gudhi.CubicalComplex(top_dimensional_cells=a)
    return sorted((float(b), float(d)) for dim, (b, d) in cc.persistence() if dim == 0)


def ours(a: np.ndarray, kind: str) -> list[tuple[float, float]]:
    return sorted(map(tuple, persistence(a, neighbourhood=kind, threshold=0).pairs().tolist()))


def betti0_matches(a: np.ndarray, kind: str) -> None:
    """At every level t the sublevel set {a <= t} has as many components (scipy.ndimage.label) as there are
    pairs alive at t (b <= t < d): the definition of 0-dimensional persistence, computed independently."""
    topo = persistence(a, neighbourhood=kind, threshold=0)
    structure = ndimage.generate_binary_structure(a.ndim, 1 if kind == "axis" else a.ndim)
    for t in np.unique(a):
        _, count = ndimage.label(a <= t, structure=structure)
        alive = int(np.sum((topo.births <= t) & (t < topo.deaths)))
        assert count == alive, (t, count, alive)


# -- correctness against independent computations ---------------------------------------------------


@pytest.mark.parametrize("kind", ["axis", "full"])
def test_pairs_equal_gudhi_on_random_grids_with_and_without_ties(kind):
    rng = np.random.default_rng(0)
    for trial in range(120):
        shape = tuple(rng.integers(1, 9, size=rng.integers(1, 4)))
        a = rng.integers(0, 5, size=shape).astype(float) if trial % 2 else rng.normal(size=shape)
        assert ours(a, kind) == gudhi_pairs(a, kind), (shape, a)
    a = rng.normal(size=(61, 47))  # one bigger, non-square grid
    assert ours(a, kind) == gudhi_pairs(a, kind)


@settings(max_examples=60, deadline=None)
@given(
    a=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7),
        elements=st.integers(-3, 3).map(float),
    ),
    kind=st.sampled_from(["axis", "full"]),
)
def test_betti_numbers_match_connected_components(a, kind):
    betti0_matches(a, kind)
    assert ours(a, kind) == gudhi_pairs(a, kind)


def test_known_answer_in_one_dimension():
    # minima at t = 1 (value 1), 3 (1: the tie goes to the lower index) and 6 (2)
    topo = persistence(np.array([3.0, 1, 4, 1, 5, 9, 2, 6]), threshold=0)
    assert topo.pairs().tolist() == [[1.0, np.inf], [1.0, 4.0], [2.0, 9.0]]
    assert topo.pairs(essential="max")[0].tolist() == [1.0, 9.0]
    assert topo.minima[:, 0].tolist() == [1, 3, 6] and topo.saddles[:, 0].tolist() == [-1, 2, 5]
    assert topo.merged_into.tolist() == [-1, 0, 0]
    assert topo.basin_count(2.9) == 3 and topo.basin_count(3.0) == 2 and topo.basin_count(7.0) == 1
    assert topo.deepest_spurious == 2 and topo.deepest_spurious_depth == 7.0
    assert topo.total_persistence == 10.0 and topo.roughness == 10.0 / 8.0
    assert topo.smoothness == pytest.approx(1 / (1 + 10 / 8))
    # a plateau that runs down into a lower component is not a minimum (zero persistence, as gudhi)
    assert persistence(np.array([0.5, 0.5, 0.0]), threshold=0).n_minima == 1


WELLS = [((-0.5, -0.4), 1.0), ((0.5, 0.4), 0.8), ((0.4, -0.5), 0.6), ((-0.4, 0.4), 0.45), ((0.0, 0.0), 0.3)]


def wells_grid():
    """Five Gaussian wells (sigma 0.05, far apart) on a non-square grid that holds every centre."""
    x = np.round(np.linspace(-1, 1, 101), 10)
    y = np.round(np.linspace(-0.8, 0.8, 81), 10)
    X, Y = np.meshgrid(x, y, indexing="ij")
    z = np.zeros_like(X)
    for (cx, cy), depth in WELLS:
        z -= depth * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * 0.05**2))
    return xr.Dataset({"train_loss": (("x", "y"), z)}, coords={"x": x, "y": y})


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_gaussian_wells_have_their_count_depths_and_places(neighbourhood):
    topo = persistence(wells_grid(), neighbourhood=neighbourhood, threshold=1e-3)
    assert topo.basins == len(WELLS)
    order = sorted(WELLS, key=lambda w: -w[1])
    np.testing.assert_allclose(topo.births[: len(WELLS)], [-d for _, d in order], rtol=1e-9)
    # every well but the deepest dies where the wells meet, at about 0: its persistence is its depth
    big = topo.persistence > 1e-3
    np.testing.assert_allclose(topo.persistence[big][1:], [d for _, d in order[1:]], rtol=1e-6)
    for i, ((cx, cy), _) in enumerate(order):  # coordinates, not a transposed grid
        assert topo.point(topo.minima[i]) == pytest.approx({"x": cx, "y": cy})
        assert topo.values[tuple(topo.minima[i])] == topo.births[i]
    assert topo.deepest_spurious_depth == pytest.approx(0.8, rel=1e-6)
    labels = topo.basin_map()
    assert sorted(np.unique(labels).tolist()) == sorted(np.flatnonzero(big).tolist())
    assert all(labels[tuple(topo.minima[i])] == i for i in np.flatnonzero(big))


def test_invariant_to_constants_and_monotone_maps():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 12, size=(23, 17)).astype(float)  # ties: the maps below keep them exactly
    base = persistence(a, threshold=0)
    for f in (lambda v: v + 7.0, lambda v: v**3 + 5 * v, lambda v: 2.0**v):
        t = persistence(f(a), threshold=0)
        np.testing.assert_array_equal(t.minima, base.minima)
        np.testing.assert_array_equal(t.saddles, base.saddles)
        np.testing.assert_array_equal(t.merged_into, base.merged_into)
        np.testing.assert_array_equal(t.births, f(base.births))
        np.testing.assert_array_equal(t.deaths[1:], f(base.deaths[1:]))
    shifted = persistence(a + 7.0)
    assert shifted.basins == base.basins and shifted.roughness == pytest.approx(base.roughness)


def test_merge_tree_joins_the_minima_at_their_saddles():
    rng = np.random.default_rng(2)
    topo = persistence(rng.normal(size=(30, 30)), neighbourhood=8, threshold="5%")
    tree = topo.merge_tree()
    leaves = tree.leaves
    assert len(leaves) == topo.n_minima and tree.n_nodes == 2 * len(leaves) - 1
    assert int((tree.parent < 0).sum()) == 1 and tree.kind[tree.root] == "saddle"
    has = tree.parent >= 0
    assert (tree.value[tree.parent[has]] >= tree.value[has]).all()  # heights grow to the root
    assert all(len(tree.children(v)) == 2 for v in range(tree.n_nodes) if tree.kind[v] == "saddle")
    assert sorted(tree.value[[v for v in range(tree.n_nodes) if tree.kind[v] == "saddle"]].tolist()) == sorted(
        topo.deaths[1:].tolist()
    )
    pruned = topo.merge_tree(None)  # at the result's threshold: one leaf per basin
    assert len(pruned.leaves) == topo.basins and pruned.n_nodes == 2 * topo.basins - 1
    assert persistence(np.arange(5.0)).merge_tree().n_nodes == 1  # one minimum: a lone leaf


def test_results_hold_coordinates_and_serialise():
    ds = wells_grid()
    topo = persistence(ds["train_loss"], threshold="10%")
    d = json.loads(json.dumps(topo.to_dict()))  # plain JSON: no inf, no numpy
    assert d["dims"] == ["x", "y"] and d["shape"] == [101, 81] and d["basins"] == 5
    assert d["pairs"][0][1] is None and d["global_minimum"] == pytest.approx({"x": -0.5, "y": -0.4})
    assert [m["id"] for m in d["basin_minima"]][:1] == [0] and len(d["basin_minima"]) == 5
    assert topo.threshold == pytest.approx(0.1 * topo.value_range)
    arr = persistence(ds["train_loss"].values, coords={"x": ds.x.values, "y": ds.y.values})
    np.testing.assert_array_equal(arr.minima, persistence(ds).minima)
    assert neighbourhood_kind(8, 2) == "full" and neighbourhood_kind(6, 3) == "axis"
    assert neighbourhood_kind(4, 1) == "axis" and neighbourhood_kind("26", 3) == "full"


def test_bad_inputs_are_user_errors():
    a = np.zeros((5, 5))
    a[2, 3] = np.nan
    with pytest.raises(UserError, match="1 NaN of 25 cells .*rerun the sweep"):
        persistence(a)
    with pytest.raises(UserError, match="infinite"):
        persistence(np.array([1.0, np.inf]))
    with pytest.raises(UserError, match="no variable 'loss'"):
        persistence(wells_grid(), "loss")
    with pytest.raises(UserError, match="neighbourhood 6"):
        persistence(np.zeros((3, 3)), neighbourhood=6)
    with pytest.raises(UserError, match="threshold"):
        persistence(np.zeros(3), threshold="abc")
    with pytest.raises(UserError, match="coordinates of 'x'"):
        persistence(np.zeros((3, 4)), coords={"x": [0, 1], "y": [0, 1, 2, 3]})


def test_fast_enough_for_large_grids():
    import time

    z = np.random.default_rng(3).normal(size=(201, 201))  # white noise: minima everywhere, the worst case
    t = time.perf_counter()
    topo = persistence(z)
    topo.merge_tree()
    assert time.perf_counter() - t < 2.0  # about 0.05 s here; bench/topology.py has the numbers
    assert topo.n_minima > 5000


# -- figures and the command line ---------------------------------------------------------------------


def test_figures_for_lines_and_volumes(tmp_path):  # planes: the CLI test
    from modescape.plots import plot_topology

    rng = np.random.default_rng(4)
    for shape in [(40,), (6, 5, 4)]:
        topo = persistence(rng.normal(size=shape))
        paths = plot_topology(topo, tmp_path, prefix=f"d{len(shape)}")
        assert len(paths) == (3 if len(shape) <= 2 else 2)
        assert all(p.stat().st_size > 1000 for p in paths)


def _store(path, z, coords):
    from modescape.store import ResultStore

    st = ResultStore.open_or_create(path, coords, ["train_loss", "test_loss"], {"t": 1}, unit_rows=len(coords["x"]))
    st.write_unit(0, np.stack([z.reshape(-1), 2 * z.reshape(-1)], axis=1))
    st.finish()
    return st


def test_cli_writes_numbers_and_figures_beside_the_result(tmp_path, capsys):
    ds = wells_grid()
    _store(tmp_path / "result.zarr", ds.train_loss.values, {"x": ds.x.values, "y": ds.y.values})
    code, out, err = run_cli(["topology", tmp_path, "--json", "--threshold", "0.001", "--neighbourhood", "8"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["basins"] == 5 and summary["neighbourhood"] == "full"
    saved = json.loads((tmp_path / "topology.json").read_text())
    assert saved["basins"] == 5 and saved["source"].endswith("result.zarr")
    for name in ("persistence", "merge_tree", "minima"):
        assert (tmp_path / f"train_loss_{name}.png").exists()
    code, out, _ = run_cli(
        ["topology", tmp_path / "result.zarr", "--metric", "test_loss", "--no-figures", "--out", tmp_path / "t"], capsys
    )
    assert code == 0 and "basins with persistence >" in out
    assert (tmp_path / "t" / "topology_test_loss.json").exists() and not list((tmp_path / "t").glob("*.png"))


def test_cli_refuses_an_unfinished_result_in_one_line(tmp_path, capsys):
    from modescape.store import ResultStore

    coords = {"x": np.linspace(-1, 1, 4), "y": np.linspace(-1, 1, 3)}
    st = ResultStore.open_or_create(tmp_path / "result.zarr", coords, ["train_loss"], {"t": 1}, unit_rows=2)
    st.write_unit(0, np.ones((6, 1)))  # half the grid
    code, _, err = run_cli(["topology", tmp_path], capsys)
    assert code == 2 and "6 NaN of 12 cells" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["topology", tmp_path, "--neighbourhood", "diagonal"], capsys)
    assert code == 2 and "--neighbourhood" in err
    code, _, err = run_cli(["topology", tmp_path, "--threshold", "x%"], capsys)
    assert code == 2 and "threshold" in err


# -- directions: Hessian eigenvectors and exact orthogonality ----------------------------------------


def _cos64(a, b) -> float:
    fa = torch.cat([v.double().reshape(-1) for v in a.values()])
    fb = torch.cat([v.double().reshape(-1) for v in b.values()])
    return float(fa @ fb / (fa.norm() * fb.norm()))


@pytest.mark.parametrize("normalization", ["filter", "layer", "model", "none"])
def test_orthogonal_random_directions_are_orthogonal_in_float32(normalization):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    for seed in range(3):
        d = random_directions(net, 3, normalization=normalization, seed=seed, orthogonal=True)
        assert all(v.dtype == torch.float32 for v in d[0].values())
        for i in range(3):
            for j in range(i):
                assert abs(_cos64(d[i], d[j])) < 1e-6


def _problem(dtype=torch.float64):
    torch.manual_seed(0)
    X = torch.randn(64, 5, dtype=dtype)
    y = torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    return net, (X, y)


def test_hessian_directions_are_the_eigenvectors_unit_norm_and_unscaled():
    from modescape.curvature import Hessian

    net, data = _problem()
    hd = hessian_directions(net, data, indices=(0, 2), tol=1e-10, hvp_method="double-backward")
    lam, V = torch.linalg.eigh(Hessian(net, data).dense())
    lam, V = lam.flip(0), V.flip(1)  # largest first
    assert hd.eigenvalues == pytest.approx(lam[[0, 2]].tolist(), rel=1e-8)
    for d, i in zip(hd.directions, hd.indices, strict=True):
        v = sp.flatten(d)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-12)
        assert abs(float(v @ V[:, i])) == pytest.approx(1.0, abs=1e-8)  # the eigenvector itself, up to sign
        assert float(v[v.abs().argmax()]) > 0
    assert abs(_cos64(*hd.directions)) < 1e-12
    assert hd.labels()[1].startswith("Hessian eigenvector 2 (lambda = ")
    assert hd.to_dict()["indices"] == [0, 2]


def test_hessian_directions_restricted_to_weights_keep_zero_biases_in_float32():
    net, data = _problem(torch.float32)
    hd = hessian_directions(net, data, indices=(1, 0), params="weights", tol=1e-6, hvp_method="double-backward")
    assert hd.eigenvalues[0] <= hd.eigenvalues[1]
    for d in hd.directions:
        assert all(v.dtype == torch.float32 for v in d.values())
        assert float(d["0.bias"].abs().max()) == 0.0 and float(d["2.bias"].abs().max()) == 0.0
        assert float(sp.norm(sp.to(d, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-6)
    assert abs(_cos64(*hd.directions)) < 1e-6


def test_direction_specs():
    assert parse_directions("random") == ("random", None)
    assert parse_directions("hessian") == ("hessian", (0, 1))
    assert parse_directions("hessian:2,5") == ("hessian", (2, 5))
    for bad in ("hessian:2", "hessian:1,1", "hessian:-1,2", "hessian:a,b", "pca", "random:1"):
        with pytest.raises(UserError, match="unknown directions"):
            parse_directions(bad)
    with pytest.raises(UserError, match="distinct"):
        hessian_directions(*_problem(), indices=(1, 1))

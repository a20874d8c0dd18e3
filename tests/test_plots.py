"""Figures a reader understands: what matplotlib and plotly drew is read back (through
`modescape.plots.base.capture_figures` and the saved HTML), not looked at.

Titles name the runs compared, train is solid and test dashed in every 1-D figure, legends have one
distinct entry per series and stay clear of the axis labels, colorbar ticks and contour levels are round,
loss axes carry no offset, the 3-D HTML camera frames the surface with titled axes, HTML pages share one
local plotly.min.js, and FGE has a figure."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr

from modescape.plots import base
from modescape.plots.base import capture_figures, run_names

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # e.g. a legend or layout matplotlib gave up on

RUN_A, RUN_B = "runs/a/final.safetensors", "runs/b/final.safetensors"


# ---------------------------------------------------------------------------------------------------------
# synthetic results (the figures only read them)


def line_ds(checkpoints=(RUN_A, RUN_B)) -> xr.Dataset:
    t = np.linspace(-0.5, 1.5, 21)
    bump = np.exp(-((t - 0.5) ** 2) / 0.05)
    # losses that differ only in the 4th decimal: matplotlib's default would write them as offset + 1e-4 ticks
    return xr.Dataset(
        {
            "train_loss": ("t", 2.3001 + 3e-4 * bump),
            "test_loss": ("t", 2.3003 + 3e-4 * bump),
            "train_accuracy": ("t", 0.9 - 0.1 * bump),
            "test_accuracy": ("t", 0.88 - 0.1 * bump),
        },
        coords={"t": t},
        attrs={"checkpoints": list(checkpoints), "models": {"labels": ["A", "B"], "coords": [[0.0, 0.0], [1.0, 0.0]]}},
    )


def plane_ds(span: str = "decades", checkpoints=(RUN_A,)) -> xr.Dataset:
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    gx, gy = np.meshgrid(x, y, indexing="ij")
    if span == "decades":  # positive and more than a decade: log levels
        z = 0.0213 * np.exp(3.0 * (gx**2 + gy**2))
    else:  # a narrow band around 2.3
        z = 2.3001 + 3e-4 * (gx**2 + gy**2)
    labels = ["A", "B", "C"][: len(checkpoints)] if len(checkpoints) > 1 else ["model"]
    coords = [[0.0, 0.0], [0.5, 0.2], [-0.3, 0.6]][: len(labels)]
    return xr.Dataset(
        {
            "train_loss": (("x", "y"), z),
            "test_loss": (("x", "y"), 1.1 * z),
            "train_accuracy": (("x", "y"), 1 - 0.1 * gx**2),
        },
        coords={"x": x, "y": y},
        attrs={"checkpoints": list(checkpoints), "models": {"labels": labels, "coords": coords}},
    )


def path_result(name: str, bump: float) -> object:
    from modescape.evaluate.evaluator import Metrics
    from modescape.paths import PathResult

    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    b = torch.exp(-((t - 0.5) ** 2) / 0.05) * bump
    names = ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "test_error")
    values = torch.stack([2.3001 + 3e-4 * b, 2.3003 + 3e-4 * b, 0.9 - b / 10, 0.88 - b / 10, 0.12 + b / 10], 1)
    return PathResult(t, Metrics(values, names, "recompute"), torch.zeros_like(t), name=name)


def plane_result():
    from modescape.connect import PlaneResult

    x, y = torch.linspace(-2, 22, 13, dtype=torch.float64), torch.linspace(-4, 8, 7, dtype=torch.float64)
    gx, gy = torch.meshgrid(x, y, indexing="ij")
    err = 0.015 + 0.2 * torch.exp(-((gx - 10) ** 2) / 40) * torch.exp(-(gy**2) / 8)
    bends = torch.tensor([[0.0, 0.0], [10.0, 5.0], [20.0, 0.0]], dtype=torch.float64)
    s = torch.linspace(0, 1, 21, dtype=torch.float64)[:, None]
    curve = (1 - s) ** 2 * bends[0] + 2 * s * (1 - s) * bends[1] + s**2 * bends[2]
    return PlaneResult(x, y, {"test_error": err}, bends, curve, "recompute")


def correlation(n_measures: int = 13, n_runs: int = 8):
    from modescape.correlate import Correlation

    rng = np.random.default_rng(0)
    measures = [f"measure_{k:02d}" for k in range(n_measures)]
    rows = [
        {"run": f"runs/r{i}", "gap": float(rng.random()), **{m: float(rng.random()) for m in measures}}
        for i in range(n_runs)
    ]
    tau = {m: (float(rng.uniform(-1, 1)), 0.5) for m in measures}
    return Correlation(rows, tau, measures, "test_error - train_error")


def fge_result():
    members = [
        {
            "epoch": 2 * m,
            "members": m,
            "single_accuracy": 0.983 + 0.0005 * (m % 2),
            "single_nll": 0.0522,
            "accuracy": 0.9833 + 0.0004 * m,
            "nll": 0.0522 - 0.0009 * m,
            "brier": 0.02,
            "ece": 0.01,
            "disagreement": 0.01,
        }
        for m in range(1, 6)
    ]
    return SimpleNamespace(members=members, start={"accuracy": 0.9836, "nll": 0.0516})


def drawn(fig):
    """The figure drawn as it was saved (a closed figure has lost its Agg canvas: give it a new one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def is_round(values, log: bool = False) -> bool:
    """Linear: every value a multiple of one step of 1, 2, 2.5 or 5 x 10^k. Log: mantissas 1, 2 or 5 (or 1..9)."""
    v = np.asarray(values, dtype=np.float64)
    if log:
        mant = v / 10.0 ** np.floor(np.log10(v) + 1e-9)
        return bool(np.all(np.abs(mant - np.round(mant)) < 1e-6))
    if v.size < 2:
        return True
    step = float(np.min(np.diff(np.sort(v))))
    k = math.floor(math.log10(step))
    if min(abs(step / 10**k - m) for m in (1, 2, 2.5, 5, 10)) > 1e-6:
        return False
    return bool(np.all(np.abs(v / step - np.round(v / step)) < 1e-6))


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# ---------------------------------------------------------------------------------------------------------
# titles name the runs


@pytest.mark.parametrize(
    "paths, names",
    [
        ((RUN_A, RUN_B), ["a", "b"]),
        (("/x/exp/runs/a/final.safetensors", "/x/exp/runs/b/final.safetensors"), ["a", "b"]),
        (("x/run1/final.safetensors", "y/run1/final.safetensors"), ["x/run1", "y/run1"]),
        (("runs/a/epoch-010.safetensors", "runs/a/final.safetensors"), ["epoch-010", "final"]),
        (("a.safetensors", "b.safetensors", "c.safetensors"), ["a", "b", "c"]),
        ((RUN_A,), ["a/final"]),
    ],
)
def test_run_names_are_the_shortest_that_tell_runs_apart(paths, names):
    assert run_names(paths) == names
    assert len(set(run_names(paths))) == len(paths)


def test_titles_name_the_runs_compared(tmp_path):
    from modescape.plots import plot_alignment, plot_line, plot_paths, plot_plane, plot_result
    from modescape.plots.paths import plot_fge

    with capture_figures() as figs:
        plot_line(line_ds(), tmp_path / "line.png")  # from the result's provenance
        plot_line(line_ds(checkpoints=()), tmp_path / "l2.png", labels=["runs/a", "runs/b"])  # strings as given
        plot_paths(
            [path_result("curve", 0.1), path_result("segment", 1)],
            tmp_path / "p.png",
            labels=(Path(RUN_A), Path(RUN_B)),
        )
        plot_plane(plane_result(), tmp_path / "plane.png", labels=(Path(RUN_A), Path(RUN_B)))
        plot_alignment(
            {"before": path_result("b", 1), "after": path_result("a", 0.1)},
            tmp_path / "al.png",
            labels=(Path(RUN_A), Path(RUN_B)),
        )
        plot_fge(fge_result(), tmp_path / "fge.png", label=Path(RUN_A))
        plot_result(
            plane_ds(checkpoints=("r/a/final.safetensors", "r/b/final.safetensors", "r/c/final.safetensors")),
            tmp_path / "through",
        )
    texts = []
    for fig in figs:
        if hasattr(fig, "get_axes"):
            texts.append(
                " | ".join(
                    [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.get_axes()]
                )
            )
        else:
            texts.append(fig.layout.title.text)
    assert all("final.safetensors" not in t for t in texts), texts
    assert "a -> b" in texts[0] and "runs/a -> runs/b" in texts[1]
    assert all("a -> b" in t for t in texts[2:5]), texts[2:5]
    assert "from a/final" in texts[5]
    assert all("A = a, B = b, C = c" in t for t in texts[6:]), texts[6:]
    # the t axis says which run is at which end
    assert figs[0].get_axes()[0].get_xlabel() == "t  (a at 0, b at 1)"


# ---------------------------------------------------------------------------------------------------------
# one line-style convention


def test_every_1d_figure_draws_train_solid_and_test_dashed(tmp_path):
    from modescape.plots import plot_alignment, plot_line, plot_paths, write_html
    from modescape.plots.paths import plot_fge

    assert base.split_style("train_loss") == "-" and base.split_style("test_error") == "--"
    with capture_figures() as figs:
        plot_line(line_ds(), tmp_path / "line.png")
        plot_paths(
            [path_result("curve", 0.1), path_result("segment", 1)],
            tmp_path / "p.png",
            metrics=("train_loss", "test_loss", "test_error"),
        )
        plot_alignment({"before": path_result("b", 1), "after": path_result("a", 0.1)}, tmp_path / "al.png")
        plot_fge(fge_result(), tmp_path / "fge.png")
        write_html(line_ds(), tmp_path / "line.html")
    seen = set()
    for fig in figs[:3]:
        for ax in fig.get_axes():
            for ln in ax.get_lines():
                y = ln.get_ydata()
                # which split a line shows: from its label (line, alignment) or its panel's y label (paths)
                what = ln.get_label() if not ln.get_label().startswith("_") else ax.get_ylabel()
                if ax.get_ylabel() and base.split_of(ax.get_ylabel().split(" (")[0].replace(" ", "_")):
                    what = ax.get_ylabel()
                split = "train" if "train" in what else "test" if "test" in what else None
                if split and len(y) > 2:
                    assert ln.get_linestyle() == {"train": "-", "test": "--"}[split], (what, ln.get_linestyle())
                    seen.add(split)
    assert seen == {"train", "test"}
    fge_lines = [ln for ax in figs[3].get_axes() for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
    assert fge_lines and all(ln.get_linestyle() == "--" for ln in fge_lines)  # all measured on the test data
    html = figs[4]
    for tr in html.data:
        assert tr.line.dash == ("dash" if tr.name.startswith("test") else "solid")


# ---------------------------------------------------------------------------------------------------------
# legends


def test_correlate_rank_panel_has_a_distinct_style_per_measure_and_its_legend_beside_it(tmp_path):
    from modescape.plots import plot_correlation

    with capture_figures() as figs:
        plot_correlation(correlation(13), tmp_path / "c.png")
    fig = drawn(figs[0])
    ranks = fig.get_axes()[1]
    styles = [(ln.get_color(), ln.get_marker()) for ln in ranks.get_lines()]
    assert len(styles) == 13 and len(set(styles)) == 13
    leg = ranks.get_legend()
    assert len(leg.get_texts()) == 13
    r = fig.canvas.get_renderer()
    assert leg.get_window_extent(r).x0 >= ranks.get_window_extent(r).x1  # outside the data
    assert leg.get_window_extent(r).x1 <= fig.bbox.x1 + 1  # and inside the figure


def test_connect_plane_legend_stays_clear_of_the_x_label(tmp_path):
    from modescape.plots import plot_plane

    with capture_figures() as figs:
        plot_plane(plane_result(), tmp_path / "plane.png")
    fig = drawn(figs[0])
    r = fig.canvas.get_renderer()
    ax = fig.get_axes()[0]
    leg = fig.legends[0] if fig.legends else ax.get_legend()
    assert {t.get_text() for t in leg.get_texts()} == {"curve", "segment", "endpoints", "bend"}
    box = leg.get_window_extent(r)
    assert not overlaps(box, ax.xaxis.label.get_window_extent(r))
    assert not overlaps(box, ax.get_window_extent(r))
    assert box.y0 >= fig.bbox.y0 - 1  # on the canvas


def test_line_legend_stays_clear_of_the_data_and_labels(tmp_path):
    from modescape.plots import plot_line

    with capture_figures() as figs:
        plot_line(line_ds(), tmp_path / "line.png")
    fig = drawn(figs[0])
    r = fig.canvas.get_renderer()
    leg = fig.legends[0]
    assert len(leg.get_texts()) == 4
    for ax in fig.get_axes():
        assert not overlaps(leg.get_window_extent(r), ax.get_window_extent(r))
        assert not overlaps(leg.get_window_extent(r), ax.xaxis.label.get_window_extent(r))


# ---------------------------------------------------------------------------------------------------------
# numbers: round colorbar ticks and contour levels, no offsets


def test_contour_levels_and_colorbar_ticks_are_round(tmp_path):
    from matplotlib.colors import LogNorm

    from modescape.plots import plot_convexity, plot_plane, plot_surface

    conv = plane_ds("narrow").rename({"train_loss": "convexity_ratio"})
    conv["convexity_ratio"] = conv["convexity_ratio"] / 7.3
    with capture_figures() as figs:
        plot_surface(plane_ds("decades"), tmp_path, kinds=("contour", "contourf", "heatmap"))
        plot_surface(plane_ds("narrow"), tmp_path / "n", kinds=("contour", "contourf", "heatmap"))
        plot_plane(plane_result(), tmp_path / "plane.png")
        plot_convexity(conv, tmp_path / "conv.png")
    checked = 0
    for fig in map(drawn, figs):
        for ax in fig.get_axes():
            for cs in getattr(ax, "collections", []):
                levels = getattr(cs, "levels", None)
                if levels is not None:
                    assert is_round(levels, log=isinstance(cs.norm, LogNorm)), levels
            if ax.get_label() == "<colorbar>":
                cb = ax._colorbar
                ticks = [t for t in cb.get_ticks() if cb.vmin - 1e-12 <= t <= cb.vmax + 1e-12]
                assert len(ticks) >= 2, ticks
                assert is_round(ticks, log=isinstance(cb.norm, LogNorm)), ticks
                assert cb.ax.yaxis.get_major_formatter().get_offset() == ""
                checked += 1
    assert checked == 6  # two contourf, two heatmaps, the plane, the convexity map


def test_no_offset_notation_on_loss_axes(tmp_path):
    from modescape.plots import plot_alignment, plot_line, plot_paths, plot_surface

    with capture_figures() as figs:
        plot_line(line_ds(), tmp_path / "line.png")
        plot_paths([path_result("curve", 0.1), path_result("segment", 1)], tmp_path / "p.png")
        plot_alignment({"before": path_result("b", 1), "after": path_result("a", 0.1)}, tmp_path / "al.png")
        plot_surface(plane_ds("narrow"), tmp_path, kinds=("surface",))
    for fig in map(drawn, figs):
        for ax in fig.get_axes():
            for axis in (ax.xaxis, ax.yaxis, getattr(ax, "zaxis", None)):
                if axis is not None:
                    assert axis.get_major_formatter().get_offset() == "", (ax.get_title(), axis.get_label_text())
    # the case that needs it: these ticks would read "+2.3" in a corner by default
    loss_ax = figs[0].get_axes()[0]
    assert loss_ax.get_ylabel() == "loss"
    labels = [t.get_text() for t in loss_ax.get_yticklabels() if t.get_text()]
    assert labels and all(lb.replace("\u2212", "-").startswith("2.30") for lb in labels), labels


# ---------------------------------------------------------------------------------------------------------
# the interactive page


def test_html_camera_frames_the_surface_with_titled_axes(tmp_path):
    from modescape.plots import write_html

    with capture_figures() as figs:
        write_html(plane_ds(), tmp_path / "landscape.html")
    scene = figs[0].layout.scene
    assert scene.xaxis.title.text == "x" and scene.yaxis.title.text == "y" and scene.zaxis.title.text == "train_loss"
    assert scene.aspectmode == "manual" and scene.aspectratio.z < scene.aspectratio.x
    eye = scene.camera.eye
    assert math.hypot(eye.x, eye.y, eye.z) > math.hypot(1.25, 1.25, 1.25)  # further out than plotly's default
    assert "a/final" in figs[0].layout.title.text
    # the page itself holds the same layout
    html = (tmp_path / "landscape.html").read_text()
    assert '"aspectmode":"manual"' in html and '"zaxis":{"title":{"text":"train_loss"}' in html


def test_html_pages_share_one_local_plotly_js(tmp_path):
    from plotly.offline import get_plotlyjs

    from modescape.plots import plot_result, write_html

    plot_result(plane_ds(), tmp_path / "out")
    write_html(line_ds(), tmp_path / "out" / "second.html")
    write_html(plane_ds(), tmp_path / "out" / "sub" / "third.html", plotlyjs=tmp_path / "out")
    js = tmp_path / "out" / "plotly.min.js"
    assert js.read_text() == get_plotlyjs()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.js")) == ["plotly.min.js"]
    pages = {"landscape.html": "plotly.min.js", "second.html": "plotly.min.js", "sub/third.html": "../plotly.min.js"}
    for page, src in pages.items():
        text = (tmp_path / "out" / page).read_text()
        scripts = re.findall(r'<script[^>]*src="([^"]+)"', text)
        assert scripts == [src], (page, scripts)
        assert (tmp_path / "out" / page).parent.joinpath(src).resolve() == js.resolve()
        assert len(text) < 200_000 and "cdn" not in text.lower()  # the library is not embedded, nor fetched
        assert "Plotly.newPlot" in text
    # written once: a second page leaves the file alone
    before = js.stat().st_mtime_ns
    write_html(line_ds(), tmp_path / "out" / "fourth.html")
    assert js.stat().st_mtime_ns == before
    # and the old self-contained page on request
    write_html(line_ds(), tmp_path / "inline.html", plotlyjs="inline")
    assert not (tmp_path / "plotly.min.js").exists() and len((tmp_path / "inline.html").read_text()) > 1_000_000


# ---------------------------------------------------------------------------------------------------------
# FGE


def test_fge_figure_shows_members_single_and_ensemble(tmp_path):
    from modescape.ensembles import FGEResult
    from modescape.plots.paths import plot_fge

    res = fge_result()
    full = FGEResult([], res.members, res.start, [], [])
    with capture_figures() as figs:
        out = plot_fge(
            full,
            tmp_path / "fge.png",
            label=Path(RUN_A),
            baselines={"one model, same budget": {"accuracy": 0.984, "nll": 0.0531}},
        )
        plot_fge(json.loads(json.dumps(full.to_dict())), tmp_path / "fge2.png")  # from fge.json
    assert out.stat().st_size > 0 and (tmp_path / "fge2.png").stat().st_size > 0
    fig = drawn(figs[0])
    acc, nll = fig.get_axes()
    assert acc.get_ylabel() == "test accuracy (%)" and nll.get_ylabel() == "test NLL"
    by_label = {ln.get_label(): ln for ln in acc.get_lines()}
    assert list(by_label["FGE ensemble"].get_xdata()) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(by_label["FGE ensemble"].get_ydata(), [100 * m["accuracy"] for m in res.members])
    np.testing.assert_allclose(
        by_label["snapshot alone"].get_ydata(), [100 * m["single_accuracy"] for m in res.members]
    )
    np.testing.assert_allclose(by_label["start model"].get_ydata(), [100 * 0.9836] * 2)
    assert "one model, same budget" in by_label
    np.testing.assert_allclose(
        {ln.get_label(): ln for ln in nll.get_lines()}["FGE ensemble"].get_ydata(), [m["nll"] for m in res.members]
    )
    assert all(float(t).is_integer() for t in acc.get_xticks())
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {"FGE ensemble", "snapshot alone", "start model"}


# ---------------------------------------------------------------------------------------------------------
# what stayed: signatures, atomic saves


def test_old_call_forms_still_work(tmp_path):
    from modescape.plots import (
        plot_alignment,
        plot_correlation,
        plot_density,
        plot_line,
        plot_paths,
        plot_plane,
        plot_result,
        plot_surface,
        plot_swap,
        write_html,
    )

    assert plot_line(line_ds(), tmp_path / "l.png", "a title").exists()
    assert all(p.exists() for p in plot_surface(plane_ds(), tmp_path, "train_loss", "pre", ("contour",)))
    assert write_html(line_ds(), tmp_path / "w.html", "train_loss", "t").exists()
    assert plot_paths([path_result("curve", 0.1)], tmp_path / "p.png", ("train_loss",), "title").exists()
    assert plot_plane(plane_result(), tmp_path / "pl.png", "test_error", "title").exists()
    assert plot_alignment({"x": path_result("x", 1)}, tmp_path / "a.png", "t", True).exists()
    assert plot_swap({"t": [0, 0.5, 1], "loss": [1, 2, 1], "i": 0, "j": 1, "perm": "P0"}, tmp_path / "s.png").exists()
    assert plot_correlation(correlation(3, 4), tmp_path / "c.png").exists()
    assert any(p.name == "line.png" for p in plot_result(line_ds(), tmp_path / "r"))
    from modescape.curvature.spectrum import Density

    grid = torch.linspace(-1, 5, 50)
    d = Density(torch.zeros(2, 3), torch.ones(2, 3) / 3, grid, torch.exp(-(grid**2)), 0.1, 10)
    ax = plot_density(d, tmp_path / "d.png", label=Path(RUN_A))
    assert (tmp_path / "d.png").exists() and "a/final" in ax.get_title()
    assert not list(tmp_path.rglob("*.tmp"))  # every save went through the atomic rename

"""What every figure shares: the matplotlib backend, the one atomic save, and the conventions a reader can
rely on in every figure modescape draws.

* **Saving.** Figures are written to a temporary file beside the target and renamed into place
  (`modescape.io`), so an interrupted run never leaves a half-written PNG or HTML page. `save_figure` also
  turns off offset notation on every linear axis (a loss axis reads 2.3001, 2.3002, never "+2.3" in a
  corner). HTML pages share one ``plotly.min.js`` written beside them (from the installed plotly, so the
  pages open offline) instead of inlining 4.8 MB each.
* **Lines.** ``train`` solid, ``test`` dashed (`split_style`, `plotly_dash`; `split_handles` for a
  legend of the two); reference lines (a model's value, t = 0 and 1) grey and dotted (`REFERENCE`).
* **Many series.** `series_styles(n)`: a colour and a marker per series, no two alike (tab10 x 7
  markers: distinct up to 70); `legend_outside` puts a long legend beside or below the axes, where the
  layout makes room for it instead of covering a label.
* **Colour scales.** `nice_levels`: contour levels on round numbers (1, 2, 2.5, 5 x 10^k steps; 1-2-5 or
  1..9 x 10^k on a log scale when positive values span more than a decade) and the norm that goes with
  them; `round_colorbar` puts a colorbar's ticks on round values.
* **Titles.** `run_names(paths)`: the shortest names that tell runs apart (``runs/a/final.safetensors``
  and ``runs/b/final.safetensors`` read ``a`` and ``b``); `compared(labels)`: ``a -> b``.
* **Tests.** `capture_figures()` collects every figure saved inside it, so a test reads back what
  matplotlib or plotly drew.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .. import io
from ..errors import UserError

# ---------------------------------------------------------------------------------------------------------
# line styles: one rule everywhere

SPLIT_STYLES = {"train": "-", "test": "--"}
"""matplotlib line style of each data split: train solid, test dashed."""

PLOTLY_DASHES = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}

REFERENCE = {"color": "0.45", "lw": 0.9, "ls": ":"}
"""Keyword arguments of a reference line (``axhline``/``axvline``): a model's value, t = 0 and t = 1."""

COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 is coprime with 10: (colour, marker) repeats after 70


def split_of(name: str) -> str | None:
    """The data split a metric belongs to (``train_loss`` -> ``train``, ``test_error`` -> ``test``), or None."""
    head = str(name).split("_", 1)[0].split(" ", 1)[0]
    return head if head in SPLIT_STYLES else None


def split_style(name: str) -> str:
    """matplotlib line style of a metric or split name: train solid, test dashed, anything else solid."""
    return SPLIT_STYLES.get(split_of(name) or str(name), "-")


def plotly_dash(name: str) -> str:
    """The plotly ``line.dash`` of a metric or split name (the same rule as `split_style`)."""
    return PLOTLY_DASHES[split_style(name)]


def split_handles(splits: Sequence[str] = ("train", "test"), color: str = "black") -> list:
    """Legend handles that explain the line styles (e.g. beside a legend of colours)."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=color, ls=SPLIT_STYLES[s], label=s) for s in splits]


def series_styles(n: int) -> list[dict[str, str]]:
    """``n`` distinct ``{"color", "marker"}`` pairs (colours cycle over 10, markers over 7)."""
    return [{"color": COLORS[k % len(COLORS)], "marker": MARKERS[k % len(MARKERS)]} for k in range(n)]


def legend_outside(
    owner, handles=None, labels=None, where: str = "right", fontsize: float = 8, ncol: int | None = None, **kw
):
    """A legend outside the plotting area: ``where="right"`` beside an Axes (upper left corner at its right
    edge), ``"below"`` / ``"above"`` a whole figure (needs ``layout="constrained"``, which makes room for it).
    ``owner``: the Axes (right) or the Figure (below, above)."""
    if handles is None:
        handles, labels = owner.get_legend_handles_labels()
    elif labels is None:
        labels = [h.get_label() for h in handles]
    kw = {"fontsize": fontsize, "frameon": False, **kw}
    if where == "right":
        return owner.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncol=ncol or 1, **kw
        )
    if where in ("below", "above"):
        loc = "outside lower center" if where == "below" else "outside upper center"
        return owner.legend(handles, labels, loc=loc, ncol=ncol or min(len(handles), 4), **kw)
    raise ValueError(f"where must be right, below or above; got {where!r}")


# ---------------------------------------------------------------------------------------------------------
# numbers on axes and colour scales


def plain_numbers(fig) -> None:
    """No offset notation on any linear axis of ``fig`` (colorbars and 3-D axes included)."""
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.get_axes():
        for axis in (getattr(ax, "xaxis", None), getattr(ax, "yaxis", None), getattr(ax, "zaxis", None)):
            if axis is None:
                continue
            fmt = axis.get_major_formatter()
            if isinstance(fmt, ScalarFormatter):
                fmt.set_useOffset(False)


def nice_levels(z: np.ndarray, n: int = 20, log: bool | None = None) -> tuple[np.ndarray, Any]:
    """Contour levels on round numbers covering the finite values of ``z``, and the matplotlib norm for them.

    Log levels (a `LogNorm`) when the values are positive and span more than a decade (``log=None``) or when
    asked: 1..9 x 10^k over up to three decades, 1-2-5 up to eight, 10^k beyond. Linear levels otherwise: at
    most ``n`` steps of 1, 2, 2.5 or 5 x 10^k (`MaxNLocator`), norm None.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    z = np.asarray(z, dtype=np.float64)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise UserError(
            "nothing to plot: every value is NaN or infinite (an unfinished sweep, or a loss that is "
            "not finite at these points: check the checkpoint's own loss)"
        )
    lo, hi = float(finite.min()), float(finite.max())
    if log is None:
        log = lo > 0 and hi > 10 * lo
    if log and lo > 0 and hi > lo:
        decades = np.log10(hi / lo)
        subs = range(1, 10) if decades <= 3 else (1, 2, 5) if decades <= 8 else (1,)
        k0, k1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
        cand = np.array(sorted({float(f"{s}e{k}") for k in range(k0, k1 + 1) for s in subs}))
        first = int(np.searchsorted(cand, lo, side="right")) - 1
        last = int(np.searchsorted(cand, hi, side="left"))
        levels = cand[max(first, 0) : last + 1]
        return levels, LogNorm(vmin=float(levels[0]), vmax=float(levels[-1]))
    if hi <= lo:
        pad = max(abs(lo) * 1e-6, 1e-12)
        lo, hi = lo - pad, hi + pad
    ticks = np.asarray(MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi))
    step = float(ticks[1] - ticks[0])
    digits = max(0, -int(np.floor(np.log10(step))) + 2)
    ticks = np.round(ticks, digits)  # 0.30000000000000004 -> 0.3
    first = int(np.searchsorted(ticks, lo, side="right")) - 1
    last = int(np.searchsorted(ticks, hi, side="left"))
    return ticks[max(first, 0) : last + 1], None


def round_colorbar(cb, nbins: int = 7):
    """Put a colorbar's ticks on round values (1-2-5 x 10^k on a log norm, steps of 1, 2, 2.5, 5 x 10^k
    otherwise) without offset notation. Returns the colorbar."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, ScalarFormatter

    if isinstance(cb.norm, LogNorm):
        cb.locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12)
        cb.formatter = FuncFormatter(lambda v, _pos: f"{v:g}")  # every tick labelled: 0.02, 0.05, 0.1, ...
    else:
        cb.locator = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10])
        fmt = ScalarFormatter(useOffset=False)
        cb.formatter = fmt
    cb.minorticks_off()
    cb.update_ticks()
    return cb


# ---------------------------------------------------------------------------------------------------------
# titles


def _display_parts(p: str | os.PathLike) -> list[str]:
    parts = [q for q in PurePath(os.fspath(p)).parts if q not in ("", ".")]
    if parts and PurePath(parts[-1]).suffix in (".safetensors", ".pt", ".pth", ".zarr", ".json"):
        parts[-1] = PurePath(parts[-1]).stem
    return parts


def run_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names that tell the given checkpoints or run folders apart, for titles and legends.

    The folders every path shares at the start are dropped, and so is the file name when every path has the
    same one: ``runs/a/final.safetensors``, ``runs/b/final.safetensors`` -> ``a``, ``b``;
    ``runs/a/epoch-010.safetensors``, ``runs/a/final.safetensors`` -> ``epoch-010``, ``final``. One path
    reads as its folder and file (``a/final``). Identical paths keep their own name each.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return []
    if any(os.path.isabs(p) for p in paths) and not all(os.path.isabs(p) for p in paths):
        paths = [os.path.abspath(p) for p in paths]
    parts = [_display_parts(p) for p in paths]
    if len(parts) == 1:
        return ["/".join(parts[0][-2:]) or os.fspath(paths[0])]
    # the last component when every path ends with the same one (final.safetensors), unless it is all there is
    if all(len(q) > 1 for q in parts) and len({q[-1] for q in parts}) == 1:
        parts = [q[:-1] for q in parts]
    shared = 0
    while all(len(q) > shared + 1 for q in parts) and len({q[shared] for q in parts}) == 1:
        shared += 1
    names = ["/".join(q[shared:]) for q in parts]
    if len(set(names)) < len(names):  # the same path given twice: nothing tells them apart, keep their names
        names = ["/".join(q[-2:]) for q in parts]
    return names


def labels_of(labels: Sequence[Any] | None) -> list[str] | None:
    """Labels for a title: path-like items (``Path``) shortened together by `run_names`, strings as given."""
    if labels is None:
        return None
    labels = list(labels)
    idx = [i for i, v in enumerate(labels) if isinstance(v, os.PathLike)]
    out = [str(v) for v in labels]
    for i, name in zip(idx, run_names([labels[i] for i in idx]), strict=True):
        out[i] = name
    return out


def compared(labels: Sequence[Any] | None, sep: str = " -> ") -> str:
    """``"a -> b"`` for the runs compared (`labels_of`), ``""`` when there are none."""
    names = labels_of(labels)
    return sep.join(names) if names else ""


def with_runs(what: str, labels: Sequence[Any] | None, sep: str = " -> ") -> str:
    """A title naming what is drawn and the runs it compares: ``"loss along the line: a -> b"``."""
    runs = compared(labels, sep)
    return f"{what}: {runs}" if runs else what


# ---------------------------------------------------------------------------------------------------------
# saving

_CAPTURED: contextvars.ContextVar[list | None] = contextvars.ContextVar("modescape_figures", default=None)


@contextlib.contextmanager
def capture_figures() -> Iterator[list]:
    """Collect every figure `save_figure` and `save_html` write inside the block (matplotlib ``Figure`` and
    plotly ``Figure`` objects, in order), so tests can read back what was drawn."""
    figs: list = []
    token = _CAPTURED.set(figs)
    try:
        yield figs
    finally:
        _CAPTURED.reset(token)


def _captured(fig) -> None:
    figs = _CAPTURED.get()
    if figs is not None:
        figs.append(fig)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.2), **kw):
    """``plt.subplots`` with the constrained layout (room for outside legends and colorbars), axes squeezed."""
    return pyplot().subplots(nrows, ncols, figsize=figsize, layout="constrained", **kw)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG by default) and close it; linear axes
    show plain numbers (`plain_numbers`)."""
    path = Path(path)
    plain_numbers(fig)
    _captured(fig)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    pyplot().close(fig)
    return path


PLOTLY_JS = "plotly.min.js"


def write_plotlyjs(folder: str | Path) -> Path:
    """``folder/plotly.min.js`` from the installed plotly (atomically; left alone when it already holds it)."""
    from plotly.offline import get_plotlyjs

    target = Path(folder) / PLOTLY_JS
    text = get_plotlyjs()
    data = text.encode("utf-8")
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return target
    except OSError:
        pass
    with io.atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def save_html(fig, path: str | Path, plotlyjs: str | Path | None = None) -> Path:
    """Save a plotly figure as an HTML page, atomically. The page loads ``plotly.min.js`` from ``plotlyjs``
    (a folder; default the page's own), written there once from the installed plotly, so the pages of one
    result share it and open offline. ``plotlyjs="inline"``: one self-contained page (4.8 MB)."""
    path = Path(path)
    _captured(fig)
    if str(plotlyjs) == "inline":
        include: Any = True
    else:
        js = write_plotlyjs(path.parent if plotlyjs is None else Path(plotlyjs))
        include = Path(os.path.relpath(js.resolve(), path.parent.resolve())).as_posix()
    with io.atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=include, full_html=True)
    return path


def save_text(text: str, path: str | Path) -> Path:
    """Write a text export (e.g. VTK) atomically."""
    io.write_text(path, text)
    return Path(path)


__all__ = [
    "COLORS",
    "MARKERS",
    "PLOTLY_JS",
    "REFERENCE",
    "SPLIT_STYLES",
    "capture_figures",
    "compared",
    "figure",
    "labels_of",
    "legend_outside",
    "nice_levels",
    "plain_numbers",
    "plotly_dash",
    "pyplot",
    "round_colorbar",
    "run_names",
    "save_figure",
    "save_html",
    "save_text",
    "series_styles",
    "split_handles",
    "split_of",
    "split_style",
    "with_runs",
    "write_plotlyjs",
]

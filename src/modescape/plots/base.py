"""What every figure shares: the matplotlib backend, and the one atomic save.

Figures are written to a temporary file beside the target and renamed into place (`modescape.io`), so an
interrupted run never leaves a half-written PNG or HTML page.
"""

from __future__ import annotations

from pathlib import Path

from .. import io


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG by default) and close it."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    pyplot().close(fig)
    return path


def save_html(fig, path: str | Path) -> Path:
    """Save a plotly figure as one self-contained HTML file (plotly.js inlined: it opens offline), atomically."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    return path


def save_text(text: str, path: str | Path) -> Path:
    """Write a text export (e.g. VTK) atomically."""
    io.write_text(path, text)
    return Path(path)


__all__ = ["pyplot", "save_figure", "save_html", "save_text"]

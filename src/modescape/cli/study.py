"""`modescape study | report | tour`: the field's claims rerun with one command, and a static report.

``modescape study NAME --out DIR`` runs one study of `modescape.studies` (resumable: rerun the same command
to continue), ``modescape study --list`` lists them, ``modescape report DIR...`` makes an offline site of
their outputs, and ``modescape tour`` runs a short selection end to end and writes ``report/index.html``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..checks import check_choice
from ..errors import UserError
from ..lazy import lazy
from .app import app, common, console, err_console

studies = lazy("modescape.studies")


def say(text: str) -> None:
    """One line of plain text on stdout (no markup, no highlighting, wrapped softly)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _log(msg: str) -> None:
    import time

    err_console.print(f"[{time.strftime('%H:%M:%S')}] {msg}", markup=False, highlight=False)


def _list(as_json: bool) -> None:
    import re

    from ..studies import all_studies, describe

    items = all_studies()
    if as_json:
        common.print_json([describe(s) for s in items])
        return
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("study", "claim", "paper"):
        table.add_column(col)
    for s in items:
        cite = re.match(r".*?\b(19|20)\d\d\b", s.paper)  # the authors and year, without the title
        table.add_row(s.name, s.summary or s.claim, cite.group(0) if cite else s.paper)
    console.print(table, highlight=False)
    say("run one: modescape study NAME [--preset cpu|gpu] [--smoke] [--data-root DIR] [--out DIR]")


@app.command("study")
def study_cmd(
    name: str | None = typer.Argument(None, help="The study to run (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List the studies and exit."),
    preset: str = typer.Option(
        "cpu",
        "--preset",
        help="cpu: built-in digits (or MNIST from --data-root), minutes on "
        "2 cores; gpu: the paper's scale (CIFAR-10 or MNIST from "
        "--data-root) on one GPU.",
    ),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny settings that run in seconds (what the tests run)."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Folder with MNIST (cpu: its MNIST variant) or CIFAR-10 (gpu)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Study folder (default runs/NAME); rerun to continue."),
    figures: Path | None = typer.Option(
        None, "--figures", help="Also copy the figures into this folder (e.g. docs/figures)."
    ),
    device: str | None = common.DEVICE,
    as_json: bool = common.JSON,
) -> None:
    """Rerun a claim of the field: numbers, figures, and measured vs published with a verdict."""
    if list_:
        _list(as_json)
        return
    if name is None:
        raise UserError(
            "name a study (modescape study --list shows them), e.g. modescape study goodfellow-interpolation"
        )
    check_choice(preset, ("cpu", "gpu"), "--preset")
    if data_root is not None and not data_root.is_dir():
        raise UserError(f"--data-root {data_root} is not a folder: pass the folder with the MNIST or CIFAR-10 files")
    from ..studies import get

    study = get(name)
    target = out if out is not None else Path("runs") / study.name
    common.out_dir(target)
    if figures is not None:
        common.out_dir(figures)
    dev = common.resolve_device(device)
    result = studies.run_study(
        study.name, preset=preset, smoke=smoke, data_root=data_root, out=target, device=dev, figures=figures, log=_log
    )
    if as_json:
        common.print_json(result)
        return
    # plain text: no markup, and no highlighter (its regular expressions are slow on long lines of numbers)
    say(f"{study.name}: {result['verdict']}. {result['why']}")
    for row in result["table"]:
        say(f"  {row['quantity']}: {row['measured']} (published: {row['published']})")
    say(f"result.json, figures/ and section.md in {target}; a site: modescape report {target}")


@app.command("report")
def report_cmd(
    dirs: list[Path] = typer.Argument(..., help="Study folders, or folders that hold study folders."),
    out: Path = typer.Option(Path("report"), "--out", help="Site folder (index.html and one page per study)."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Open every page in headless Chromium and report what failed to load or render (needs chromium).",
    ),
) -> None:
    """A static offline site (index plus one page per study) from study outputs."""
    from ..report import build_site

    common.out_dir(out)
    index = build_site(dirs, out)
    say(f"open {index.resolve()}")
    if check:
        _check(index, out / "screenshots")


def _check(index: Path, shots: Path) -> None:
    from ..report.browser import check_site, find_chromium

    if find_chromium() is None:
        raise UserError("--check needs chromium: apt-get install -y chromium")
    bad = 0
    for page in check_site(index, shots):
        for p in page.problems:
            bad += 1
            say(f"{page.url}: {p}")
    if bad:
        raise UserError(f"{bad} problem(s) in the report (screenshots in {shots})")
    say(f"every page loaded and rendered in chromium (screenshots in {shots})")


@app.command("tour")
def tour_cmd(
    out: Path = typer.Option(Path("runs/tour"), "--out", help="Folder of the tour's studies and its report/."),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny settings (seconds; for tests)."),
    figures: Path | None = typer.Option(
        None,
        "--figures",
        help="Also copy every figure into this folder, named STUDY_FIGURE (e.g. for the README's gallery).",
    ),
    device: str | None = common.DEVICE,
) -> None:
    """A short tour on built-in data: interpolation, a filter-normalised surface and Hessian spectra, a curve,
    an alignment and a small ensemble, then report/index.html."""
    import time

    from ..studies import TOUR

    common.out_dir(out)
    if figures is not None:
        common.out_dir(figures)
    dev = common.resolve_device(device)
    t0 = time.perf_counter()
    for name in TOUR:
        _log(f"tour: {name}")
        result = studies.run_study(
            name, preset="cpu", smoke=smoke, tour=True, out=out / name, device=dev, figures=figures, log=_log
        )
        say(f"{name}: {result['verdict']}")
    from ..report import build_site

    index = build_site([out / n for n in TOUR], out / "report")
    say(f"tour done in {time.perf_counter() - t0:.0f} s; open {index.resolve()}")

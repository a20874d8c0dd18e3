"""The report: a static offline site from study outputs, checked in a real browser (headless Chromium)."""

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from modescape.errors import UserError
from modescape.report import build_site, section_markdown
from modescape.report.browser import check_site, find_chromium

CHROMIUM_MISSING = (
    "chromium is not installed: the report test needs a real browser. `.ci/run` installs it "
    "(apt-get install -y chromium); do the same here"
)


def _fake_study(folder: Path, name: str = "goodfellow-interpolation", verdict: str = "partly") -> Path:
    """A study folder as `run_study` writes it, without training anything: result.json, a figure, charts."""
    from modescape.plots.base import figure, save_figure

    fig, ax = figure(figsize=(3, 2))
    ax.plot([0, 1, 2], [3, 1, 2])
    save_figure(fig, folder / "figures" / "line.png")
    result = {
        "study": name,
        "title": "A <test> study & more",
        "paper": "Someone et al. 2020, A paper",
        "claim": "X holds.",
        "summary": "x holds",
        "docs": ["landscapes.md"],
        "preset": "cpu",
        "smoke": True,
        "tour": False,
        "settings": {"epochs": 2},
        "numbers": {"x": 1.0},
        "verdict": verdict,
        "why": "because",
        "conclusion": "",
        "table": [
            {
                "quantity": "q",
                "measured": "1.0",
                "measured_setting": "digits",
                "published": "2.0",
                "published_setting": "CIFAR-10",
            }
        ],
        "figures": [{"file": "figures/line.png", "caption": "a line"}],
        "interactive": [
            {
                "kind": "lines",
                "title": "lines",
                "xlabel": "t",
                "ylabel": "loss",
                "logx": False,
                "logy": True,
                "series": [{"label": "a", "x": [0, 1, 2], "y": [1.0, 0.5, None], "dash": False}],
            },
            {
                "kind": "contour",
                "title": "plane",
                "xlabel": "x",
                "ylabel": "y",
                "zlabel": "loss",
                "log": True,
                "x": [0, 1, 2],
                "y": [0, 1],
                "z": [[1, 2], [3, 4], [5, 6]],
                "markers": [{"label": "A", "x": 0, "y": 0}],
                "path": [[0, 0], [1, 1]],
            },
            {"kind": "bars", "title": "bars", "xlabel": "tau", "labels": ["m1", "m2"], "values": [0.5, -0.2]},
        ],
        "provenance": {"seconds": 1.5, "command": "modescape study x"},
    }
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_site_is_self_contained(tmp_path):
    a = _fake_study(tmp_path / "runs" / "a")
    b = _fake_study(tmp_path / "runs" / "b", name="li-trajectory", verdict="reproduced")
    index = build_site([tmp_path / "runs"], tmp_path / "site")
    site = tmp_path / "site"
    assert index == site / "index.html"
    pages = sorted(p.name for p in site.glob("*.html"))
    assert pages == ["goodfellow-interpolation.html", "index.html", "li-trajectory.html"]
    assert (site / "plotly.min.js").stat().st_size > 1_000_000 and (site / "li-trajectory" / "line.png").is_file()
    for page in site.glob("*.html"):
        text = page.read_text()
        # every src and href is a local relative path: nothing can be fetched from the network
        for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert "://" not in ref and not ref.startswith("//"), (page.name, ref)
            assert (site / ref).exists(), (page.name, ref)
        assert "<test>" not in text  # escaped
    assert "A &lt;test&gt; study" in (site / "li-trajectory.html").read_text()
    # the order is the registry's (goodfellow first), whatever the folders' names
    idx = index.read_text()
    assert idx.index("goodfellow-interpolation.html") < idx.index("li-trajectory.html")
    assert "1 reproduced, 1 partly" in idx
    assert a.exists() and b.exists()


def test_two_runs_of_one_study_get_two_pages(tmp_path):
    _fake_study(tmp_path / "x")
    _fake_study(tmp_path / "y")
    build_site([tmp_path / "x", tmp_path / "y"], tmp_path / "site")
    assert (tmp_path / "site" / "goodfellow-interpolation-2.html").is_file()


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_site([tmp_path / "nothing"], tmp_path / "site")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no result.json"):
        build_site([tmp_path / "empty"], tmp_path / "site")
    folder = _fake_study(tmp_path / "gone")
    (folder / "figures" / "line.png").unlink()
    with pytest.raises(UserError, match="missing"):
        build_site([folder], tmp_path / "site")


def test_section_markdown_has_claim_table_and_verdict(tmp_path):
    result = json.loads((_fake_study(tmp_path / "s") / "result.json").read_text())
    md = section_markdown(result)
    assert "**Claim.** X holds." in md and "| q | 1.0 | digits | 2.0 | CIFAR-10 |" in md
    assert "**Verdict: partly.** because" in md and "![a line](figures/line.png)" in md


def test_report_command(tmp_path, capsys):
    _fake_study(tmp_path / "s")
    code, out, err = run_cli(["report", tmp_path / "s", "--out", tmp_path / "site"], capsys)
    assert code == 0, err
    assert "index.html" in out and (tmp_path / "site" / "index.html").is_file()


def _chromium() -> str:
    exe = find_chromium()
    if exe is None or not Path(exe).exists():
        pytest.fail(CHROMIUM_MISSING)
    return exe


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path):
    """A real browser loads every page of a report made from a real study run: every image and script loads,
    every plotly chart renders, the console stays clean, nothing is fetched from the network."""
    exe = _chromium()
    from modescape.studies import run_study

    run_study("goodfellow-interpolation", smoke=True, out=tmp_path / "runs" / "goodfellow", device="cpu")
    _fake_study(tmp_path / "runs" / "fake", name="li-trajectory")
    index = build_site([tmp_path / "runs"], tmp_path / "site")
    checks = check_site(index, tmp_path / "screenshots", executable=exe)
    assert [Path(c.url).name for c in checks] == ["index.html", "goodfellow-interpolation.html", "li-trajectory.html"]
    for c in checks:
        assert not c.problems, (c.url, c.problems)
        assert Path(c.screenshot).stat().st_size > 10_000
    assert checks[1].charts >= 1 and checks[1].charts_rendered == checks[1].charts
    assert checks[2].charts == checks[2].charts_rendered == 3
    assert "plotly.min.js" in checks[1].scripts


@pytest.mark.slow
def test_the_browser_check_fails_on_a_broken_page(tmp_path):
    """The check can fail: a missing image, a missing script, a console error, a chart that never draws and a
    request to the network are each reported."""
    exe = _chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><script src="missing.js"></script></head><body>'
        '<img src="missing.png"><div class="chart"></div>'
        '<img src="https://example.invalid/x.png">'
        "<script>console.error('boom')</script></body></html>"
    )
    (check,) = check_site(page, tmp_path / "shots", executable=exe, chart_timeout=2.0)
    text = "\n".join(check.problems)
    assert "missing.js" in text and "missing.png" in text and "boom" in text
    assert "example.invalid" in text
    assert "1 of 1 plotly charts did not render" in text
    assert Path(check.screenshot).is_file()

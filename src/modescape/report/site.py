"""The report's pages: plain HTML and CSS written from ``result.json`` files, charts drawn by a local plotly.

Every file a page loads sits in the site folder: figures are copied to ``NAME/`` beside ``NAME.html``, and
the interactive charts (a study's ``interactive`` specs: lines, contours, bars) are plotly figures built
here and run by ``plotly.min.js`` at the site's root (`modescape.plots.base.write_plotlyjs`: the installed
plotly's own file). Pages link only to each other; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError

VERDICT_CLASS = {"reproduced": "ok", "partly": "partly", "not reproduced": "no"}

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d232a;
       background: #fafbfc; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
a { color: #0b5cad; } .paper { color: #56606b; font-style: italic; margin-top: 0; }
.claim { background: #fff; border-left: 4px solid #0b5cad; padding: 10px 14px; margin: 14px 0; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 0.9em; }
.ok { background: #d8f3dc; color: #1b5e20; } .partly { background: #fff1c1; color: #7a5a00; }
.no { background: #fde0e0; color: #8e1b1b; }
table { border-collapse: collapse; margin: 12px 0; background: #fff; width: 100%; font-size: 0.92em; }
th, td { border: 1px solid #dde2e7; padding: 6px 9px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
figure { margin: 18px 0; background: #fff; padding: 10px; border: 1px solid #e3e7eb; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #444c55; font-size: 0.92em; margin-top: 6px; }
.chart { width: 100%; height: 420px; background: #fff; border: 1px solid #e3e7eb; margin: 14px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #e3e7eb; padding: 12px; }
.card img { width: 100%; height: 170px; object-fit: contain; background: #fff; }
.card h3 { margin: 6px 0; font-size: 1.02em; } .small { font-size: 0.85em; color: #56606b; }
pre { background: #f1f3f5; padding: 10px; overflow-x: auto; font-size: 0.82em; }
nav { background: #1d232a; padding: 10px 28px; } nav a { color: #fff; text-decoration: none; margin-right: 16px; }
"""


# -- finding results ------------------------------------------------------------------------------------------


def find_results(dirs: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, result)`` for every study output in ``dirs``: a folder holding ``result.json``, or a folder
    whose sub-folders do (one level down, in the registry's order)."""
    from ..studies import all_studies

    order = {s.name: i for i, s in enumerate(all_studies())}
    found: list[tuple[Path, dict[str, Any]]] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise UserError(f"{d} does not exist: pass study folders (`modescape study NAME --out DIR`)")
        files = [d / "result.json"] if (d / "result.json").is_file() else sorted(d.glob("*/result.json"))
        if not files:
            raise UserError(
                f"{d} holds no result.json (nor do its sub-folders): run `modescape study NAME --out {d}` first"
            )
        batch = []
        for f in files:
            try:
                batch.append((f.parent, json.loads(f.read_text())))
            except json.JSONDecodeError:
                raise UserError(f"{f} is not valid JSON: rerun that study") from None
        batch.sort(key=lambda r: order.get(r[1].get("study"), len(order)))
        found.extend(batch)
    return found


# -- Markdown ------------------------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def section_markdown(result: Mapping[str, Any], figures_prefix: str = "") -> str:
    """A study's report section in Markdown: claim, figures, measured vs published table, verdict."""
    lines = [
        f"## {result['title']} (`{result['study']}`)",
        "",
        f"*{result['paper']}*",
        "",
        f"**Claim.** {result['claim']}",
        "",
    ]
    for f in result.get("figures", []):
        lines += [f"![{_md_cell(f['caption'])}]({figures_prefix}{f['file']})", "", f"*{f['caption']}*", ""]
    lines += ["| quantity | measured here | setting | published | setting |", "|---|---|---|---|---|"]
    for r in result.get("table", []):
        lines.append(
            "| "
            + " | ".join(
                _md_cell(r[k]) for k in ("quantity", "measured", "measured_setting", "published", "published_setting")
            )
            + " |"
        )
    lines += ["", f"**Verdict: {result['verdict']}.** {result['why']}", ""]
    if result.get("conclusion"):
        lines += [result["conclusion"], ""]
    prov = result.get("provenance", {})
    lines += [
        f"Preset `{result['preset']}`{' (smoke)' if result.get('smoke') else ''}; "
        f"{prov.get('seconds', 0):.0f} s; `{prov.get('command', '')}`",
        "",
    ]
    return "\n".join(lines)


# -- charts --------------------------------------------------------------------------------------------------


def _finite(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def chart_figure(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A plotly figure (``{"data", "layout"}``) for an interactive spec of `modescape.studies.common`."""
    kind = spec["kind"]
    layout: dict[str, Any] = {
        "title": {"text": spec.get("title", ""), "font": {"size": 14}},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "template": "plotly_white",
    }
    if kind == "lines":
        data = [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": s["label"],
                "x": s["x"],
                "y": [_finite(v) for v in s["y"]],
                "marker": {"size": 4},
                "line": {"dash": "dash" if s.get("dash") else "solid"},
            }
            for s in spec["series"]
        ]
        layout["xaxis"] = {"title": {"text": spec.get("xlabel", "")}, "type": "log" if spec.get("logx") else "linear"}
        layout["yaxis"] = {"title": {"text": spec.get("ylabel", "")}, "type": "log" if spec.get("logy") else "linear"}
    elif kind == "contour":
        z = [[_finite(v) for v in row] for row in spec["z"]]
        if spec.get("log"):
            z = [[math.log10(v) if v is not None and v > 0 else None for v in row] for row in z]
        zt = [list(col) for col in zip(*z, strict=True)]  # plotly wants z[y][x]
        label = ("log10 " if spec.get("log") else "") + spec.get("zlabel", "")
        data = [
            {
                "type": "contour",
                "x": spec["x"],
                "y": spec["y"],
                "z": zt,
                "colorscale": "Viridis",
                "ncontours": 25,
                "colorbar": {"title": {"text": label}},
                "name": label,
            }
        ]
        if spec.get("path"):
            p = spec["path"]
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "x": [q[0] for q in p],
                    "y": [q[1] for q in p],
                    "name": "path",
                    "line": {"color": "crimson"},
                    "marker": {"size": 4},
                }
            )
        for m in spec.get("markers", []):
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers+text",
                    "x": [m["x"]],
                    "y": [m["y"]],
                    "text": [m["label"]],
                    "textposition": "top right",
                    "name": m["label"],
                    "showlegend": False,
                    "marker": {"color": "white", "size": 10, "line": {"color": "black", "width": 1}},
                }
            )
        layout["xaxis"] = {"title": {"text": spec.get("xlabel", "")}}
        layout["yaxis"] = {"title": {"text": spec.get("ylabel", "")}}
    elif kind == "bars":
        vals = [_finite(v) for v in spec["values"]]
        data = [
            {
                "type": "bar",
                "orientation": "h",
                "y": spec["labels"],
                "x": vals,
                "marker": {"color": ["#2f6db5" if (v or 0) >= 0 else "#c0392b" for v in vals]},
            }
        ]
        layout["xaxis"] = {"title": {"text": spec.get("xlabel", "")}}
        layout["yaxis"] = {"autorange": "reversed", "automargin": True}
    else:
        raise ValueError(f"unknown chart kind {kind!r}")
    return {"data": data, "layout": layout}


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element."""
    return io.json_dumps(obj).replace("</", "<\\/")


# -- pages ---------------------------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str, plotly: bool) -> str:
    script = '<script src="plotly.min.js"></script>\n' if plotly else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n{script}</head>\n<body>\n"
        f'<nav><a href="index.html">modescape studies</a></nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n'
    )


def _verdict(v: str) -> str:
    return f'<span class="verdict {VERDICT_CLASS.get(v, "no")}">{_e(v)}</span>'


def _table(rows: Sequence[Mapping[str, str]]) -> str:
    head = "<tr><th>quantity</th><th>measured here</th><th>setting</th><th>published</th><th>setting</th></tr>"
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_e(r[k])}</td>"
            for k in ("quantity", "measured", "measured_setting", "published", "published_setting")
        )
        + "</tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _study_page(page: str, folder: Path, result: Mapping[str, Any], site: Path) -> tuple[str, list[str], bool]:
    """The page's HTML, the copied figure paths (relative to the site) and whether it has charts."""
    assets = site / page
    copied: list[str] = []
    figs = []
    for f in result.get("figures", []):
        src = folder / f["file"]
        if not src.is_file():
            raise UserError(f"{folder}: figure {f['file']} named in result.json is missing: rerun the study")
        rel = f"{page}/{Path(f['file']).name}"
        assets.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(site / rel) as tmp:
            shutil.copyfile(src, tmp)
        copied.append(rel)
        figs.append(
            f'<figure><img src="{_e(rel)}" alt="{_e(f["caption"])}" loading="eager">'
            f"<figcaption>{_e(f['caption'])}</figcaption></figure>"
        )
    charts = []
    for i, spec in enumerate(result.get("interactive", [])):
        cid = f"chart-{i}"
        fig = chart_figure(spec)
        charts.append(
            f'<div class="chart" id="{cid}"></div>\n<script>Plotly.newPlot("{cid}", '
            f"{_script_json(fig['data'])}, {_script_json(fig['layout'])}, "
            '{"responsive": true, "displaylogo": false});</script>'
        )
    prov = dict(result.get("provenance", {}))
    smoke = " (smoke)" if result.get("smoke") else ""
    body = [
        f"<h1>{_e(result['title'])}</h1>",
        f'<p class="paper">{_e(result["paper"])}</p>',
        f'<p class="small">study <code>{_e(result["study"])}</code>, preset <code>{_e(result["preset"])}</code>'
        f"{smoke}, {prov.get('seconds', 0):.0f} s</p>",
        f'<div class="claim"><b>Claim.</b> {_e(result["claim"])}</div>',
        f"<p><b>Verdict:</b> {_verdict(result['verdict'])} {_e(result['why'])}</p>",
    ]
    if result.get("conclusion"):
        body.append(f"<h2>Conclusion</h2><p>{_e(result['conclusion'])}</p>")
    body.append("<h2>Measured here and published</h2>" + _table(result.get("table", [])))
    if figs:
        body.append("<h2>Figures</h2>" + "\n".join(figs))
    if charts:
        body.append("<h2>Interactive</h2>" + "\n".join(charts))
    body.append("<h2>Settings</h2><pre>" + _e(json.dumps(result.get("settings", {}), indent=1)) + "</pre>")
    body.append("<details><summary>Provenance</summary><pre>" + _e(json.dumps(prov, indent=1)) + "</pre></details>")
    return _page(f"{result['title']} - modescape", "\n".join(body), bool(charts)), copied, bool(charts)


def _index(entries: Sequence[tuple[str, Mapping[str, Any], list[str]]]) -> str:
    rows = []
    cards = []
    for page, r, figs in entries:
        first = r["table"][0] if r.get("table") else {}
        rows.append(
            f'<tr><td><a href="{_e(page)}.html">{_e(r["study"])}</a></td><td>{_e(r["summary"] or r["claim"])}'
            f"</td><td>{_verdict(r['verdict'])}</td><td>{_e(first.get('measured', ''))}</td>"
            f"<td>{_e(first.get('published', ''))}</td><td>{_e(r['preset'])}"
            f"{' (smoke)' if r.get('smoke') else ''}</td></tr>"
        )
        thumb = f'<img src="{_e(figs[0])}" alt="{_e(r["title"])}">' if figs else ""
        cards.append(
            f'<div class="card"><a href="{_e(page)}.html">{thumb}<h3>{_e(r["title"])}</h3></a>'
            f'<div class="small">{_e(r["paper"])}</div><p>{_verdict(r["verdict"])}</p></div>'
        )
    counts = {v: sum(1 for _, r, _ in entries if r["verdict"] == v) for v in VERDICT_CLASS}
    body = (
        "<h1>modescape studies</h1>"
        f"<p>{len(entries)} studies: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ". Each page puts the "
        "number measured here next to the published one, with the setting of each.</p>"
        "<table><tr><th>study</th><th>claim</th><th>verdict</th><th>measured here</th><th>published</th>"
        "<th>preset</th></tr>" + "".join(rows) + "</table>"
        '<h2>Figures</h2><div class="cards">' + "".join(cards) + "</div>"
    )
    return _page("modescape studies", body, False)


def build_site(dirs: Iterable[str | Path], out: str | Path) -> Path:
    """Write the site for the study outputs in ``dirs`` into ``out``; returns ``out/index.html``."""
    from ..plots.base import write_plotlyjs

    results = find_results(dirs)
    site = Path(out)
    site.mkdir(parents=True, exist_ok=True)
    entries = []
    used: dict[str, int] = {}
    any_charts = False
    for folder, result in results:
        name = str(result.get("study", folder.name))
        used[name] = used.get(name, 0) + 1
        page = name if used[name] == 1 else f"{name}-{used[name]}"
        text, figs, charts = _study_page(page, folder, result, site)
        any_charts = any_charts or charts
        io.write_text(site / f"{page}.html", text)
        entries.append((page, result, figs))
    if any_charts:
        write_plotlyjs(site)
    index = site / "index.html"
    io.write_text(index, _index(entries))
    return index


__all__ = ["build_site", "chart_figure", "find_results", "section_markdown"]

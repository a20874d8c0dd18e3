"""A static, offline site from study outputs: an index and one page per study.

`build_site(dirs, out)` reads every ``result.json`` it finds (a study folder, or a folder of study
folders), copies each study's figures beside its page, draws the interactive charts with one local
``plotly.min.js`` (written once at the site's root from the installed plotly: no CDN, no network request),
and writes ``index.html`` (every study, its claim and verdict, a thumbnail) and ``NAME.html`` (claim,
figures, the *measured here* versus *published* table with the setting of each, verdict, settings and
provenance). `section_markdown` is the same section as Markdown (``section.md`` beside each result).
`browser.check_site` opens a site in headless Chromium and reports what failed to load or render.

>>> build_site(["runs/tour"], "runs/tour/report")  # -> runs/tour/report/index.html
"""

from __future__ import annotations

from .site import build_site, find_results, section_markdown

__all__ = ["build_site", "find_results", "section_markdown"]

"""Open a report in a real browser: headless Chromium driven through the DevTools protocol over a pipe.

`check_site(index)` loads ``index.html`` and every local page it links to, and reports per page what a
reader would see go wrong: console errors and uncaught exceptions, requests that failed (a missing figure
or script), requests that left the machine (anything but ``file:``, ``data:``, ``blob:`` and ``about:``),
images that did not decode, and plotly charts that did not render (a ``div.chart`` without plotly's SVG).
It saves a full-page screenshot of each page. Chromium is started with ``--remote-debugging-pipe``
(the protocol's JSON messages on file descriptors 3 and 4, NUL-separated), so no port and no websocket
library are needed. Debian's ``chromium`` package provides the browser (``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

STATUS_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
  charts: document.querySelectorAll('div.chart').length,
  rendered: Array.from(document.querySelectorAll('div.chart')).filter(d => d.querySelector('svg.main-svg')).length,
  scripts: Array.from(document.scripts).filter(s => s.src).map(s => s.getAttribute('src')),
  plotly: typeof window.Plotly !== 'undefined',
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  title: document.title
})"""


def find_chromium() -> str | None:
    """The Chromium executable (``$MODESCAPE_CHROMIUM``, ``chromium``, ``chromium-browser``), or None."""
    env = os.environ.get("MODESCAPE_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass
class PageCheck:
    """What went wrong on one page (empty lists: nothing)."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    charts: int = 0
    charts_rendered: int = 0
    scripts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    screenshot: str | None = None

    @property
    def problems(self) -> list[str]:
        out = [f"console: {m}" for m in self.console_errors]
        out += [f"failed to load: {u}" for u in self.failed_requests]
        out += [f"network request: {u}" for u in self.external_requests]
        out += [f"image did not load: {u}" for u in self.broken_images]
        if self.charts_rendered < self.charts:
            out.append(f"{self.charts - self.charts_rendered} of {self.charts} plotly charts did not render")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "problems": self.problems}


class Chromium:
    """A headless Chromium and its DevTools protocol over a pipe (``with Chromium() as b: b.visit(url)``)."""

    def __init__(self, executable: str | None = None, window: tuple[int, int] = (1280, 900)):
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium not found: install it with `apt-get install -y chromium` (.ci/run does)")
        self.profile = tempfile.mkdtemp(prefix="modescape-chromium-")
        r, self._to_chrome = os.pipe()
        self._from_chrome, w = os.pipe()
        # the child's ends, numbered above 4 so that placing them on 3 and 4 cannot overwrite one another
        to_chrome_r, from_chrome_w = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 5), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(r)
        os.close(w)

        def wire() -> None:  # in the child: the pipe ends on fds 3 (chromium reads) and 4 (chromium writes)
            os.dup2(to_chrome_r, 3)  # dup2 makes them inheritable; every other descriptor of ours is close-on-exec
            os.dup2(from_chrome_w, 4)

        args = [
            exe,
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            f"--window-size={window[0]},{window[1]}",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        # close_fds=False: the descriptors placed on 3 and 4 in `wire` must survive (Python's own are
        # non-inheritable, PEP 446, so nothing else leaks into the browser)
        self._log = open(Path(self.profile) / "chromium.log", "wb")  # a file: a full pipe would stall the browser
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=wire, close_fds=False
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue[dict] = queue.Queue()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- the pipe ---------------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[-1] = {"closed": True}
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        """Send one command; returns its ``result`` (raises on a protocol error or a timeout)."""
        self._next += 1
        mid = self._next
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                if -1 in self._replies:
                    raise RuntimeError(f"chromium exited: {self._stderr()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"chromium did not answer {method} in {timeout:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _stderr(self) -> str:
        """The end of the browser's own log (what it said before it exited)."""
        try:
            return (Path(self.profile) / "chromium.log").read_bytes()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def events(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    # -- a page -----------------------------------------------------------------------------------
    def visit(
        self,
        url: str,
        screenshot: str | Path | None = None,
        settle: float = 0.3,
        timeout: float = 30.0,
        chart_timeout: float = 10.0,
    ) -> PageCheck:
        """Load ``url`` in a fresh tab, wait for its load event (up to ``timeout`` s) and its charts (up to
        ``chart_timeout`` s more), and check it."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.events()  # drop what came before the navigation
        check = PageCheck(url)
        seen: list[dict] = []
        self.send("Page.navigate", {"url": url}, session=session)
        end = time.monotonic() + timeout
        loaded = False
        while time.monotonic() < end and not loaded:
            for ev in self.events():
                seen.append(ev)
                loaded = loaded or (ev.get("method") == "Page.loadEventFired" and ev.get("sessionId") == session)
            time.sleep(0.05)
        if not loaded:
            check.console_errors.append(f"no load event within {timeout:.0f} s")
        status: dict[str, Any] = {}
        end = min(end, time.monotonic() + chart_timeout)
        while True:  # charts draw after the load event; wait until they have
            res = self.send("Runtime.evaluate", {"expression": STATUS_JS, "returnByValue": True}, session=session)
            status = json.loads(res["result"]["value"])
            if status["rendered"] >= status["charts"] or time.monotonic() >= end:
                break
            time.sleep(0.1)
        time.sleep(settle)
        seen += self.events()
        urls = {
            ev["params"]["requestId"]: ev["params"].get("request", {}).get("url", "")
            for ev in seen
            if ev.get("method") == "Network.requestWillBeSent"
        }
        for ev in seen:
            if ev.get("sessionId") not in (None, session):
                continue
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                check.console_errors.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                )
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                check.console_errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                check.console_errors.append(f"{e.get('text', '')} {e.get('url', '')}".strip())
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                url = urls.get(p.get("requestId"), p.get("requestId"))
                check.failed_requests.append(f"{url} ({p.get('errorText', '')})")
            elif m == "Network.requestWillBeSent":
                u = p.get("request", {}).get("url", "")
                if not u.startswith(LOCAL_SCHEMES):
                    check.external_requests.append(u)
            elif m == "Network.responseReceived":
                r = p.get("response", {})
                if r.get("url", "").startswith("file:") and int(r.get("status", 200) or 200) >= 400:
                    check.failed_requests.append(f"{r.get('status')} {r.get('url')}")
        check.broken_images = [i["src"] for i in status.get("images", []) if not i["ok"]]
        check.charts, check.charts_rendered = status.get("charts", 0), status.get("rendered", 0)
        check.scripts, check.links = status.get("scripts", []), status.get("links", [])
        if screenshot is not None:
            metrics = self.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            clip = {
                "x": 0,
                "y": 0,
                "width": max(1, int(size.get("width", 1280))),
                "height": max(1, min(int(size.get("height", 900)), 12000)),
                "scale": 1,
            }
            shot = self.send(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True, "clip": clip},
                session=session,
                timeout=60,
            )
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            check.screenshot = str(screenshot)
        self.send("Target.closeTarget", {"targetId": target})
        return check

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._log.close()
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_site(
    index: str | Path, screenshots: str | Path | None = None, executable: str | None = None, chart_timeout: float = 10.0
) -> list[PageCheck]:
    """Check ``index`` and every local ``.html`` page it links to; screenshots into ``screenshots`` when given;
    ``chart_timeout``: how long to wait for a page's charts after its load event."""
    index = Path(index).resolve()
    pages = [index]
    results = []
    with Chromium(executable) as browser:
        i = 0
        while i < len(pages):
            page = pages[i]
            shot = None if screenshots is None else Path(screenshots) / f"{page.stem}.png"
            check = browser.visit(page.as_uri(), shot, chart_timeout=chart_timeout)
            results.append(check)
            for link in check.links:
                if link.endswith(".html") and "://" not in link:
                    target = (page.parent / link).resolve()
                    if target not in pages:
                        pages.append(target)
            i += 1
    return results


__all__ = ["Chromium", "PageCheck", "check_site", "find_chromium"]

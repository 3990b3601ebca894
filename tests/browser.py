"""A headless Chromium driven over the DevTools protocol (websocket-client), for page checks in tests.

``Chromium()`` starts Debian's ``/usr/bin/chromium`` (or ``$CHROMIUM``) with a fresh profile, no network
services and a DevTools port it picks itself; ``open(url)`` loads a page and waits for its load event;
``evaluate`` runs JavaScript and returns its value; ``screenshot`` writes a full-page PNG and
``screenshot_of`` one element's; ``errors`` lists console errors, uncaught exceptions and failed loads
seen so far.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-allow-origins=*")


def chromium_path() -> str | None:
    """The Chromium binary to use, or None when none is installed."""
    given = os.environ.get("CHROMIUM")
    for candidate in (given, "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        import websocket

        binary = chromium_path()
        if binary is None:
            raise FileNotFoundError("no Chromium installed (apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before listening")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, since: int = 0) -> dict[str, Any]:
        """The first ``event`` among the events from index ``since`` on (already seen, or still to come)."""
        for msg in self.events[since:]:
            if msg.get("method") == event:
                return msg
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == event:
                return msg
        raise TimeoutError(f"no {event} within {self.timeout} s")

    def open(self, url: str) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        since = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", since)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
            elif method == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')}")
        return out

    def screenshot(self, path: str | Path) -> Path:
        """A full-page PNG (the viewport grown to the page's height)."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = min(int(size["height"]) + 1, 16000)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def screenshot_of(self, selector: str, path: str | Path, most: int = 6000) -> Path:
        """A PNG of the first element matching ``selector`` (at most ``most`` px tall), the page grown to
        its full height first so the element is laid out where it is on a tall screen."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=min(int(size["height"]) + 1, 16000),
                  deviceScaleFactor=1, mobile=False)
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()")
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": box[0], "y": box[1], "width": box[2], "height": min(box[3], most), "scale": 1})["data"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# JavaScript measuring what the report test checks: images, each chart's axes, ticks, legend and text boxes.
PAGE_CHECKS = """(() => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const texts = (svg, sel) => [...svg.querySelectorAll(sel)].map(t => t.textContent.trim());
  const charts = [...document.querySelectorAll('svg.chart')].map(svg => ({
    title: svg.getAttribute('aria-label'), panel: svg.classList.contains('panel'),
    xTitle: texts(svg, '.axis-title.x').join(''), yTitle: texts(svg, '.axis-title.y').join(''),
    xTicks: texts(svg, '.ticks.x .tick-label'), yTicks: texts(svg, '.ticks.y .tick-label'),
    svg: box(svg), area: box(svg.querySelector('.plot-area')),
    legend: svg.querySelector('.legend') ? box(svg.querySelector('.legend')) : null,
    textBoxes: [...svg.querySelectorAll('text')].map(t => [t.textContent, ...box(t)]),
  }));
  const images = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt}));
  const multiples = [...document.querySelectorAll('figure.multiples')].map(f => ({
    title: f.getAttribute('aria-label'), legend: !!f.querySelector('.multiples-legend'),
    panels: [...f.querySelectorAll('svg.chart.panel')].map(box), figure: box(f)}));
  const bars = [...document.querySelectorAll('.ci')].map(b => ({bar: box(b), cell: box(b.closest('td')),
    parts: [...b.children].map(box)}));
  const link = document.querySelector('#summary-link');
  return {charts, images, multiples, bars, summaryLink: link ? link.getAttribute('href') : null,
          summaryHref: link ? link.href : null, sections: [...document.querySelectorAll('section h2')].map(h => h.textContent)};
})()"""


def shoot_sections(page: str | Path, out_dir: str | Path, width: int = 1280) -> list[Path]:
    """Full-page and per-section PNGs of an HTML file; returns their paths (and prints any page errors)."""
    out_dir = Path(out_dir)
    shots = []
    with Chromium(width=width) as browser:
        browser.open(Path(page).resolve().as_uri())
        shots.append(browser.screenshot(out_dir / "report-full.png"))
        boxes = browser.evaluate("[...document.querySelectorAll('section')].map(s => {const r = s.getBoundingClientRect();"
                                 " return [s.id, r.left + scrollX, r.top + scrollY, r.width, r.height]; })")
        size = browser.call("Page.getLayoutMetrics")["cssContentSize"]
        browser.call("Emulation.setDeviceMetricsOverride", width=width, height=int(size["height"]) + 1,
                     deviceScaleFactor=1, mobile=False)
        for name, x, y, w, h in boxes:
            data = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                clip={"x": x, "y": y, "width": w, "height": min(h, 4000), "scale": 1})["data"]
            path = out_dir / f"report-{name}.png"
            path.write_bytes(base64.b64decode(data))
            shots.append(path)
        for error in browser.errors():
            print("page error:", error)
    return shots


if __name__ == "__main__":  # python tests/browser.py REPORT.html OUT_DIR
    import sys

    for shot in shoot_sections(sys.argv[1], sys.argv[2]):
        print(shot)

"""A page opened in a real headless Chromium, driven over the DevTools protocol on a pipe (standard library only).

Why the protocol and not ``chromium --screenshot`` plus grepping ``--enable-logging=stderr``: the
browser's stderr carries its own noise (D-Bus, GPU and sandbox messages at ERROR level on a
headless container), its format changes between versions, and a page's console messages only
reach it at some verbosity levels. Over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, JSON
messages ending in NUL) the page's own events arrive as data: ``Runtime.exceptionThrown``
(uncaught errors), ``Runtime.consoleAPICalled`` (console.error / console.assert) and
``Log.entryAdded`` at level error (a resource that failed to load, a blocked request); the
screenshot comes from ``Page.captureScreenshot`` after the load event, in the same session.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The browser binary: $CHROMIUM if set, else the first of CANDIDATES on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if os.access(env, os.X_OK) else None)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    images: list[list] = field(default_factory=list)  # [complete, naturalWidth] per <img>
    title: str = ""
    text_length: int = 0


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """``with Chromium(binary) as browser: page = browser.open("file:///...")``"""

    def __init__(self, binary: str, width: int = 1200, height: int = 2000, timeout: float = 60.0):
        self.binary, self.width, self.height, self.timeout = binary, width, height, timeout
        self._id = 0
        self._buffer = b""
        self._events: list[dict] = []

    def __enter__(self) -> Chromium:
        self.profile = tempfile.mkdtemp(prefix="fracture-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def as_fd_3_and_4():  # the protocol's pipe: the browser reads fd 3, writes fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [self.binary, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(3, 4),
            preexec_fn=as_fd_3_and_4)  # noqa: PLW1509 - no threads here
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError, ProtocolError):
                    self._send("Browser.close")
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.proc.stderr.close()
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)

    # ---- the protocol ----
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("timed out waiting for the browser")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None \
                        else ""
                    raise ProtocolError(f"the browser closed the protocol pipe (exit {self.proc.poll()}): {err}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            for e in self._events:
                if e.get("method") == method and e.get("sessionId") == session:
                    return
            self._events.append(self._read_message(deadline))

    def open(self, url: str) -> Page:
        """Load url in a fresh tab; its errors, images, a screenshot of the first window-size pixels."""
        self._events = []
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self._send(f"{domain}.enable", session=session)
        self._send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False}, session)
        nav = self._send("Page.navigate", {"url": url}, session)
        page = Page(url)
        if nav.get("errorText"):
            page.errors.append(f"navigation: {nav['errorText']}")
        self._wait_for("Page.loadEventFired", session)

        def evaluate(expr: str):
            res = self._send("Runtime.evaluate", {"expression": expr, "awaitPromise": True, "returnByValue": True},
                             session)
            return res.get("result", {}).get("value")

        # two animation frames after load: layout done, late errors in
        evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        page.images = json.loads(evaluate(
            "JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth]))"))
        page.title = evaluate("document.title")
        page.text_length = evaluate("document.body ? document.body.innerText.length : 0")
        page.screenshot = base64.b64decode(self._send("Page.captureScreenshot", {"format": "png"}, session)["data"])
        for e in self._events:
            if e.get("sessionId") != session:
                continue
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                page.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                page.errors.append(f"console.{p['type']}: "
                                   + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                page.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        self._send("Target.closeTarget", {"targetId": target})
        return page


def blankness(png: bytes) -> dict:
    """How much a screenshot shows: distinct colours, the share of pixels that are not near-white, dark pixels."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    px = np.asarray(img).reshape(-1, 3).astype(np.int32)
    colours = len(np.unique(px[:, 0] << 16 | px[:, 1] << 8 | px[:, 2]))
    inked = float((px.min(axis=1) < 235).mean())  # not near-white
    dark = float((px.max(axis=1) < 100).mean())  # text
    return {"size": img.size, "colours": colours, "inked": round(inked, 4), "dark": round(dark, 4)}


def is_blank(png: bytes) -> bool:
    b = blankness(png)
    return b["colours"] < 16 or b["inked"] < 0.01 or b["dark"] < 0.001

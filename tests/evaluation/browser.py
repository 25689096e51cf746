"""A real headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so the report tests need no extra package.
``make test`` installs Chromium (its ``browser`` target; CI runs ``.ci/run``); a machine without it
fails these tests, never skips them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no chromium on PATH: apt-get install -y chromium (.ci/run does)")


class Browser:
    def __init__(self, timeout: float = 30.0):
        self.timeout, self._id, self._buffer = timeout, 0, b""
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire():  # in the child: its fd 3 reads our commands, fd 4 writes its answers
            read, write = os.dup(to_browser_r), os.dup(from_browser_w)  # never clobber each other
            os.dup2(read, 3)
            os.dup2(write, 4)

        args = [chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(
            args,
            pass_fds=(3, 4),  # kept open after wire() put the pipe ends there
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = self._in.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        """Run JavaScript in the page (promises awaited); returns its JSON-able value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            self.session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        self.send("Page.enable", session=self.session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, self.session)
        deadline = time.monotonic() + self.timeout
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not finish loading")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_) -> None:
        self.close()


# Every <img> decoded (lazy ones scrolled into view first), and every <video>'s metadata loaded.
CHECK_MEDIA = """
(async () => {
  const images = Array.from(document.images);
  for (const img of images) { img.loading = 'eager'; }
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener('load', done); img.addEventListener('error', done);
  })));
  const videos = await Promise.all(Array.from(document.querySelectorAll('video')).map(
    (video) => new Promise((done) => {
      const report = () => done({src: video.getAttribute('src'), ready: video.readyState,
                                 width: video.videoWidth, error: video.error && video.error.code});
      video.addEventListener('loadedmetadata', report); video.addEventListener('error', report);
      setTimeout(report, 10000); video.preload = 'metadata'; video.load();
    })));
  return {
    images: images.map((img) => ({src: img.getAttribute('src'), width: img.naturalWidth})),
    videos: videos,
  };
})()
"""


def click_header_and_read(browser: Browser, table: str, header: str) -> list[str]:
    """Click the header cell named ``header`` of ``#table`` and return the row ids in order."""
    script = f"""
    (() => {{
      const th = Array.from(document.querySelectorAll('#{table} thead th'))
        .find((cell) => cell.textContent.trim() === {json.dumps(header)});
      th.click();
      return Array.from(document.querySelectorAll('#{table} tbody tr')).map((row) => row.id);
    }})()
    """
    return browser.evaluate(script)

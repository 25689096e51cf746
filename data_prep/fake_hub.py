"""A local stand-in for download hosts (offline tests, benchmarks, demos): serves a folder over
HTTP on 127.0.0.1 at a free port, with chosen paths delayed, so slow and stalled downloads can be
produced on purpose. Lay the folder out with ``objaverse_source.write_fake_hub`` (Objaverse 1.0)
or ``objaverse_xl.write_fake_xl`` (Objaverse-XL)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    delays: dict[str, float] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        time.sleep(self.delays.get(self.path, 0.0))
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: str | Path, delays: dict[str, float] | None = None) -> Iterator[tuple[str, list]]:
    """``(base URL, list of requested paths)`` while the server runs; ``delays`` maps a URL path
    (``/glbs/000-000/uid.glb``) to seconds to wait before answering."""
    handler_class = type("Handler", (_Handler,), {"delays": dict(delays or {}), "requests": []})
    handler = functools.partial(handler_class, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler_class.requests
    finally:
        server.shutdown()
        server.server_close()

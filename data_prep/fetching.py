"""The download pipeline between a source and the render workers: a sliding window of fetches.

Up to ``window`` objects are in flight or downloaded-but-not-yet-rendered at any time; each file
is handed to the render loop the moment it is complete, in completion order, and its slot goes
to the next object as soon as the render loop takes it. A slow file therefore holds one slot, not
a chunk of 32 (the earlier design fetched chunk by chunk with ``pool.map``, so one file at its
600 s deadline held its 31 neighbours and, after the 64 buffered objects, the renderers). Per-file
timeouts and retries belong to the source (``Source.fetch_one``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from data_prep.sources import ObjectRef, Source


class Feeder:
    """Fetch ``refs`` on ``workers`` threads, at most ``window`` objects ahead of the consumer."""

    def __init__(self, source: Source, refs: list[ObjectRef], window: int, workers: int):
        self.source = source
        self.ready: queue.Queue = queue.Queue()
        self.slots = threading.Semaphore(max(1, window))
        self.stop = threading.Event()
        self.workers = max(1, workers)
        self._left = len(refs)
        self.thread = threading.Thread(target=self._run, args=(refs,), daemon=True)
        self.thread.start()

    def _one(self, ref: ObjectRef) -> None:
        try:
            result: Path | Exception = self.source.fetch_one(ref)
        except Exception as error:  # a source bug must not end the run: record it per object
            result = error
        self.ready.put((ref, result))

    def _run(self, refs: list[ObjectRef]) -> None:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fetch") as pool:
            for ref in refs:
                while not self.slots.acquire(timeout=0.2):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                pool.submit(self._one, ref)

    def close(self) -> None:
        """Stop starting downloads (those running finish in the background)."""
        self.stop.set()

    def items(self) -> Iterator[tuple[ObjectRef, Path | Exception] | None]:
        """``(ref, path or error)`` as files complete, ``None`` while nothing is ready."""
        while self._left:
            try:
                item = self.ready.get_nowait()
            except queue.Empty:
                yield None
                continue
            self._left -= 1
            self.slots.release()
            yield item

    def wait(self, timeout: float) -> tuple[ObjectRef, Path | Exception] | None:
        """The next completed fetch, waiting up to ``timeout`` s (for callers without a pool)."""
        try:
            item = self.ready.get(timeout=timeout)
        except queue.Empty:
            return None
        self._left -= 1
        self.slots.release()
        return item

"""Download pipeline benchmark (``make bench-download``): one slow file among many, fetched from
a local fake hub (127.0.0.1), by the sliding window that feeds the renderers
(``data_prep.fetching.Feeder``) and by the chunked ``pool.map`` it replaced.

    python scripts/bench_download.py [--objects 64] [--slow-s 5] [--latency-s 0.02]
                                     [--window 64] [--workers 8] [--chunk 32]

Prints, for each design: seconds until the first file is ready, until every fast file is ready,
and the longest wait between two ready files. The window's figures must not depend on the slow
file; the chunked design's first chunk waits for it. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import record  # noqa: E402  (scripts/ is on sys.path when run)

from data_prep.config import ObjaverseOptions  # noqa: E402
from data_prep.fake_hub import serve  # noqa: E402
from data_prep.fetching import Feeder  # noqa: E402
from data_prep.objaverse_source import ObjaverseSource, write_fake_hub  # noqa: E402
from data_prep.samples import sample_glb_bytes  # noqa: E402


def chunked(source, refs, chunk: int, workers: int):
    """The replaced design: fetch a chunk with pool.map, hand it over, fetch the next."""
    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(refs), chunk):
            part = refs[i : i + chunk]
            yield from zip(part, pool.map(source.fetch_one, part))


def sliding(source, refs, window: int, workers: int):
    feeder = Feeder(source, refs, window, workers)
    try:
        for item in feeder.items():
            if item is None:  # nothing ready: the render loop would poll its workers here
                time.sleep(0.005)
                continue
            yield item
    finally:
        feeder.close()


def measure(name: str, items, slow_id: str, total: int) -> dict:
    started, last, gap, first, fast_done, count = time.monotonic(), None, 0.0, None, None, 0
    previous_fast = 0.0  # the slow file arriving between two fast ones does not end the wait
    fast_left = total - 1
    for ref, result in items:
        now = time.monotonic() - started
        assert isinstance(result, Path), result
        first = now if first is None else first
        last, count = now, count + 1
        if ref.id != slow_id:  # the gaps the renderers would see while fast files remain
            gap, previous_fast = max(gap, now - previous_fast), now
            fast_left -= 1
            if fast_left == 0:
                fast_done = now
    figures = {"first": first, "fast_done": fast_done, "max_gap": gap, "all": last}
    for key, note in (
        ("first", "s until the first file is ready"),
        ("fast_done", "s until every fast file is ready"),
        ("max_gap", "s longest wait for the next fast file"),
    ):
        record("download", f"{name} {key}", figures[key], "s", note)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--slow-s", type=float, default=5.0)
    parser.add_argument("--latency-s", type=float, default=0.02)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args(argv)
    glb = sample_glb_bytes("letter_l")
    uids = [f"obj{i:05d}" for i in range(args.objects)]
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        write_fake_hub(hub, {uid: (glb, "by", "thing") for uid in uids})
        slow = uids[1]  # early in the list: the chunked design's first chunk holds it
        delays = {f"/glbs/000-{i // 2:03d}/{uid}.glb": args.latency_s for i, uid in enumerate(uids)}
        delays[f"/glbs/000-{1 // 2:03d}/{slow}.glb"] = args.slow_s
        with serve(hub, delays) as (url, _):
            results = {}
            for name in ("chunked", "sliding"):
                options = ObjaverseOptions(base_url=url, cache_dir=str(Path(tmp) / name))
                options.download_workers = args.workers
                source = ObjaverseSource(options)
                refs = source.list()
                items = (
                    chunked(source, refs, args.chunk, args.workers)
                    if name == "chunked"
                    else sliding(source, refs, args.window, args.workers)
                )
                results[name] = measure(name, items, slow, len(refs))
    a, b = results["chunked"], results["sliding"]
    print(
        f"one {args.slow_s:g} s file among {args.objects}: first file ready after "
        f"{a['first']:.2f} s (chunked) vs {b['first']:.2f} s (sliding window); every fast file "
        f"after {a['fast_done']:.2f} s vs {b['fast_done']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

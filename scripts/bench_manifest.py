"""Manifest scaling benchmark (``make bench-manifest``): a records-only render run of N objects
(no Blender, no shards; ``data_prep.manifest_sim``), then the start-up of one partition and the
streaming merge, each timed, with the merge's peak memory (its own process's max RSS).

    python scripts/bench_manifest.py [--objects 10000000] [--partitions 64] [--shard-size 64]

Prints figures; not a test (the 1M-object run is ``tests/render/test_manifest_scale.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import record  # noqa: E402  (scripts/ is on sys.path when run)

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
start = time.perf_counter()
if sys.argv[1] == "merge":
    from data_prep.merge import merge
    merged, problems = merge(sys.argv[2], check_files=False)
    extra = {{"done": merged["done"], "problems": len(problems)}}
else:
    from data_prep.manifest import Manifest, check_folder
    settings = json.loads(sys.argv[3])
    check_folder(__import__("pathlib").Path(sys.argv[2]), int(sys.argv[4]), settings)
    manifest = Manifest(sys.argv[2], 0, int(sys.argv[4]), settings, reconcile=False)
    extra = {{"done": len(manifest.done)}}
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({{"seconds": seconds, "peak_mb": peak}} | extra))
"""


def child(*args: str) -> dict:
    code = CHILD.format(repo=str(REPO))
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=64)
    args = parser.parse_args(argv)
    from data_prep.manifest_sim import simulate_records

    settings = {"res": 256, "samples": 32}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        done = simulate_records(tmp, args.objects, args.partitions, settings, args.shard_size)
        written = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(tmp).glob("part-*/records.jsonl"))
        start_up = child("start", tmp, json.dumps(settings), str(args.partitions))
        merged = child("merge", tmp)
    assert merged["done"] == done and merged["problems"] == 0, merged
    n = f"{args.objects / 1e6:g}M objects, {args.partitions} partitions"
    record("manifest", "records written (whole run)", written, "s", n)
    record("manifest", "records size", size / 1e6, "MB", f"{size / args.objects:.0f} B/object")
    record("manifest", "start-up of one partition", start_up["seconds"], "s", "replay + checks")
    record(
        "manifest", "start-up peak memory", start_up["peak_mb"], "MB", "process peak RSS (VmHWM)"
    )
    record("manifest", "merge (streaming)", merged["seconds"], "s", n)
    record("manifest", "merge peak memory", merged["peak_mb"], "MB", "process peak RSS (VmHWM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

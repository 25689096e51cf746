"""`make bench`: every benchmark of the project in one run, then one table of all figures.

Each benchmark runs as its own process (CPU here: the tiny sizes; on a GPU machine the real ones)
and records its figures through ``scripts/bench_common.record``. A benchmark that fails is shown
as failed in the table; the others still run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {
    "render": ["scripts/bench_render.py"],
    "download": ["scripts/bench_download.py"],
    "manifest": ["scripts/bench_manifest.py", "--objects", "1000000", "--partitions", "16"],
    "data": ["scripts/bench_data.py"],
    "model": ["scripts/bench_model.py"],
    "train": ["scripts/bench_train.py"],
    "sds": ["scripts/bench_sds.py"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHES), help="comma list of benchmarks")
    parser.add_argument("--out", default="outputs/bench/results.json", help="all figures as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")

    rows: list[dict] = []
    status: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "figures.jsonl"
        for name in names:
            print(f"\n==> bench {name}: {' '.join(BENCHES[name])}", flush=True)
            start = time.perf_counter()
            env = dict(os.environ, BENCH_JSON=str(sink))
            done = subprocess.run([sys.executable, *BENCHES[name]], cwd=ROOT, env=env)
            seconds = time.perf_counter() - start
            status[name] = f"ok ({seconds:.0f} s)" if done.returncode == 0 else "FAILED"
        if sink.exists():
            rows = [json.loads(line) for line in sink.read_text().splitlines()]

    print("\n| bench | figure | value | unit | note |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        value = f"{row['value']:.4g}"
        print(f"| {row['bench']} | {row['metric']} | {value} | {row['unit']} | {row['note']} |")
    print("\n" + ", ".join(f"{name}: {state}" for name, state in status.items()))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"figures": rows, "status": status}, indent=2))
    print(f"figures: {out}")
    return 0 if all(state != "FAILED" for state in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark scripts run and record finite figures for the `make bench` table.

Benchmarks are not timed tests; this only guards that each script still runs end to end at its
smallest settings (bench_sds once crashed after its first row and nothing noticed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "bench_manifest.py": ["--objects", "20000", "--partitions", "4"],
    "bench_download.py": ["--objects", "8", "--slow-s", "1", "--workers", "2", "--chunk", "4"],
    "bench_model.py": ["--modes", "eager", "--steps", "1", "--rounds", "1", "--warmup", "1"],
    "bench_train.py": ["--steps", "1", "--rounds", "1", "--warmup", "1"],
    # without --data: renders its own shards (tests/training/test_bench_data.py passes --data)
    "bench_data.py": ["--res", "32", "--batches", "2", "--batch-size", "2", "--rounds", "1"],
    "bench_sds.py": ["--steps", "1", "--warmup", "0", "--resolutions", "32,48", "--modes", "eager"],
}


@pytest.mark.parametrize("script", sorted(SMALL))
def test_bench_script_records_finite_figures(script: str, tmp_path: Path):
    sink = tmp_path / "figures.jsonl"
    env = dict(os.environ, BENCH_JSON=str(sink), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, f"scripts/{script}", *SMALL[script]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in sink.read_text().splitlines()]
    assert rows, f"{script} recorded no figure"
    assert all(math.isfinite(row["value"]) and row["value"] >= 0 for row in rows), rows
    benches = {row["bench"] for row in rows}
    assert len(benches) == 1  # one script, one section of the table


def test_bench_all_tabulates_and_rejects_unknown_names(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "scripts/bench_all.py", "--only", "nonsense"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "unknown benchmark" in done.stderr

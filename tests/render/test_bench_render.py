"""`make bench-render` runs end to end at its smallest settings and records finite figures,
including the heavy-mesh seconds per view with and without scene reuse (not a timed test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_render_records_every_figure(tmp_path):
    sink = tmp_path / "figures.jsonl"
    flags = ["--objects", "2", "--res", "16", "--samples", "1", "--num-quads", "0"]
    flags += ["--num-refs", "1", "--heavy-subdivisions", "2", "--heavy-views", "2"]
    flags += ["--no-denoise", "--device", "cpu", "--out", str(tmp_path / "bench")]
    done = subprocess.run(
        [sys.executable, "scripts/bench_render.py", *flags],
        cwd=ROOT,
        env=dict(os.environ, BENCH_JSON=str(sink), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["metric"]: row["value"] for row in map(json.loads, sink.read_text().splitlines())}
    assert {"pipeline / plain bpy loop", "heavy mesh s/view, scene reuse"} <= set(rows)
    assert "heavy mesh s/view, no reuse" in rows
    assert all(math.isfinite(v) for v in rows.values()), rows
    # (the per-object overhead is a difference of two runs: at these sizes it is noise, any sign)
    assert all(rows[k] > 0 for k in rows if "heavy" in k or "plain" in k), rows
    figures = json.loads((tmp_path / "bench" / "figures.json").read_text())
    assert len(figures["heavy_view_seconds_with_reuse"]) == 2 and figures["heavy_triangles"] == 320
    assert "with scene reuse" in done.stdout and "target <= 1.1" in done.stdout

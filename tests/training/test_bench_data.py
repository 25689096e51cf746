"""`make bench-data` runs end to end at its smallest settings on the project's shards and
records every figure the data-path goal is read from (not a timed test: it checks the report)."""

from __future__ import annotations

import json
import math
import os

from train_helpers import ROOT, run_cli


def test_bench_data_reports_decode_data_path_ratio_and_cache(rendered_shards, tmp_path):
    sink = tmp_path / "figures.jsonl"
    os.environ["BENCH_JSON"] = str(sink)
    try:
        args = ["--data", str(rendered_shards), "--res", "32", "--batches", "2",
                "--batch-size", "2", "--rounds", "1"]  # fmt: skip
        done = run_cli([str(ROOT / "scripts" / "bench_data.py"), *args], timeout=300)
    finally:
        del os.environ["BENCH_JSON"]
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["metric"]: row for row in map(json.loads, sink.read_text().splitlines())}
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in rows.values()), rows
    names = " | ".join(rows)
    for wanted in ("bare decode PIL", "bare decode torchvision decode_png", "data path (32 px",
                   "data path objects/s per core", "data path / bare decode",
                   "latent-cache path objects/s per core", "data path beyond decoding"):  # fmt: skip
        assert wanted in names, names
    ratio = rows["data path / bare decode (faster decoder)"]
    data_ms = next(r["value"] for m, r in rows.items() if m.startswith("data path (32 px"))
    floor = min(rows["bare decode PIL (32 px)"]["value"],
                rows["bare decode torchvision decode_png (32 px)"]["value"])  # fmt: skip
    assert math.isclose(ratio["value"], data_ms / floor, rel_tol=1e-6)

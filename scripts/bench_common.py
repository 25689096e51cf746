"""Shared by the benchmark scripts: print a figure and, under `make bench`, record it.

`scripts/bench_all.py` sets ``BENCH_JSON`` to a file; every :func:`record` call appends one JSON
line there, and bench_all prints all of them as one table."""

from __future__ import annotations

import json
import os


def record(bench: str, metric: str, value: float, unit: str = "", note: str = "") -> None:
    """Print one figure and append it to ``$BENCH_JSON`` when set."""
    print(f"[{bench}] {metric}: {value:.4g} {unit}  {note}".rstrip(), flush=True)
    path = os.environ.get("BENCH_JSON")
    if path:
        row = {"bench": bench, "metric": metric, "value": value, "unit": unit, "note": note}
        with open(path, "a") as stream:
            stream.write(json.dumps(row) + "\n")

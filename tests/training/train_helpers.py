"""Helpers shared by the training tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "stage1-tiny.yaml"
# Small and quiet: the whole training suite has a few minutes on 2 CPU cores.
FAST = [
    "data.num_workers=0",
    "data.shuffle_buffer=4",
    "log.progress_bar=false",
    "log.sample_every_n_steps=0",
    "log.every_n_steps=2",
    "train.warmup_steps=2",
]


def tiny_config(out: Path, data: Path | list, *overrides: str, stage: int = 1) -> RunConfig:
    sources = [str(d) for d in data] if isinstance(data, list) else [str(data)]
    listed = json.dumps(sources)  # valid YAML, whatever the paths contain
    config_file = ROOT / "configs" / f"stage{stage}-tiny.yaml"
    return load_config(config_file, [*FAST, f"out={out}", f"data.train={listed}", *overrides])


def run_cli(args: list[str], timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )

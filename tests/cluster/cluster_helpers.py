"""Helpers of the cluster tests: ``make`` targets with the local cluster's environment, waiting
for jobs, reading their state."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Small and quiet: a tiny-model job is ~20 s on the 2-core CI machine.
FAST = [
    "data.num_workers=0", "data.shuffle_buffer=4", "log.progress_bar=false",
    "log.sample_every_n_steps=0", "log.every_n_steps=1", "train.warmup_steps=2",
    "log.logger=none", "strategy.name=deepspeed",
]  # fmt: skip


def make(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def job_ids(output: str) -> list[str]:
    return re.findall(r"as SLURM job (\d+)", output)


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as key -> value (jobs stay listed for MinJobAge after they end)."""
    text = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def wait_done(ids: list[str], timeout: float = 400) -> dict[str, dict[str, str]]:
    """Wait until every job has ended; their final ``scontrol`` records."""
    deadline = time.monotonic() + timeout
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    while True:
        states = {i: job_state(i) for i in ids}
        if all(s.get("JobState") in ended for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"jobs still running: { {i: s.get('JobState') for i, s in states.items()} }"
            )
        time.sleep(1.0)

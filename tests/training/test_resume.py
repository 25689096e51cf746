"""Kill a run (SIGKILL, no chance to clean up) and resume it: the step count continues from the
newest checkpoint and, with a deterministic config, the loss curve and the weight EMA match an
uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import FAST, ROOT, run_cli, tiny_config

from training.checkpoint_read import read_checkpoint
from training.checkpoint_resolve import latest_checkpoint
from training.train import run

STEPS = 8
# A sample grid every step makes each step slow enough (~0.3 s) for the kill to land mid-run;
# sampling has its own generator, so it does not change the training draws.
SETTINGS = [
    f"train.max_steps={STEPS}", "checkpoint.every_n_steps=3", "checkpoint.keep_last=5",
    "data.exact_resume=true", "log.sample_every_n_steps=1", "log.sample_steps=4",
]  # fmt: skip


def _losses(out) -> dict[int, float]:
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]  # a replayed step overwrites the killed one
    return losses


def test_kill_and_resume_matches_uninterrupted(rendered_shards, tmp_path):
    reference = tmp_path / "reference"
    run(tiny_config(reference, rendered_shards, *SETTINGS))

    out = tmp_path / "killed"
    args = ["-m", "training.train", "--config", str(ROOT / "configs/stage1-tiny.yaml"), *FAST, *SETTINGS,
            f"out={out}", f"data.train={json.dumps([str(rendered_shards)])}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # step 4 started => the step-3 checkpoint is complete
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = len(metrics.read_text().splitlines())
    if done >= STEPS:
        pytest.fail("the run finished before it could be killed")
    assert latest_checkpoint(out).name in {"step=00000003.ckpt", "step=00000006.ckpt"}

    result = run_cli(args)  # checkpoint.resume=auto picks the newest checkpoint
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restoring states from the checkpoint" in result.stderr + result.stdout
    resumed = _losses(out)
    expected = _losses(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), step
    final, ref = (
        read_checkpoint(latest_checkpoint(out)),
        read_checkpoint(latest_checkpoint(reference)),
    )
    assert final.step == ref.step == STEPS
    for name, tensor in ref.ema.items():
        # float sums differ by thread count between the two processes: ~1e-6 noise
        torch.testing.assert_close(final.ema[name], tensor, rtol=1e-3, atol=1e-5)

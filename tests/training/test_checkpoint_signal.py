"""SLURM requeue: a signal-time checkpoint (Lightning's ``hpc_ckpt_N.ckpt`` in the run folder)
newer than the periodic one is resumed from; an older one is not; keep-last prunes them too."""

from __future__ import annotations

import json
import shutil

from train_helpers import tiny_config

from training.checkpoint_resolve import resolve_resume, signal_checkpoints
from training.train import run

BASE = [
    "checkpoint.every_n_steps=2", "checkpoint.keep_last=2", "log.logger=none",
    "log.every_n_steps=1",
]  # fmt: skip


def test_requeue_resumes_from_a_newer_signal_checkpoint_and_prunes_old_ones(
    rendered_shards, tmp_path
):
    out = tmp_path / "run"
    run(tiny_config(out, rendered_shards, *BASE, "train.max_steps=5"))
    periodic = out / "checkpoints"
    # As SIGUSR1 at step 5 leaves it (the state at step 5 in the run folder), plus two older ones.
    shutil.move(periodic / "step=00000005.ckpt", out / "hpc_ckpt_3.ckpt")
    for n in (1, 2):
        shutil.copy(periodic / "step=00000004.ckpt", out / f"hpc_ckpt_{n}.ckpt")
    assert resolve_resume("auto", out) == str(out / "hpc_ckpt_3.ckpt")

    trainer = run(tiny_config(out, rendered_shards, *BASE, "train.max_steps=6"))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 5 (not at the periodic 4)
    assert trainer.global_step == 6
    # keep_last=2 applies to signal-time checkpoints: the oldest one was pruned
    assert signal_checkpoints(out) == [out / "hpc_ckpt_2.ckpt", out / "hpc_ckpt_3.ckpt"]
    # The periodic step-6 checkpoint is now the newest one.
    assert resolve_resume("auto", out) == str(periodic / "step=00000006.ckpt")

"""SLURM requeue: a signal-time checkpoint (Lightning's ``hpc_ckpt_N.ckpt`` in the run folder)
newer than the periodic one is resumed from; an older one is not; keep-last prunes them too."""

from __future__ import annotations

import json
import shutil

from train_helpers import tiny_config

from training.checkpoints import resolve_resume, signal_checkpoints
from training.train import run

BASE = ["checkpoint.every_n_steps=3", "log.logger=none", "log.every_n_steps=1"]


def test_requeue_resumes_from_a_newer_signal_checkpoint_and_prunes_old_ones(
    rendered_shards, tmp_path
):
    out = tmp_path / "run"
    run(tiny_config(out, rendered_shards, *BASE, "train.max_steps=5", "checkpoint.keep_last=2"))
    periodic = out / "checkpoints"
    # As SIGUSR1 at step 5 leaves it (the state at step 5 in the run folder), plus an older one.
    shutil.move(periodic / "step=00000005.ckpt", out / "hpc_ckpt_2.ckpt")
    shutil.copy(periodic / "step=00000003.ckpt", out / "hpc_ckpt_1.ckpt")
    assert resolve_resume("auto", out) == str(out / "hpc_ckpt_2.ckpt")

    trainer = run(
        tiny_config(out, rendered_shards, *BASE, "train.max_steps=6", "checkpoint.keep_last=1")
    )
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 5 (not at the periodic 3)
    assert trainer.global_step == 6
    assert signal_checkpoints(out) == [out / "hpc_ckpt_2.ckpt"]  # the older one was pruned
    # The periodic step-6 checkpoint is now the newer one.
    assert resolve_resume("auto", out) == str(periodic / "step=00000006.ckpt")

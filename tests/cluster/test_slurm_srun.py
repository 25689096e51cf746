"""Inside an allocation, as users work interactively: ``salloc`` on both nodes, ``srun`` steps in
it, and ``make finetune`` there starts its tasks with ``srun`` at once (no new job). The second run
of the session has ``checkpoint.resume=none`` while a SLURM signal-time checkpoint of Lightning's
(``hpc_ckpt_1.ckpt``) lies in its run folder: it starts fresh (Lightning loads that file by itself
whenever ``fit`` gets no checkpoint path under SLURM; training.resume switches that off)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from cluster_helpers import ROOT

STEPS = 2
SETTINGS = [
    "data.num_workers=0", "data.shuffle_buffer=4", "log.progress_bar=false",
    "log.sample_every_n_steps=0", "log.every_n_steps=1", "train.warmup_steps=2",
    "log.logger=none", "strategy.name=ddp", f"train.max_steps={STEPS}",
    f"checkpoint.every_n_steps={STEPS}",
]  # fmt: skip


def test_make_finetune_inside_salloc_runs_srun_steps_and_resume_none_starts_fresh(
    slurm_env, rendered_shards, tmp_path
):
    out = tmp_path / "run"
    finetune = [
        "make", "--no-print-directory", "finetune", "NODES=2", "GPUS=1", "CONFIG=tiny",
        f"DATA={rendered_shards}", f"OUT={out}",
    ]  # fmt: skip
    first = shlex.join([*finetune, "ARGS=" + " ".join(SETTINGS)])
    again = shlex.join([*finetune, "ARGS=" + " ".join([*SETTINGS, "checkpoint.resume=none"])])
    signal_time = out / "hpc_ckpt_1.ckpt"
    session = tmp_path / "session.sh"
    session.write_text(
        "\n".join(
            [
                "set -euo pipefail",
                'echo "allocation $SLURM_JOB_ID on $SLURM_JOB_NODELIST"',
                "srun bash -c 'echo \"step task $SLURM_PROCID on $SLURMD_NODENAME\"'",
                first,
                # what SIGUSR1 under Lightning's own auto-requeue leaves in the run folder
                shlex.join(["cp", str(out / "checkpoints" / f"step={STEPS:08d}.ckpt"), str(signal_time)]),
                'echo "--- second run"',
                again,
            ]
        )
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        ["salloc", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1",
         "--job-name=isotropic3d-session",
         "bash", str(session)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]
    assert "step task 0 on n1" in text and "step task 1 on n2" in text  # srun steps, both nodes
    runs = text.split("--- second run")
    for part in runs:  # the launcher ran srun in this allocation instead of queueing a job
        assert "Running: srun --nodes=2 --ntasks-per-node=1" in part, part[-3000:]
        assert "Submitted" not in part
    assert "Restoring states" not in runs[1] and signal_time.is_file()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 1, 2]  # the second run started at step 0
    assert all(len(r["keys"]) == 2 for r in records)  # two ranks, one per node

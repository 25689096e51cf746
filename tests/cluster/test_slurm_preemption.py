"""Preemption on a real SLURM cluster under DeepSpeed: ``scancel --signal=USR1`` mid-run makes the
ranks agree at the next step, save one checkpoint together and requeue the job; after SLURM's
requeue delay it resumes from that checkpoint and ends with the very weights (fp32 and EMA) of the
same job left alone."""

from __future__ import annotations

import json
import subprocess
import time

import torch
from cluster_helpers import FAST, job_ids, job_state, make, wait_done

from training.checkpoint_read import read_checkpoint

# Long enough that the job is still running when the signal lands: at 12 steps a fresh-clone CI
# run's job finished (15 s) while scancel retried a transient "Invalid job id specified".
STEPS = 30


def _steps(out) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(
    slurm_env, rendered_shards, tmp_path
):
    settings = [*FAST, f"train.max_steps={STEPS}", "checkpoint.every_n_steps=100"]
    ids = {}
    for name in ("preempted", "reference"):  # 2 CPUs per task: both jobs run side by side
        result = make(
            "finetune", "NODES=2", "GPUS=1", "CPUS_PER_TASK=2", "CONFIG=tiny",
            f"DATA={rendered_shards}", f"OUT={tmp_path / name}", f"ARGS={' '.join(settings)}",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        (ids[name],) = job_ids(result.stdout)
    preempted = tmp_path / "preempted"
    deadline = time.monotonic() + 300
    while not _steps(preempted) or max(_steps(preempted)) < 2:
        assert time.monotonic() < deadline, "the job never reached step 2"
        assert job_state(ids["preempted"]).get("JobState") in ("PENDING", "RUNNING")
        time.sleep(0.2)
    # seen once on a loaded machine: "Invalid job id specified" for the running job: retried
    for _ in range(10):
        cancel = subprocess.run(
            ["scancel", "--signal=USR1", ids["preempted"]], capture_output=True, text=True, timeout=30
        )  # fmt: skip
        if cancel.returncode == 0:
            break
        time.sleep(1.0)
    assert cancel.returncode == 0, cancel.stderr + str(job_state(ids["preempted"]))
    states = wait_done(list(ids.values()), timeout=500)
    log = next((preempted / "slurm").glob("*.out")).read_text()
    assert all(s["JobState"] == "COMPLETED" for s in states.values()), log[-5000:]
    assert (
        states[ids["preempted"]]["Restarts"] == "1" and states[ids["reference"]]["Restarts"] == "0"
    )
    signalled = [line for line in log.splitlines() if line.startswith("signal received")]
    assert len(signalled) == 1 and f"requeueing SLURM job {ids['preempted']}" in signalled[0], log
    saved_at = int(signalled[0].split(" at step ")[1].split(";")[0])
    assert 2 <= saved_at < STEPS and "(restart 1)" in log
    steps = _steps(preempted)  # the resumed job continued after the saved step, to the end
    assert steps[-1] == STEPS and sorted(set(steps)) == list(range(1, STEPS + 1))
    assert steps.index(saved_at + 1) > 0 and steps.count(saved_at) == 1
    final = f"checkpoints/step={STEPS:08d}.ckpt"
    ours, theirs = (
        read_checkpoint(preempted / final),
        read_checkpoint(tmp_path / "reference" / final),
    )
    assert ours.step == theirs.step == STEPS
    for name, tensor in theirs.unet.items():
        assert torch.equal(ours.unet[name], tensor), name
    assert ours.ema is not None and set(ours.ema) == set(theirs.ema)
    for name, tensor in theirs.ema.items():
        assert torch.equal(ours.ema[name], tensor), name

"""Preemption and time limits, safe under DeepSpeed.

SLURM sends SIGUSR1 before the time limit (``--signal=USR1@N``; ``scancel --signal=USR1`` does the
same by hand) and SIGTERM when it preempts or cancels. Saving a checkpoint inside the signal handler
would run collectives from a signal context, which can hang a DeepSpeed job; so the handler only
sets a flag. At the next step boundary all ranks agree on it (one all-reduce), save one checkpoint
together (the periodic kind, so ``resume: auto`` takes it and resume is exact), and under SLURM
rank 0 requeues the job (``scontrol requeue``), which SLURM then ends and starts again after its
requeue delay. Lightning's own SLURM auto-requeue (a save inside its signal handler, and a resume
from ``hpc_ckpt_N`` behind our resolver) is off: see training.train.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Set by the signal handler, read at step boundaries: nothing else happens in the handler."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def handler(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def install(self) -> None:
        for sig in SIGNALS:
            previous = signal.signal(sig, self.handler)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: an array task's own id, else the job id."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def requeue(job_id: str) -> bool:
    result = subprocess.run(
        ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
    )
    if result.returncode:
        print(f"scontrol requeue {job_id} failed: {result.stderr.strip()}", flush=True)
    return result.returncode == 0


class Preemption(pl.Callback):
    """Checkpoint at the first step boundary after SIGUSR1/SIGTERM on any rank, then requeue under
    SLURM (``requeue``) or stop (rerun the command to resume)."""

    def __init__(self, folder: str | Path, flag: StopFlag, requeue: bool = True) -> None:
        self.folder, self.flag, self.requeue = Path(folder), flag, requeue

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self.flag.install()  # again: Lightning installed its own handlers since

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.flag.signum is not None, all=False):
            return
        from training.checkpoint_files import is_complete

        step = trainer.global_step
        path = self.folder / f"step={step:08d}.ckpt"
        if not (path.exists() and is_complete(path)):  # a periodic save may have taken this step
            trainer.save_checkpoint(path, weights_only=False)  # every rank: DeepSpeed's shards
        trainer.strategy.barrier("preemption-checkpoint")
        job = slurm_job_id() if self.requeue else None
        if trainer.is_global_zero:
            what = f"requeueing SLURM job {job}" if job else "stopping (rerun to resume)"
            print(f"signal received: checkpoint {path} at step {step}; {what}", flush=True)
            if job:
                requeue(job)
        trainer.strategy.barrier("preemption-requeued")
        trainer.should_stop = True  # the loop ends here; the final save finds this step saved

    def teardown(self, trainer: pl.Trainer, module: Any, stage: str) -> None:
        self.flag.restore()

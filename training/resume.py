"""Which checkpoint a run resumes from, decided once for all ranks.

Rank 0 resolves ``checkpoint.resume`` (training.checkpoint_resolve) as soon as the processes are
connected, and broadcasts its answer: ranks on shared storage whose views of the run folder differ
(a file another node has not seen yet) still resume from the same checkpoint. Lightning's own
SLURM fallback, which loads the newest ``hpc_ckpt_N.ckpt`` of the run folder whenever ``fit`` gets
no path, is switched off here: ``resume: none`` starts fresh, and nothing is loaded behind the
resolver's back. Signal-time checkpoints are pruned only once every rank has finished reading the
resumed one, and never that one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

from training.checkpoint_prune import prune_signal_checkpoints
from training.checkpoint_resolve import resolve_resume


class ResumeError(ValueError):
    """The resume checkpoint cannot be used; raised on every rank with rank 0's reason."""


def agree(choose: Callable[[], Any], broadcast: Callable[..., Any], is_zero: bool) -> Any:
    """Rank 0 runs ``choose``; every rank gets its result. A failure on rank 0 is broadcast too and
    raised on every rank (no rank waits forever for a choice that never comes)."""
    answer = None
    if is_zero:
        try:
            answer = ("ok", choose())
        except (OSError, ValueError) as error:
            answer = ("error", str(error))
    kind, value = broadcast(answer, 0)
    if kind == "error":
        raise ResumeError(value)
    return value


class ResumeConnector(_CheckpointConnector):
    """Lightning's checkpoint connector with our resolver as the only source of the resume path."""

    def __init__(self, trainer: pl.Trainer, resume: str, out: str | Path, keep_last: int) -> None:
        super().__init__(trainer)
        self.resume, self.out, self.keep_last = resume, Path(out), keep_last
        self.resumed: str | None = None

    @property
    def _hpc_resume_path(self) -> str | None:
        return None  # Lightning's hpc_ckpt_N fallback: our resolver weighs those files instead

    def resume_start(self, checkpoint_path: Any = None, weights_only: bool | None = None) -> None:
        # Called inside fit once the process group exists (before or after the strategy's setup).
        if checkpoint_path is None:
            trainer = self.trainer
            checkpoint_path = agree(
                lambda: resolve_resume(self.resume, self.out),
                trainer.strategy.broadcast,
                trainer.is_global_zero,
            )
        self.resumed = str(checkpoint_path) if checkpoint_path else None
        super().resume_start(checkpoint_path, weights_only=weights_only)

    def resume_end(self) -> None:
        super().resume_end()  # ends with a barrier: every rank has read the checkpoint
        if self.trainer.is_global_zero:
            for old in prune_signal_checkpoints(self.out, self.keep_last, [self.resumed]):
                print(f"checkpoint.keep_last: removed {old}", flush=True)


def install(trainer: pl.Trainer, resume: str, out: str | Path, keep_last: int) -> ResumeConnector:
    """Give ``trainer`` the resume connector; call ``trainer.fit`` without ``ckpt_path``."""
    connector = ResumeConnector(trainer, resume, out, keep_last)
    trainer._checkpoint_connector = connector
    return connector


def resumed_path(trainer: pl.Trainer) -> str | None:
    """The checkpoint this run resumed from (None: a fresh start)."""
    connector = trainer._checkpoint_connector
    return getattr(connector, "resumed", None)

"""Pruning: ``checkpoint.keep_last`` for periodic and SLURM signal-time checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.checkpoint_files import step_of
from training.checkpoint_resolve import signal_checkpoints


def stale_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Periodic checkpoints in ``folder`` beyond the newest ``keep_last``, oldest first."""
    saved = sorted((p for p in Path(folder).iterdir() if step_of(p) >= 0), key=step_of)
    return saved[:-keep_last]


def prune_signal_checkpoints(out: str | Path, keep_last: int) -> None:
    """``checkpoint.keep_last`` applies to signal-time checkpoints too (rank 0, at start)."""
    for old in signal_checkpoints(out)[:-keep_last]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()

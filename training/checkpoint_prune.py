"""Pruning: ``checkpoint.keep_last`` for periodic and SLURM signal-time checkpoints, with a guard:
pruning never deletes the checkpoint being resumed, nor the last complete one of the run."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from training.checkpoint_files import is_complete, step_of
from training.checkpoint_resolve import all_checkpoints, signal_checkpoints


def stale_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Periodic checkpoints in ``folder`` beyond the newest ``keep_last``, oldest first."""
    saved = sorted((p for p in Path(folder).iterdir() if step_of(p) >= 0), key=step_of)
    return saved[:-keep_last]


def guarded(stale: list[Path], out: str | Path, protect: Iterable[str | Path | None] = ()) -> list:
    """``stale`` (oldest first) less what must stay: the ``protect``ed paths (the checkpoint the
    run resumed from) and, when no complete checkpoint of the run ``out`` would remain, the newest
    complete one among them (a newer save may be a cut-short, unmarked folder)."""
    kept = {Path(p).resolve() for p in protect if p}
    removable = [p for p in stale if p.resolve() not in kept]
    gone = {p.resolve() for p in removable}
    left = [p for p in all_checkpoints(out) if p.resolve() not in gone]
    if not any(is_complete(p) for p in left):
        complete = [p for p in removable if is_complete(p)]
        if complete:
            removable.remove(complete[-1])
    return removable


def prune_signal_checkpoints(
    out: str | Path, keep_last: int, protect: Iterable[str | Path | None] = ()
) -> list[Path]:
    """``checkpoint.keep_last`` applies to signal-time checkpoints too (rank 0, once every rank has
    finished reading the resumed checkpoint); the paths removed."""
    removed = guarded(signal_checkpoints(out)[:-keep_last], out, protect)
    for old in removed:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return removed

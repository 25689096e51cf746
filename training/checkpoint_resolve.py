"""Resolving ``checkpoint.resume``: the newest complete checkpoint of a run, periodic or SLURM
signal-time, by the step recorded in it."""

from __future__ import annotations

import re
from pathlib import Path

from training.checkpoint_files import (
    CHECKPOINTS,
    SIGNAL_PREFIX,
    checkpoint_step,
    is_complete,
    step_of,
)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete periodic checkpoint under ``folder/checkpoints``."""
    folder = Path(folder) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if step_of(p) >= 0 and is_complete(p)]
    return max(found, key=step_of) if found else None


def signal_checkpoints(out: str | Path) -> list[Path]:
    """Complete SLURM signal-time checkpoints in the run folder, oldest first by step."""
    out = Path(out)
    found = (
        [p for p in out.glob(f"{SIGNAL_PREFIX}*.ckpt") if is_complete(p)] if out.is_dir() else []
    )
    number = lambda p: int(re.sub(r"\D", "", p.stem) or 0)  # noqa: E731  (Lightning's N)
    return sorted(found, key=lambda p: (checkpoint_step(p), number(p)))


def resolve_resume(resume: str, out: str | Path) -> str | None:
    """``auto``: the newest complete checkpoint, periodic or SLURM signal-time, by step."""
    if resume == "none":
        return None
    if resume == "auto":
        candidates = [p for p in [latest_checkpoint(out), *signal_checkpoints(out)[-1:]] if p]
        if not candidates:
            return None
        return str(max(candidates, key=checkpoint_step))
    if not Path(resume).exists():
        raise FileNotFoundError(f"checkpoint.resume: {resume} does not exist")
    return resume

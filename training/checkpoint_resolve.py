"""Resolving ``checkpoint.resume``: the newest complete and readable checkpoint of a run, periodic
or SLURM signal-time, by step. A checkpoint that cannot be read (truncated, damaged, not a torch
file) or that this stack did not write (no ``run_config``) is named and passed over for the next
older one; an incomplete one (a save cut short) is named too. training.resume runs this on rank 0
only and hands its answer to every rank."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from training.checkpoint_files import (
    CHECKPOINTS,
    COMPLETE,
    DS_TAG,
    SIGNAL_PREFIX,
    checkpoint_step,
    deepspeed_model_file,
    is_complete,
    safe_load,
    step_of,
)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete periodic checkpoint under ``folder/checkpoints``."""
    folder = Path(folder) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if step_of(p) >= 0 and is_complete(p)]
    return max(found, key=step_of) if found else None


def _signal_number(path: Path) -> int:
    return int(re.sub(r"\D", "", path.stem) or 0)  # Lightning's N of hpc_ckpt_N


def _step_or_unknown(path: Path) -> int:
    try:
        return checkpoint_step(path)
    except Exception:  # unreadable: sorted first (pruned first, resumed last)  # noqa: BLE001
        return -1


def signal_checkpoints(out: str | Path) -> list[Path]:
    """Complete SLURM signal-time checkpoints in the run folder, oldest first by step."""
    out = Path(out)
    found = (
        [p for p in out.glob(f"{SIGNAL_PREFIX}*.ckpt") if is_complete(p)] if out.is_dir() else []
    )
    return sorted(found, key=lambda p: (_step_or_unknown(p), _signal_number(p)))


def all_checkpoints(out: str | Path) -> list[Path]:
    """Every checkpoint of a run, complete or not: periodic ones and signal-time ones."""
    out = Path(out)
    periodic = out / CHECKPOINTS
    found = [p for p in periodic.iterdir() if step_of(p) >= 0] if periodic.is_dir() else []
    return found + (sorted(out.glob(f"{SIGNAL_PREFIX}*.ckpt")) if out.is_dir() else [])


def unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None. Every file is opened weights-only and
    memory-mapped (only its index and pickle are read, not the tensors)."""
    try:
        if path.is_dir():
            model_file = deepspeed_model_file(path)
            if model_file is None:
                return f"holds no DeepSpeed model states under {DS_TAG}/"
            listed = json.loads((path / COMPLETE).read_text()).get("files", [])
            for name in listed:
                if name != model_file.name:
                    safe_load(path / DS_TAG / name, mmap=True)
            client = safe_load(model_file, mmap=True)
        else:
            client = safe_load(path, mmap=True)
    except Exception as error:  # noqa: BLE001  (any failure to read is the answer)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"cannot be read ({type(error).__name__}: {reason[:200]}): damaged or truncated"
    if not isinstance(client, dict) or "run_config" not in client or "global_step" not in client:
        return "is not a checkpoint of this training stack (no run_config / global_step)"
    return None


def _candidates(out: Path) -> list[Path]:
    """Every checkpoint of the run, newest first by step (periodic before signal-time on a tie)."""
    ranked = []
    for path in all_checkpoints(out):
        periodic = path.parent.name == CHECKPOINTS
        step = step_of(path) if periodic else _step_or_unknown(path)
        ranked.append(((step, periodic, 0 if periodic else _signal_number(path)), path))
    return [path for _, path in sorted(ranked, key=lambda item: item[0], reverse=True)]


def resolve_resume(resume: str, out: str | Path, log: Callable[[str], None] = print) -> str | None:
    """``none``: None. ``auto``: the newest complete and readable checkpoint, periodic or SLURM
    signal-time, by step; each newer one passed over is named through ``log``. A path: that
    checkpoint, or an error that says why it cannot be resumed from."""
    if resume == "none":
        return None
    if resume == "auto":
        for path in _candidates(Path(out)):
            if path.name.endswith(".partial"):
                continue  # a DDP save in progress or cut short: never a candidate
            if not is_complete(path):
                log(f"checkpoint.resume: skipping {path}: incomplete (a save cut short)")
                continue
            reason = unreadable(path)
            if reason is None:
                return str(path)
            log(f"checkpoint.resume: skipping {path}: {reason}")
        return None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint.resume: {resume} does not exist")
    if not is_complete(path):
        raise ValueError(f"checkpoint.resume: {resume} is incomplete (a save cut short)")
    reason = unreadable(path)
    if reason is not None:
        raise ValueError(f"checkpoint.resume: {resume} {reason}")
    return resume

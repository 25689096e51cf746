"""Checkpoint files on disk: their names, saving them whole, and telling a complete one.

A DDP checkpoint is one ``.ckpt`` file written under a temporary name and renamed
(``AtomicCheckpointIO``); a DeepSpeed one is a folder of per-rank shards that rank 0 marks complete
(``mark_complete``) with the file names and sizes every rank reported for its own part (gathered
from the ranks: on a shared file system a directory listing may not show another node's file
yet). ``is_complete`` is what ``resume: auto`` trusts; ``safe_load`` reads any of these files
without unpickling code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from lightning_fabric.utilities.cloud_io import _atomic_save
from pytorch_lightning.plugins.io import TorchCheckpointIO

BASE_MODEL = "base_model"  # run folder: frozen parts + initial UNet, written once at start
CHECKPOINTS = "checkpoints"
DS_TAG = "checkpoint"  # the tag Lightning's DeepSpeed strategy saves under
COMPLETE = "complete.json"  # in a DeepSpeed folder: written once every rank's shard is on disk
EMA_SHARD = "weight_ema_rank_{rank}.pt"  # in a DeepSpeed folder: each rank's EMA partition
SIGNAL_PREFIX = "hpc_ckpt_"  # Lightning's SLURM signal-time checkpoints, in the run folder


# The rank-0 model-state file: ZeRO-1/2 name, then ZeRO-3 name (client state lives in it).
DS_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def deepspeed_model_file(path: Path) -> Path | None:
    found = [path / DS_TAG / name for name in DS_MODEL_FILES if (path / DS_TAG / name).exists()]
    return found[0] if found else None


def is_deepspeed_checkpoint(path: Path) -> bool:
    return path.is_dir() and deepspeed_model_file(path) is not None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary name, then rename: a run killed while saving never leaves a truncated
    checkpoint for ``resume: auto`` to pick (DDP/single; DeepSpeed writes its own folders)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        _atomic_save(checkpoint, partial)
        os.replace(partial, path)


def _deepspeed_safe_globals() -> list:
    """The few plain-data DeepSpeed classes its checkpoint files pickle (a loss scaler, an enum,
    a named tuple): allow-listed for ``weights_only`` loading, so no other global, and no code, is
    ever unpickled from a folder, ours or foreign."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, **kwargs) -> dict:
    """``torch.load`` with ``weights_only=True`` and DeepSpeed's plain-data classes allowed."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def rank_of(name: str) -> int | None:
    match = re.search(r"zero_pp_rank_(\d+)_", name) or re.search(
        r"weight_ema_rank_(\d+)\.pt$", name
    )
    return int(match.group(1)) if match else None


def mark_complete(path: str | Path, per_rank: list[dict[str, int]]) -> None:
    """Called on rank 0 once every rank has written its part of a DeepSpeed save: ``per_rank[r]``
    is rank ``r``'s own files (name -> size in bytes, as that rank saw them after writing),
    gathered from the ranks. Written to a temporary name and renamed: complete or unmarked."""
    names = sorted({name for files in per_rank for name in files})
    record = {"world_size": len(per_rank), "ranks": per_rank, "files": names}
    marker = Path(path) / COMPLETE
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, marker)


def is_complete(path: Path) -> bool:
    """A checkpoint ``resume: auto`` may pick: a whole file (``.partial`` names are writes in
    progress), or a DeepSpeed folder whose marker has every rank's confirmation (one entry per
    rank of the world size, each with its optimizer shard) and whose listed files all exist here
    with the sizes their ranks wrote (a file another node has not finished is not complete)."""
    if path.name.endswith(".partial"):
        return False
    if path.is_file():
        return True
    marker = path / COMPLETE
    if not (path.is_dir() and marker.is_file()):
        return False
    try:
        record = json.loads(marker.read_text())
        world, ranks = int(record["world_size"]), record["ranks"]
        sizes = [dict(files) for files in ranks]
    except (ValueError, KeyError, TypeError):
        return False  # an unmarked, damaged or older-format marker: not trusted
    if world < 1 or len(sizes) != world:
        return False
    if not all(any(n.endswith("optim_states.pt") for n in files) for files in sizes):
        return False
    for files in sizes:
        for name, size in files.items():
            file = path / DS_TAG / name
            if not file.is_file() or file.stat().st_size != size:
                return False
    return True


def step_of(path: Path) -> int:
    match = re.search(r"step=?(\d+)", path.name)
    return int(match.group(1)) if match else -1


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was taken at, read from the checkpoint (weights-only)."""
    if path.is_dir():
        model_file = deepspeed_model_file(path)
        return int(safe_load(model_file, mmap=True).get("global_step", -1)) if model_file else -1
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])

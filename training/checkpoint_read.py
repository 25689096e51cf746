"""Reading a training checkpoint back: the UNet weights, the weight EMA, the run config and the
step, from a DDP ``.ckpt`` file or a DeepSpeed ZeRO folder (stage 1-3: the fp32 master weights
are gathered from the per-rank optimizer shards with DeepSpeed's own merger, loading weights only).
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.checkpoint_io import CheckpointError, read_file
from training.checkpoint_files import (
    DS_TAG,
    EMA_SHARD,
    deepspeed_model_file,
    is_deepspeed_checkpoint,
    rank_of,
    safe_load,
)


@dataclass
class TrainingCheckpoint:
    unet: dict[str, torch.Tensor]  # fp32 UNet weights
    ema: dict[str, torch.Tensor] | None  # fp32 weight EMA (trainable tensors only)
    run_config: dict
    step: int
    path: Path
    training_data: dict = field(default_factory=dict)  # training.data_record (newer runs)


def _unet_key(key: str) -> str | None:
    key = key.removeprefix("_forward_module.")  # Lightning's DeepSpeed wrapper (older runs)
    return key[len("unet.") :] if key.startswith("unet.") else None


def _unet_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_unet_key(k): v.float() for k, v in state.items() if _unet_key(k) is not None}


def _with_ema_partition(state: dict, optim_file: Path) -> dict:
    """An optimizer shard with its fp32 master partition replaced by the same rank's weight EMA
    partition (same layout), so DeepSpeed's merger rebuilds the EMA as it rebuilds the weights."""
    from deepspeed.checkpoint.constants import FP32_FLAT_GROUPS, SINGLE_PARTITION_OF_FP32_GROUPS

    shard = optim_file.parent / EMA_SHARD.format(rank=rank_of(optim_file.name))
    if not shard.is_file():
        raise FileNotFoundError(f"weight EMA partition {shard} missing (for {optim_file.name})")
    groups = safe_load(shard)["groups"]
    optim = state["optimizer_state_dict"]
    key = next(k for k in (SINGLE_PARTITION_OF_FP32_GROUPS, FP32_FLAT_GROUPS) if k in optim)
    if [t.shape for t in groups] != [t.shape for t in optim[key]]:
        raise ValueError(f"{shard}: partition shapes differ from {optim_file.name}'s fp32 groups")
    optim[key] = groups
    return state


@contextlib.contextmanager
def _weights_only_zero_to_fp32(ema: bool = False):
    """DeepSpeed's shard merger (``zero_to_fp32``) loads every file with ``weights_only=False``;
    run it with weights-only loads instead (the merging logic stays DeepSpeed's). ``ema``: merge
    the per-rank weight EMA partitions in place of the fp32 master partitions."""
    from deepspeed.utils import zero_to_fp32

    def load(file, *args, **kwargs):
        kwargs.pop("weights_only", None)
        kwargs.pop("map_location", None)
        kwargs.pop("mmap", None)
        # Memory-mapped: only the fp32 master partitions are read, not the Adam moments beside
        # them (10 GB of a 14 GB shard at sd21-base size).
        state = safe_load(file, mmap=True, **kwargs)
        if ema and str(file).endswith("optim_states.pt"):
            state = _with_ema_partition(state, Path(file))
        return state

    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch.__dict__)
    proxy.load = load
    zero_to_fp32.torch = proxy
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = torch


def check_training_checkpoint(content: dict, path: Path) -> None:
    """A checkpoint of ours (it has run_config) must hold its UNet weights."""
    state = content.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is a training checkpoint of this stack without its model weights (no "
            "state_dict): an incomplete or hand-edited save; use an earlier checkpoint"
        )
    if not any(str(k).removeprefix("_forward_module.").startswith("unet.") for k in state):
        raise CheckpointError(
            f"{path} is a training checkpoint of this stack whose state_dict holds no UNet "
            "weights (no unet.* tensors); use an earlier checkpoint"
        )


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """UNet weights, EMA and run config of a DDP checkpoint file or a DeepSpeed ZeRO directory
    (stage 1-3: the fp32 master weights are gathered from the per-rank optimizer shards)."""
    path = Path(path)
    ema_state = None
    if is_deepspeed_checkpoint(path):
        client = safe_load(deepspeed_model_file(path))
        with _weights_only_zero_to_fp32() as zero_to_fp32:
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
        if client.get("weight_ema", {}).get("partitioned"):
            with _weights_only_zero_to_fp32(ema=True) as zero_to_fp32:
                ema_state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                    str(path), tag=DS_TAG
                )
    elif path.is_file():
        client = read_file(path)  # clear errors for a truncated or foreign file
        if isinstance(client, dict) and "run_config" in client:
            check_training_checkpoint(client, path)
        state = client.get("state_dict", {}) if isinstance(client, dict) else {}
    else:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint file nor a DeepSpeed checkpoint folder"
        )
    if not isinstance(client, dict) or "run_config" not in client:
        raise CheckpointError(f"{path} is not a checkpoint of this training stack (no run_config)")
    ema = client.get("weight_ema")
    unet = _unet_only(state)
    if ema_state is not None:  # merged from the ZeRO partitions: the optimised tensors only
        trained = {_unet_key(n) for group in client["param_shapes"] for n in group}
        ema = {k: v for k, v in _unet_only(ema_state).items() if k in trained}
    elif ema is not None:
        ema = {k: v.float() for k, v in ema["shadow"].items()}
    return TrainingCheckpoint(
        unet=unet,
        ema=ema,
        run_config=client["run_config"],
        step=int(client.get("global_step", 0)),
        path=path,
        training_data=dict(client.get("training_data") or {}),
    )

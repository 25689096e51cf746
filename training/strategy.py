"""Pick accelerator, precision and distributed strategy from the run config.

GPU default: DeepSpeed ZeRO-2 (ZeRO-3 and CPU offload as options), DDP as the alternative. CPU: DDP
on gloo (Lightning's DeepSpeed strategy refuses CPU) or a single process. The frozen VAE and image
encoder are never part of the wrapped module (see training.module), so ZeRO neither partitions nor
casts them, and ``exclude_frozen_parameters`` has nothing to drop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    Strategy,
)

from training.config import ConfigError, RunConfig


@dataclass
class Launch:
    """Everything the Trainer needs to know about devices."""

    accelerator: str
    devices: int
    num_nodes: int
    precision: str
    strategy: Strategy | str


def resolve_accelerator(config: RunConfig) -> str:
    wanted = config.strategy.accelerator
    if wanted == "gpu" and not torch.cuda.is_available():
        raise ConfigError("strategy.accelerator: gpu requested but CUDA is not available")
    if wanted == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return wanted


def resolve_devices(config: RunConfig, accelerator: str) -> int:
    """Devices per node: the config, else the launcher's environment, else all GPUs / one CPU."""
    value = config.strategy.devices
    if value != "auto":
        try:
            return int(value)
        except ValueError as error:
            raise ConfigError(
                f"strategy.devices: expected auto or an integer, got {value!r}"
            ) from error
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):  # torchrun / srun set these
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return max(torch.cuda.device_count(), 1) if accelerator == "gpu" else 1


def resolve_precision(config: RunConfig, accelerator: str) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if accelerator == "gpu" else "32"


def deepspeed_config(config: RunConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config (Lightning fills precision, clipping and accumulation from the
    Trainer; setting them here too would conflict)."""
    zero: dict[str, Any] = {
        "stage": config.strategy.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "allgather_partitions": True,
        "reduce_bucket_size": 200_000_000,
        "allgather_bucket_size": 200_000_000,
    }
    if config.strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if config.strategy.offload_params:
        if config.strategy.zero_stage != 3:
            raise ConfigError(
                "strategy.offload_params: parameter offload needs strategy.zero_stage=3"
            )
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if config.strategy.zero_stage == 3:
        zero.update(
            stage3_gather_16bit_weights_on_model_save=False,  # export reads the shards instead
            stage3_param_persistence_threshold=100_000,
            sub_group_size=1_000_000_000,
        )
    return {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # our AdamW is torch's, which ZeRO handles fine
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "wall_clock_breakdown": False,
    }


def strategy_name(config: RunConfig, accelerator: str, devices: int) -> str:
    name = config.strategy.name
    if name == "auto":
        if accelerator == "gpu":
            return "deepspeed"
        multi = (
            devices * config.strategy.num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
        )
        return "ddp" if multi else "single"
    if name == "deepspeed" and accelerator != "gpu":
        raise ConfigError(
            "strategy.name: deepspeed runs on CUDA GPUs only (Lightning refuses CPU); use ddp on CPU"
        )
    return name


def build_launch(config: RunConfig) -> Launch:
    accelerator = resolve_accelerator(config)
    devices = resolve_devices(config, accelerator)
    precision = resolve_precision(config, accelerator)
    name = strategy_name(config, accelerator, devices)
    backend = config.strategy.backend
    if backend == "auto":
        backend = "nccl" if accelerator == "gpu" else "gloo"
    if name == "deepspeed":
        strategy: Strategy | str = DeepSpeedStrategy(
            config=deepspeed_config(config),
            process_group_backend=backend,
            exclude_frozen_parameters=True,
        )
    elif name == "ddp":
        strategy = DDPStrategy(
            process_group_backend=backend,
            gradient_as_bucket_view=True,
            find_unused_parameters=False,
        )
    else:
        if devices * config.strategy.num_nodes > 1:
            raise ConfigError("strategy.name: single needs strategy.devices=1 and num_nodes=1")
        device = torch.device("cuda", 0) if accelerator == "gpu" else torch.device("cpu")
        strategy = SingleDeviceStrategy(device=device)
    return Launch(accelerator, devices, config.strategy.num_nodes, precision, strategy)

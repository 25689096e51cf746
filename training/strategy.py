"""Pick accelerator, precision and distributed strategy from the run config.

GPU default: DeepSpeed ZeRO-2 (ZeRO-3 and CPU offload as options), DDP as the alternative. CPU: DDP
on gloo or a single process; ``strategy.name=deepspeed`` on a machine without a GPU runs DeepSpeed's
CPU accelerator on gloo (:class:`CPUDeepSpeedStrategy`), a test/debug mode that executes the GPU
default's code path (ZeRO partitioning, bf16 engine, sharded checkpoints), not a speed path. The frozen VAE and image
encoder are never part of the wrapped module (see training.module), so ZeRO neither partitions nor
casts them, and ``exclude_frozen_parameters`` has nothing to drop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning_fabric.utilities.seed import reset_seed
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


class MarkedDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed saves whose folder is marked complete (training.checkpoint_files.COMPLETE) once the
    last rank has written its shard: a run killed mid-save leaves an unmarked folder that
    ``resume: auto`` passes over. The marker lists what each rank reports it wrote (the engine's
    own file names, with sizes), gathered from the ranks rather than listed from the folder."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any = None) -> None:
        from pathlib import Path

        from training.checkpoint_files import DS_TAG, mark_complete

        filepath = self.broadcast(filepath)
        super().save_checkpoint(checkpoint, filepath, storage_options)
        folder = Path(filepath) / DS_TAG
        mine = self._own_files(folder)
        save_ema_shard = getattr(self.lightning_module, "save_ema_shard", None)
        if save_ema_shard is not None:  # each rank's weight EMA partition, listed by the marker
            ema = save_ema_shard(folder)
            mine += [ema] if ema is not None else []
        sizes = {path.name: path.stat().st_size for path in mine}
        per_rank = [sizes]
        if self.world_size > 1:
            per_rank = [{} for _ in range(self.world_size)]
            torch.distributed.all_gather_object(per_rank, sizes)
        if self.is_global_zero:
            mark_complete(filepath, per_rank)
        self.barrier("checkpoint-marked")

    def _own_files(self, folder) -> list:
        """The files DeepSpeed's engine wrote for this rank (named as the engine names them)."""
        from pathlib import Path

        engine, save_dir = self.deepspeed_engine, str(folder.parent)
        files = []
        if engine.save_non_zero_checkpoint:  # the model states: rank 0, or every rank (ZeRO-3)
            files.append(Path(engine._get_ckpt_name(save_dir, folder.name)))
        if engine.save_zero_checkpoint:  # this rank's optimizer partition
            files.append(Path(engine._get_zero_ckpt_name(save_dir, folder.name)))
        return files


class CPUDeepSpeedStrategy(MarkedDeepSpeedStrategy):
    """Lightning's DeepSpeed strategy on CPU processes (DeepSpeed's CPU accelerator, gloo).

    Lightning refuses a non-CUDA accelerator in ``setup_environment``, validates CUDA device indices
    in ``setup_distributed`` and hands DeepSpeed ``root_device.index`` (None on a CPU); these three
    points are all that differ. ``DS_ACCELERATOR=cpu`` must be set before DeepSpeed is imported
    (:func:`use_cpu_deepspeed`)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips the CUDA-only check

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)  # DeepSpeed reads the index as its rank

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        engine, ds_optimizer = super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        share_offload_staging(engine.optimizer)
        return engine, ds_optimizer


def share_offload_staging(optimizer: Any) -> int:
    """Bytes freed by dropping ZeRO-Offload's bf16 staging buffers on a CPU.

    After its CPU Adam step, ZeRO-Offload casts the fp32 master partition into a pinned host bf16
    buffer of the partition's size, then copies that into the device's bf16 weights. On a CPU the
    device's weights already are host memory: the buffer is a second copy of them (1.7 GB at
    sd21-base size). Pointing it at the weights' own partition makes the cast write in place and
    the copy a no-op."""
    buffers = getattr(optimizer, "param_buffer_of_bit16_for_cpu_offload_groups", None)
    if not getattr(optimizer, "cpu_offload", False) or not buffers:
        return 0
    import deepspeed.comm as dist

    freed = 0
    for i, buffer in enumerate(buffers):
        rank = dist.get_rank(group=optimizer.real_dp_process_group[i])
        weights = optimizer.parallel_partitioned_bit16_groups[i][rank]
        if weights.device.type != "cpu" or weights.shape != buffer.shape:
            continue
        freed += buffer.numel() * buffer.element_size()
        buffers[i] = weights
    return freed


def use_cpu_deepspeed() -> None:
    """Select DeepSpeed's CPU accelerator; an error if DeepSpeed already picked another."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if os.environ["DS_ACCELERATOR"] != "cpu":
        raise ConfigError(
            f"strategy.name: deepspeed without a GPU needs DS_ACCELERATOR=cpu, "
            f"got DS_ACCELERATOR={os.environ['DS_ACCELERATOR']}"
        )
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":  # detected before DS_ACCELERATOR was set
        from deepspeed.accelerator import set_accelerator
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    # DeepSpeed would JIT-compile its shared-memory all-reduce kernel at init (minutes of C++ on a
    # small machine, every rank racing for the build lock); gloo does the collectives instead.
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


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


def resolve_precision(config: RunConfig, accelerator: str, name: str = "") -> str:
    """``auto``: bf16 on GPUs and under DeepSpeed (whose engine then holds bf16 weights and fp32
    masters, on a CPU too), fp32 for CPU DDP / single."""
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if accelerator == "gpu" or name == "deepspeed" else "32"


def deepspeed_config(config: RunConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config (Lightning fills precision, clipping and accumulation from the
    Trainer; setting them here too would conflict)."""
    zero: dict[str, Any] = {
        "stage": config.strategy.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "allgather_partitions": True,
        # Elements per bucket. Gradients travel in fp32 (communication_data_type below) and
        # overlap_comm keeps two buckets: 2 x 25M x 4 B = 200 MB per rank.
        "reduce_bucket_size": 25_000_000,
        "allgather_bucket_size": 25_000_000,
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
        # Gradients are summed across ranks in fp32 even though the engine computes them in bf16
        # (8 mantissa bits lose small contributions when hundreds of ranks add up).
        "communication_data_type": "fp32",
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
    return name


def build_launch(config: RunConfig) -> Launch:
    accelerator = resolve_accelerator(config)
    devices = resolve_devices(config, accelerator)
    name = strategy_name(config, accelerator, devices)
    precision = resolve_precision(config, accelerator, name)
    backend = config.strategy.backend
    if backend == "auto":
        backend = "nccl" if accelerator == "gpu" else "gloo"
    if name == "deepspeed":
        if accelerator == "cpu":
            use_cpu_deepspeed()
        kind = MarkedDeepSpeedStrategy if accelerator == "gpu" else CPUDeepSpeedStrategy
        strategy: Strategy | str = kind(
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

"""Run configuration: typed dataclasses (the schema of the shared config system, models/config.py),
loaded from a documented YAML file plus ``key.sub=value`` command-line overrides. Unknown keys and
wrong types fail with the full dotted key in the message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from models.config import (
    COMMAND_LINE,
    ConfigError,
    Resolved,
    compose,
    label,
    overrides_layer,
    read_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["ConfigError", "RunConfig", "load_config", "resolve_config", "save_config"]


@dataclass
class ModelConfig:
    init: str = (
        "tiny"  # tiny | sd21-base | model folder | MVDream .pt | Isotropic3D .ckpt | run ckpt
    )
    seed: int = 0
    init_ema: bool = True
    grad_checkpointing: bool = False
    compile: bool = False


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    cached: bool = False
    resolution: int = 256
    batch_size: int = 4
    num_workers: int = 4
    prefetch_factor: int = 4
    shuffle_buffer: int = 200
    steps_per_epoch: int = 1000
    background: str = "random"
    exact_resume: bool = False
    seed: int = 0
    max_consecutive_skips: int = 50
    val_batches: int = 2


@dataclass
class TrainConfig:
    max_steps: int = 10000
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 500
    schedule: str = "cosine"
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0
    accumulate: int = 1
    cfg_dropout: float = 0.1
    multiview_ratio: float = 0.75
    precision: str = "auto"
    seed: int = 0


@dataclass
class Stage2Config:
    ref_timestep: str = "same"
    ref_camera: str = "zeros"
    ref_in_targets: bool = False
    ref_in_loss: bool = False
    ref_dropout: float = 0.0


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.9999
    update_every: int = 1
    start_step: int = 0


@dataclass
class StrategyConfig:
    name: str = "auto"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    backend: str = "auto"


@dataclass
class CheckpointConfig:
    every_n_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"


@dataclass
class LogConfig:
    logger: str = "tensorboard"
    wandb_project: str = "isotropic3d"
    every_n_steps: int = 10
    sample_every_n_steps: int = 1000
    sample_objects: int = 2
    sample_steps: int = 20
    guidance_scale: float = 5.0
    peak_tflops: float = 0.0
    progress_bar: bool = True
    val_every_n_steps: int = 0


@dataclass
class SlurmConfig:
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "48:00:00"
    constraint: str = ""
    cpus_per_task: int = 8
    extra: list[str] = field(default_factory=list)
    signal_seconds: int = 120


@dataclass
class RunConfig:
    stage: int = 1
    out: str = "outputs/finetune"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    ema: EmaConfig = field(default_factory=EmaConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


# Allowed values of the string choices; checked once after loading.
CHOICES: dict[str, tuple[Any, ...]] = {
    "stage": (1, 2),
    "data.background": ("random", "white", "black", "gray"),
    "train.schedule": ("constant", "cosine", "linear"),
    "train.precision": ("auto", "32", "bf16-mixed", "bf16-true", "16-mixed"),
    "stage2.ref_timestep": ("same", "zero"),
    "stage2.ref_camera": ("zeros", "true"),
    "strategy.name": ("auto", "deepspeed", "ddp", "single"),
    "strategy.zero_stage": (1, 2, 3),
    "strategy.accelerator": ("auto", "cpu", "gpu"),
    "strategy.backend": ("auto", "nccl", "gloo"),
    "log.logger": ("tensorboard", "wandb", "none"),
}
RANGES: dict[str, tuple[float, float]] = {
    "train.cfg_dropout": (0.0, 1.0),
    "train.multiview_ratio": (0.0, 1.0),
    "stage2.ref_dropout": (0.0, 1.0),
    "ema.decay": (0.0, 1.0),
    "data.resolution": (8, 4096),
    "data.batch_size": (1, 1 << 20),
    "data.max_consecutive_skips": (1, 1 << 30),
    "data.val_batches": (1, 1 << 20),
    "log.val_every_n_steps": (0, 1 << 30),
    # Counts and periods: a 0 would divide by zero or never fire, far into a run.
    "ema.update_every": (1, 1 << 30),
    "ema.start_step": (0, 1 << 30),
    "data.steps_per_epoch": (1, 1 << 30),
    "data.num_workers": (0, 1024),
    "data.prefetch_factor": (1, 1 << 10),
    "data.shuffle_buffer": (0, 1 << 30),
    "checkpoint.every_n_steps": (1, 1 << 30),
    "checkpoint.keep_last": (1, 1 << 20),
    "train.max_steps": (1, 1 << 40),
    "train.accumulate": (1, 1 << 20),
    "train.warmup_steps": (0, 1 << 40),
    "train.lr": (1e-12, 1.0),
    "train.min_lr_ratio": (0.0, 1.0),
    "train.grad_clip": (0.0, 1e9),
    "log.every_n_steps": (1, 1 << 30),
    "log.sample_every_n_steps": (0, 1 << 30),
    "log.sample_objects": (1, 1 << 10),
    "log.sample_steps": (1, 1 << 14),
    "strategy.num_nodes": (1, 1 << 16),
    "slurm.cpus_per_task": (1, 1 << 12),
    "slurm.signal_seconds": (10, 1 << 20),
}


def get_key(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _validate(config: RunConfig) -> None:
    for key, allowed in CHOICES.items():
        if get_key(config, key) not in allowed:
            raise ConfigError(f"{key}: {get_key(config, key)!r} is not one of {list(allowed)}")
    for key, (low, high) in RANGES.items():
        if not low <= get_key(config, key) <= high:
            raise ConfigError(f"{key}: {get_key(config, key)!r} is outside [{low}, {high}]")
    if len(config.train.betas) != 2:
        raise ConfigError(f"train.betas: expected two numbers, got {config.train.betas}")


def config_path(path: str | Path | None) -> Path | None:
    """A YAML path, or a config's name (``stage1-tiny``) meaning ``configs/<name>.yaml``."""
    named = ROOT / "configs" / f"{path}.yaml"
    if path and "/" not in str(path) and not Path(path).exists() and named.is_file():
        return named
    return Path(path) if path else None


def resolve_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: list[str] | tuple[str, ...] = (),
) -> tuple[RunConfig, Resolved]:
    """Defaults <- YAML ``path`` <- launcher ``flags`` (``--data``, ``--init``...: key=value) <-
    ``overrides``; type-checked and validated. Also returns where each value came from."""
    path = config_path(path)
    layers = [
        (label(path) if path else "", read_yaml(path) if path else None),
        ("launcher flag", overrides_layer(flags)),
        (COMMAND_LINE, overrides_layer(overrides)),
    ]
    resolved = compose(OmegaConf.structured(RunConfig), layers, "default (training/config.py)")
    config = OmegaConf.to_object(resolved.config)
    _validate(config)
    return config, resolved


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Load ``path`` (YAML; None = the built-in defaults), apply overrides, type-check, validate."""
    return resolve_config(path, overrides)[0]


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

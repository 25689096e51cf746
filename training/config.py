"""Run configuration: typed dataclasses, loaded from a documented YAML file plus ``key.sub=value``
command-line overrides. Unknown keys and wrong types fail with the full dotted key in the message."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


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
    every_n_steps: int = 10
    sample_every_n_steps: int = 1000
    sample_objects: int = 2
    sample_steps: int = 20
    guidance_scale: float = 5.0
    peak_tflops: float = 0.0
    progress_bar: bool = True
    val_every_n_steps: int = 0


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
    "train.warmup_steps": (0, 1 << 40),
    "train.lr": (1e-12, 1.0),
    "train.min_lr_ratio": (0.0, 1.0),
    "train.grad_clip": (0.0, 1e9),
    "log.every_n_steps": (1, 1 << 30),
    "log.sample_every_n_steps": (0, 1 << 30),
    "log.sample_objects": (1, 1 << 10),
    "log.sample_steps": (1, 1 << 14),
    "strategy.num_nodes": (1, 1 << 16),
}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # one URL / pattern given as a plain string
            value = [value] if value else []
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in the schema")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported schema type {hint!r}")


def _build(cls: type, values: Any, prefix: str = "") -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s): {where} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    for name, hint in hints.items():  # nested sections are built even when absent
        if name not in kwargs and dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, {}, f"{prefix}{name}.")
    return cls(**kwargs)


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


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (so 1e-4, true, [a, b])."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key.sub=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:  # e.g. a brace pattern: take it as the plain string it is
        value = raw
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Load ``path`` (YAML; None = the built-in defaults), apply overrides, type-check, validate."""
    tree: dict = {}
    named = Path(__file__).resolve().parents[1] / "configs" / f"{path}.yaml"
    if path and "/" not in str(path) and not Path(path).exists() and named.is_file():
        path = named  # a config's name (``stage1-tiny``) works as well as its path
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"config file not found: {path}") from error
    for assignment in overrides:
        apply_override(tree, assignment)
    config = _build(RunConfig, tree)
    _validate(config)
    return config


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

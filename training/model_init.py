"""Model initialisation: ``model.init`` (a preset, a model folder, a training checkpoint or
run, a published MVDream/Isotropic3D file) -> a model, and a checkpoint's UNet on its run's base
model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from models.bundle import MultiViewDiffusion, build_model, empty_model, load_model, save_model
from models.checkpoint_io import CheckpointError
from models.detect import DIFFUSERS_FOLDER, MODEL_FOLDER, load_diffusers_folder
from training.checkpoint_files import BASE_MODEL
from training.checkpoint_read import TrainingCheckpoint, read_checkpoint
from training.init_detect import DEEPSPEED, PRESET, RANDOM_PREFIX, TRAINING, detect_init

PRESETS = ("tiny", "sd21-base")


def run_folder(checkpoint: TrainingCheckpoint) -> Path:
    """The run folder of a checkpoint: next to its checkpoints/ folder, else the recorded out."""
    for parent in checkpoint.path.parents:
        if (parent / BASE_MODEL).is_dir():
            return parent
    return Path(checkpoint.run_config["out"])


def model_from_checkpoint(
    checkpoint: TrainingCheckpoint, use_ema: bool, base: str | Path | None = None
) -> MultiViewDiffusion:
    """The run's base model (frozen VAE/encoder) with the checkpoint's UNet (EMA or raw)."""
    model = load_model(base or run_folder(checkpoint) / BASE_MODEL)
    unet_state = model.unet.state_dict()
    weights = checkpoint.ema if use_ema and checkpoint.ema is not None else checkpoint.unet
    merged = {k: weights.get(k, v).float() for k, v in unet_state.items()}  # EMA: trained only
    unknown = sorted(set(checkpoint.unet) - set(unet_state))
    if unknown:
        raise CheckpointError(
            f"{checkpoint.path}: UNet tensors unknown to the base model ({len(unknown)}, e.g. "
            f"{unknown[:3]}): the checkpoint is of another architecture than its run's base_model"
        )
    missing = sorted(set(unet_state) - set(checkpoint.unet))
    if missing:
        raise CheckpointError(
            f"{checkpoint.path}: {len(missing)} of the UNet's {len(unet_state)} tensors are "
            f"missing (e.g. {missing[:3]}): an incomplete or hand-edited checkpoint"
        )
    model.unet.load_state_dict(merged)
    return model


def convert_once(target: Path, make, rank: int, timeout: float = 3600.0) -> Path:
    """Rank 0 writes the model folder ``target`` into a temporary folder renamed into place; the
    other ranks wait for it (polling the shared file system) instead of racing to write it."""
    if (target / "model.json").is_file():
        return target
    if rank == 0:
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        os.replace(tmp, target)
        return target
    deadline = time.monotonic() + timeout
    while not (target / "model.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"model.init: rank 0 did not finish writing {target}")
        time.sleep(1.0)
    return target


def is_preset(init: str) -> bool:
    """Whether ``model.init`` names a random init (built alike on every rank, no file read)."""
    init = init.removeprefix(RANDOM_PREFIX)
    return init in PRESETS or init.endswith((".yaml", ".yml"))


def resolve_init(
    init: str,
    seed: int,
    use_ema: bool = True,
    workdir: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> MultiViewDiffusion:
    """``model.init``, whatever training.init_detect finds it holds: a preset name (random
    init), our model folder, a diffusers folder, a training checkpoint of this stack (e.g. stage
    1 for stage 2), an MVDream / Isotropic3D state dict (converted by models.convert into
    ``workdir`` with the preset its shapes fit; MVDream brings no image encoder, so the open_clip
    weights come from the preset's pretrained tag), or any of these on the Hugging Face hub
    (``hf:org/name``). Conversions run once, on ``rank`` 0.

    With several ranks, only rank 0 reads a model folder's weights; the others build the model
    from its ``model.json`` alone and receive the weights by broadcast once the process group is
    up (:func:`broadcast_weights`): one read of the shared storage instead of one per rank."""
    load = load_model if rank == 0 or world_size == 1 else empty_model
    source = detect_init(init, PRESETS)
    path = source.path
    if source.kind == PRESET:
        model = build_model(source.preset, seed=seed)
        if model.image_encoder is not None:
            # A random encoder is not the pretrained one its preset names: save its weights with
            # the run (base_model) instead of pointing at the hub tag (no network on many nodes).
            model.preset["image_encoder"]["pretrained"] = None
            model.image_encoder.section["pretrained"] = None
        return model
    if source.kind == MODEL_FOLDER:
        return load(path)
    if source.kind == DIFFUSERS_FOLDER:
        return load_diffusers_folder(path)
    if source.kind == DEEPSPEED:  # shards merged once into a model folder (rank 0)
        target = (
            Path(workdir or path.parent) / f"imported-{path.name}-{'ema' if use_ema else 'fp32'}"
        )
        make = lambda tmp: save_model(  # noqa: E731
            model_from_checkpoint(read_checkpoint(path), use_ema), tmp, source={"init": str(path)}
        )
        return load(convert_once(target, make, rank))
    if source.kind == TRAINING:
        return model_from_checkpoint(read_checkpoint(path), use_ema)
    # A published checkpoint: converted once into the run folder, then loaded.
    from models.convert import convert

    target = Path(workdir or path.parent) / f"imported-{path.stem}"
    make = lambda tmp: convert(path, source.kind, tmp, preset=source.preset)  # noqa: E731
    return load(convert_once(target, make, rank))


def broadcast_weights(
    modules: list[torch.nn.Module | None], device: torch.device, bucket_bytes: int = 1 << 28
) -> int:
    """Every parameter and buffer of ``modules`` from rank 0 to all ranks, in place, in buckets of
    ``bucket_bytes`` (staged on ``device``: NCCL moves device tensors only). Bytes broadcast."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    tensors = [
        t
        for module in modules
        if module is not None
        for t in [*module.parameters(), *module.buffers()]
    ]
    sent, bucket, size = 0, [], 0
    for i, tensor in enumerate(tensors):
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
        last = i == len(tensors) - 1
        if size >= bucket_bytes or last or tensors[i + 1].dtype != tensor.dtype:
            with torch.no_grad():
                flat = _flatten_dense_tensors([t.data for t in bucket]).to(device)
                dist.broadcast(flat, src=0)
                for t, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                    t.data.copy_(value)
            sent, bucket, size = sent + size, [], 0
    return sent


def receive_initial_weights(module, device: torch.device) -> None:
    """Rank 0's initial weights (only it read them: :func:`resolve_init`) into a FineTuneModule on
    every rank, before any wrapper copies or partitions them; a weight EMA built from the weights
    before they came is built again."""
    from training.ema import WeightEMA

    broadcast_weights([module.unet, module.frozen.vae, module.frozen.image_encoder], device)
    if isinstance(module.weight_ema, WeightEMA):
        ema = module.config.ema
        module.weight_ema = WeightEMA(module.unet, ema.decay, ema.start_step)

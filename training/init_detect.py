"""What ``model.init`` names, found by reading it (never by its suffix).

    preset           tiny, sd21-base, random:<preset>, a preset YAML
    hf:org/name[/file][@revision]   a Hugging Face hub repository (models.hub), then as below
    model-folder     our model folder (model.json)
    diffusers-folder unet/ + vae/ component folders without model.json (models.detect)
    deepspeed        a DeepSpeed checkpoint folder of this stack
    training         a checkpoint file of this stack (a dict with run_config and the UNet weights)
    mvdream / isotropic3d   a published state dict in the LDM layout; the preset from its shapes
    a run or checkpoints/ folder: its newest complete checkpoint, then as above

Files are read weights-only (models.checkpoint_io); a file that is truncated, a zip that is not a
PyTorch save, or a checkpoint of ours missing its weights is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.checkpoint_io import SAFETENSORS, CheckpointError, file_kind, read_file, tensor_shapes
from models.convert import preset_for_shapes, published_format
from models.detect import folder_kind
from models.hub import HUB_PREFIX, resolve_hub
from training.checkpoint_files import BASE_MODEL, CHECKPOINTS, is_deepspeed_checkpoint
from training.checkpoint_read import check_training_checkpoint
from training.checkpoint_resolve import latest_checkpoint

PRESET, TRAINING, DEEPSPEED = "preset", "training", "deepspeed"
RANDOM_PREFIX = "random:"  # model.init=random:sd21-base: an explicit random init (debugging)
KINDS_HELP = (
    "a preset (tiny, random:sd21-base), our model folder (model.json), a diffusers folder (unet/, "
    "vae/), an MVDream .pt or Isotropic3D .ckpt, a training checkpoint, DeepSpeed checkpoint or "
    "run folder of this stack, or hf:org/name[@revision]"
)


@dataclass(frozen=True)
class InitSource:
    kind: str  # PRESET, TRAINING, DEEPSPEED, models.detect's folder kinds, mvdream, isotropic3d
    path: Path | None  # None for a preset
    preset: str | None = None  # PRESET: its name or YAML; published files: the preset they fit


class InitNotFound(CheckpointError, FileNotFoundError):
    """``model.init`` names no file or folder (a CheckpointError: a job reports it in one line)."""


def detect_init(init: str, presets: tuple[str, ...]) -> InitSource:
    """What ``init`` is; FileNotFoundError (missing) or CheckpointError (unusable) otherwise."""
    name = init.removeprefix(RANDOM_PREFIX)
    if name in presets or name.endswith((".yaml", ".yml")):
        return InitSource(PRESET, None, preset=name)
    path = resolve_hub(init) if init.startswith(HUB_PREFIX) else Path(init)
    if not path.exists():
        raise InitNotFound(f"model.init (INIT): {init} does not exist; it takes {KINDS_HELP}")
    if path.is_dir():
        return _detect_folder(path, init)
    return detect_file(path)


def _detect_folder(path: Path, init: str) -> InitSource:
    kind = folder_kind(path)
    if kind:
        return InitSource(kind, path)
    if is_deepspeed_checkpoint(path):
        return InitSource(DEEPSPEED, path)
    run = path.parent if path.name == CHECKPOINTS else path
    if (run / CHECKPOINTS).is_dir() or (run / BASE_MODEL).is_dir():
        latest = latest_checkpoint(run)
        if latest is None:
            raise FileNotFoundError(
                f"model.init (INIT): the run folder {run} has no complete checkpoint in "
                f"{run / CHECKPOINTS} yet"
            )
        return InitSource(DEEPSPEED, latest) if latest.is_dir() else detect_file(latest)
    raise CheckpointError(
        f"model.init (INIT): {init} is a folder that holds no model: expected model.json (our "
        "model folder), unet/ and vae/ (a diffusers folder), a DeepSpeed checkpoint "
        "(checkpoint/mp_rank_00_model_states.pt) or a run folder (checkpoints/)"
    )


def detect_file(path: Path) -> InitSource:
    """A training checkpoint of ours or a published MVDream/Isotropic3D state dict."""
    if file_kind(path) == SAFETENSORS:
        shapes = tensor_shapes(path)
    else:
        content = read_file(path)
        if isinstance(content, dict) and "run_config" in content:
            check_training_checkpoint(content, path)
            return InitSource(TRAINING, path)
        if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
            content = content["state_dict"]
        if not isinstance(content, dict):
            raise CheckpointError(f"{path} holds a {type(content).__name__}, not a state dict")
        shapes = {k: tuple(v.shape) for k, v in content.items() if hasattr(v, "shape")}
    fmt = published_format(shapes)
    if fmt is None:
        raise CheckpointError(
            f"{path} holds {len(shapes)} tensors in no layout model.init reads (e.g. "
            f"{', '.join(sorted(shapes)[:3]) or 'none'}): it takes {KINDS_HELP}"
        )
    return InitSource(fmt, path, preset=preset_for_shapes(shapes, fmt, str(path)))

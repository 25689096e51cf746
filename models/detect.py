"""What a weights file or folder holds, read from its content (never its name), and the preset
its shapes fit.

* our model folder: ``model.json`` (models/bundle.py);
* a diffusers folder: ``unet/`` + ``vae/`` (config.json + weights) without ``model.json``, e.g.
  the folders of ``make export`` copied on their own or a hub repository of them; the preset is
  rebuilt from the component configs (``scheduler/``, ``image_encoder/`` used when present);
* a published state dict in the original LDM layout: Isotropic3D when it holds an image tower
  (``cond_stage_model.model.visual.*``), MVDream otherwise; the preset is the one whose modules
  have exactly the file's key shapes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from models import layout
from models.bundle import (
    CONFIG_DIR,
    MultiViewDiffusion,
    build_model,
    check_preset,
    load_components,
    load_preset,
)
from models.cameras import CAMERA_DIM
from models.checkpoint_io import CheckpointError
from models.ldm_keys import UNET_PREFIX, VAE_PREFIX
from models.unet import UNET_KEYS
from models.vae import VAE_KEYS

MODEL_FOLDER = "model-folder"
DIFFUSERS_FOLDER = "diffusers-folder"
VISUAL_PREFIX = "cond_stage_model.model.visual."
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
)


def preset_names() -> list[str]:
    return sorted(p.stem.removeprefix("model_") for p in CONFIG_DIR.glob("model_*.yaml"))


def folder_kind(folder: Path) -> str | None:
    """``model-folder``, ``diffusers-folder`` or None (neither)."""
    if (folder / "model.json").is_file():
        return MODEL_FOLDER
    if all((folder / part / "config.json").is_file() for part in ("unet", "vae")):
        return DIFFUSERS_FOLDER
    return None


def published_format(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """``isotropic3d``, ``mvdream`` or None for a state dict's ``{key: shape}``."""
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        return None
    if not any(k.startswith(VAE_PREFIX) for k in shapes):
        return None
    return "isotropic3d" if any(k.startswith(VISUAL_PREFIX) for k in shapes) else "mvdream"


@functools.cache
def _expected_shapes(preset: str, fmt: str) -> dict[str, tuple[int, ...]]:
    from models.convert import export_checkpoint  # convert imports this module's callers

    model = build_model(preset, device="meta", with_image_encoder=fmt == "isotropic3d")
    return {k: tuple(v.shape) for k, v in export_checkpoint(model, fmt).items()}


def preset_for_shapes(shapes: dict[str, tuple[int, ...]], fmt: str, where: str) -> str:
    """The preset whose UNet, VAE (and, for Isotropic3D, image tower) have exactly the file's
    tensor shapes; a :class:`CheckpointError` naming the closest one's first difference."""
    prefixes = (UNET_PREFIX, VAE_PREFIX, *((VISUAL_PREFIX,) if fmt == "isotropic3d" else ()))
    found = {k: v for k, v in shapes.items() if k.startswith(prefixes)}
    misses = {}
    for name in preset_names():
        expected = _expected_shapes(name, fmt)
        differ = sorted(
            k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k)
        )
        if not differ:
            return name
        misses[name] = differ
    closest = min(misses, key=lambda n: len(misses[n]))
    key = misses[closest][0]
    expected = _expected_shapes(closest, fmt).get(key)
    raise CheckpointError(
        f"{where}: the {fmt} weights fit no model preset ({', '.join(misses)}); closest "
        f"{closest}, {len(misses[closest])} tensors differ, e.g. {key}: file "
        f"{shapes.get(key, 'absent')}, preset {expected or 'absent'}. Add a "
        "configs/model_<name>.yaml with this architecture"
    )


def _config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read as JSON ({error})") from error


def _matching_preset(unet: dict[str, Any]) -> str | None:
    for name in preset_names():
        if load_preset(name)["unet"] == unet:
            return name
    return None


def diffusers_preset(folder: Path) -> tuple[dict[str, Any], Path | None]:
    """The preset a diffusers folder's component configs describe, and the folder of its
    open_clip weights (None: the preset's pretrained tag). Sampling defaults and the camera convention are
    the matching preset's (sd21-base's when no preset has this UNet)."""
    config = _config(folder / "unet" / "config.json")
    if (
        config.get("class_embed_type") != "projection"
        or config.get("projection_class_embeddings_input_dim") != CAMERA_DIM
    ):
        raise CheckpointError(
            f"{folder / 'unet'} is a UNet without the multi-view camera MLP (class_embed_type "
            f"{config.get('class_embed_type')!r}, not a {CAMERA_DIM}-input projection): not a "
            "model of this stack (convert MVDream's original .pt instead)"
        )
    unet = {k: config[k] for k in UNET_KEYS if k in config}
    base_name = _matching_preset(unet)
    preset = load_preset(base_name or "sd21-base")
    preset["unet"] = unet
    vae = _config(folder / "vae" / "config.json")
    preset["vae"] = {k: vae[k] for k in (*VAE_KEYS, "scaling_factor") if k in vae}
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        preset["schedule"] = {k: v for k, v in _config(scheduler).items() if k in SCHEDULE_KEYS}
    if base_name is None:
        levels = len(preset["vae"]["block_out_channels"]) - 1
        preset["sampling"]["image_size"] = int(unet["sample_size"]) * 2**levels
    encoder_config = folder / "image_encoder" / layout.OPEN_CLIP_CONFIG
    weights = folder / "image_encoder" / layout.OPEN_CLIP_WEIGHTS
    if encoder_config.is_file():
        clip = _config(encoder_config)
        tag = clip.get(layout.TAG, {})
        model_cfg = clip.get("model_cfg", {})
        preset["image_encoder"] = {
            "model_name": tag.get("model_name"),
            "pretrained": None if weights.is_file() else tag.get("pretrained"),
            "embed_dim": None if tag.get("model_name") else model_cfg.get("embed_dim"),
            "vision": None if tag.get("model_name") else model_cfg.get("vision_cfg"),
        }
    try:
        preset = check_preset(preset, str(folder))
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f"{folder}: the component configs do not make a model ({error})"
        ) from error
    return preset, weights.parent if encoder_config.is_file() and weights.is_file() else None


def load_diffusers_folder(folder: str | Path) -> MultiViewDiffusion:
    folder = Path(folder)
    preset, encoder_weights = diffusers_preset(folder)
    if encoder_weights is None and not preset["image_encoder"].get("pretrained"):
        raise CheckpointError(
            f"{folder} has no image encoder weights (image_encoder/{layout.OPEN_CLIP_WEIGHTS}) "
            "and its preset names no pretrained ones: copy the image_encoder/ folder of the "
            "export beside unet/ and vae/"
        )
    try:
        return load_components(folder, preset, encoder_weights, source={"init": str(folder)})
    except (ValueError, FileNotFoundError) as error:
        raise CheckpointError(f"{folder}: {error}") from error

"""What a folder holds, read from its content (never its name).

* our model folder: ``model.json`` (models/bundle.py);
* a diffusers folder: ``unet/`` + ``vae/`` (config.json + weights) without ``model.json``, e.g.
  the folders of ``make export`` copied on their own or a hub repository of them; the preset is
  rebuilt from the component configs (``scheduler/``, ``image_encoder/`` used when present);
* a published state dict in the original LDM layout: models.convert (``published_format``,
  ``preset_for_shapes``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models import layout
from models.bundle import (
    CONFIG_DIR,
    MultiViewDiffusion,
    check_preset,
    load_components,
    load_preset,
)
from models.cameras import CAMERA_DIM
from models.checkpoint_io import CheckpointError
from models.unet import UNET_KEYS
from models.vae import VAE_KEYS

MODEL_FOLDER = "model-folder"
DIFFUSERS_FOLDER = "diffusers-folder"
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
    if vae.get("latent_channels", 4) != 4:  # presets name only a non-SD latent width
        preset["vae"]["latent_channels"] = int(vae["latent_channels"])
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

"""Component folders of a model folder, each in its ecosystem's own format.

    unet/           config.json + diffusion_pytorch_model.safetensors  (diffusers UNet2DConditionModel)
    vae/            config.json + diffusion_pytorch_model.safetensors  (diffusers AutoencoderKL)
    scheduler/      scheduler_config.json                              (diffusers DDPMScheduler)
    image_encoder/  open_clip_config.json + open_clip_model.safetensors (open_clip ``local-dir:``)

diffusers' ``UNet2DConditionModel.from_pretrained("unet")`` loads the UNet with its default
attention (views attend separately); ``MultiViewUNet.from_pretrained`` restores the joint
multi-view attention. open_clip's format is a whole CLIP model: the image encoder has no text tower,
so the file carries a zero-weight placeholder one (753 numbers) that lets open_clip load it strictly;
its text embeddings mean nothing. A preset whose encoder weights are open_clip's pretrained tag
gets the config only (the weights are the tag's: ``open_clip.create_model(name, pretrained=tag)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file, save_file

from models.image_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    ImageEncoder,
    vision_settings,
    visual_state_dict,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
# The smallest text tower open_clip builds: a placeholder so the file loads as a whole CLIP model.
PLACEHOLDER_TEXT = {
    "context_length": 1,
    "vocab_size": 1,
    "width": 8,
    "heads": 1,
    "layers": 1,
    "mlp_ratio": 1.0,
}
TAG = "isotropic3d"  # metadata tag of every tensor file written here


def save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # fp32 and contiguous; no extra copy, so converting a 6 GB checkpoint does not double RAM.
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes the metadata map in hash order, so two keys made
    # the bytes differ between saves of the same weights, and the eval fingerprint refused a rerun.
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_diffusers(module: Any, state: dict[str, torch.Tensor], folder: Path) -> None:
    """A diffusers model's ``config.json`` and ``state`` as its safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    module.save_config(folder)
    save_tensors(state, folder / WEIGHTS)


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS} (an incomplete model folder)")
    return load_file(str(path))


def open_clip_config(encoder: ImageEncoder, with_weights: bool) -> dict[str, Any]:
    """open_clip's ``open_clip_config.json`` for the encoder: with our weights, the placeholder
    text tower; without (a pretrained tag), the named model's own."""
    section = encoder.section
    embed_dim, vision = vision_settings(section)
    text = PLACEHOLDER_TEXT
    if section.get("model_name") and not with_weights:
        text = open_clip.get_model_config(section["model_name"]).get("text_cfg", text)
    return {
        "model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text},
        "preprocess_cfg": {
            "size": encoder.image_size,
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        TAG: {
            "model_name": section.get("model_name"),
            "pretrained": section.get("pretrained"),
            "text_tower": "zero placeholder" if with_weights else "the pretrained tag's",
        },
    }


def write_open_clip(encoder: ImageEncoder, folder: Path, with_weights: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip_config(encoder, with_weights)
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    weights = folder / OPEN_CLIP_WEIGHTS
    if not with_weights:
        weights.unlink(missing_ok=True)  # stale weights from an earlier save would shadow the tag
        return
    state = {f"visual.{k}": v for k, v in encoder.visual.state_dict().items()}
    with torch.device("meta"):
        shapes = CLIP(**config["model_cfg"]).state_dict()
    state |= {k: torch.zeros(v.shape) for k, v in shapes.items() if not k.startswith("visual.")}
    save_tensors(state, weights)


def read_open_clip_visual(folder: Path) -> dict[str, torch.Tensor]:
    """The vision tower's tensors of an ``image_encoder/`` folder written above."""
    return visual_state_dict(load_file(str(folder / OPEN_CLIP_WEIGHTS)))

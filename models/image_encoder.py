"""Frozen open_clip image encoder: the pooled, projected image embedding as one context token.

Preprocessing (docs/design.md, section 3): RGBA is composited on white, the shorter side is
resized to the tower's input size (224 for ViT-H-14) with bicubic as Isotropic3D's embedder does it
(kornia's antialiased resize), centre-cropped, then normalised with the CLIP mean/std. Only the vision tower is built;
a full open_clip checkpoint's text tower is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import nn

from models.checkpoint_io import load_state_dict_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ENV_CHECKPOINT = "ISOTROPIC3D_OPENCLIP_CHECKPOINT"  # local open_clip file used before the hub


def vision_settings(section: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(embed_dim, vision_cfg) for a preset's ``image_encoder`` section: a named open_clip model or
    an explicit tower (``embed_dim`` + ``vision``, the tiny test encoder)."""
    name = section.get("model_name")
    if name:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(f"image_encoder.model_name: unknown open_clip model {name!r}")
        return cfg["embed_dim"], dict(cfg["vision_cfg"])
    for key in ("embed_dim", "vision"):
        if key not in section:
            raise ValueError(
                f"image_encoder.{key} is required when image_encoder.model_name is null"
            )
    return int(section["embed_dim"]), dict(section["vision"])


class ImageEncoder(nn.Module):
    """``encode(images01) -> [B,1,D]``; ``unconditional(B) -> zeros [B,1,D]``."""

    def __init__(self, section: dict[str, Any]):
        super().__init__()
        self.section = dict(section)
        self.embed_dim, vision_cfg = vision_settings(section)
        self.image_size = int(vision_cfg["image_size"])
        self.visual = _build_vision_tower(self.embed_dim, CLIPVisionCfg(**vision_cfg))
        self.register_buffer(
            "mean", torch.tensor(CLIP_MEAN, device="cpu").view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(CLIP_STD, device="cpu").view(1, 3, 1, 1), persistent=False
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        return super().train(False)  # frozen: always in eval mode

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3|4,H,W] in [0,1] -> normalised [B,3,S,S] (RGBA composited on white)."""
        if images.ndim != 4 or images.shape[1] not in (3, 4):
            raise ValueError(f"expected [B,3|4,H,W] images, got {tuple(images.shape)}")
        images = images.float()  # resize and normalise in fp32 whatever the tower's dtype
        if images.shape[1] == 4:
            rgb, alpha = images[:, :3], images[:, 3:]
            images = rgb * alpha + (1.0 - alpha)
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (
            max(self.image_size, round(height * scale)),
            max(self.image_size, round(width * scale)),
        )
        if size != (height, width):
            images = resize_bicubic(images, size)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        images = images[..., top : top + self.image_size, left : left + self.image_size]
        return (images.clamp(0, 1) - self.mean.float()) / self.std.float()

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """Pooled projected embedding as one context token, [B,1,D]."""
        param = next(self.visual.parameters())
        pixels = self.preprocess(images01.to(param.device)).to(param.dtype)
        return self.visual(pixels).unsqueeze(1)

    def unconditional(self, batch_size: int) -> torch.Tensor:
        param = next(self.visual.parameters())
        return torch.zeros(batch_size, 1, self.embed_dim, device=param.device, dtype=param.dtype)


def resize_bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``kornia.geometry.resize(x, size, "bicubic", align_corners=True, antialias=True)``, the
    resize of Isotropic3D's image embedder: a Gaussian blur sized to the scale factor, then
    bicubic with aligned corners (kernel sizes made odd as kornia does)."""
    factors = (images.shape[-2] / size[0], images.shape[-1] / size[1])
    sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
    kernel = [int(max(4.0 * s, 3)) | 1 for s in sigmas]
    images = TF.gaussian_blur(images, kernel_size=kernel[::-1], sigma=sigmas[::-1])  # (x, y)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=True)


def visual_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision-tower tensors of an open_clip (or vision-only) state dict, without ``visual.``."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return state


def resolve_pretrained_file(model_name: str, pretrained: str) -> Path:
    """Local file for ``pretrained`` (a path, $ISOTROPIC3D_OPENCLIP_CHECKPOINT, or the hub tag)."""
    for candidate in (pretrained, os.environ.get(ENV_CHECKPOINT)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise FileNotFoundError(
            f"image encoder: {pretrained!r} is neither a file nor an open_clip tag of {model_name}"
        )
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as error:  # hub/network errors come in many types
        raise RuntimeError(
            f"cannot fetch open_clip {model_name} weights {pretrained!r} ({type(error).__name__}: "
            f"{error}). Offline: download the open_clip checkpoint (e.g. "
            f"open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and pass its "
            f"path (--image-encoder / load_model(image_encoder_checkpoint=...)) or set {ENV_CHECKPOINT}"
        ) from error


def load_pretrained_weights(encoder: ImageEncoder, model_name: str, pretrained: str) -> None:
    """Fill ``encoder`` with pretrained open_clip weights (strict; never unpickles code)."""
    path = resolve_pretrained_file(model_name, pretrained)
    state = visual_state_dict(load_state_dict_file(path))
    encoder.visual.load_state_dict(state, strict=True, assign=True)
    encoder.requires_grad_(False)

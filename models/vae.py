"""The latent autoencoder: diffusers ``AutoencoderKL`` behind an encode/decode pair that speaks
[-1, 1] images and latents already multiplied by the SD scale factor (0.18215)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn

from models.keys import check_keys

VAE_KEYS = ("block_out_channels", "layers_per_block", "norm_num_groups", "sample_size")


def vae_config(section: dict[str, Any]) -> dict[str, Any]:
    """Full diffusers config from a preset's ``vae`` section (SD VAE layout otherwise)."""
    check_keys(section, VAE_KEYS, "vae config", optional=("scaling_factor", "latent_channels"))
    levels = len(section["block_out_channels"])
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent_channels(section),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(section["block_out_channels"]),
        "layers_per_block": int(section["layers_per_block"]),
        "norm_num_groups": int(section["norm_num_groups"]),
        "sample_size": int(section["sample_size"]),
        "scaling_factor": float(section.get("scaling_factor", 0.18215)),
    }


def latent_channels(section: dict[str, Any]) -> int:
    """Channels of a preset's latents (its ``vae.latent_channels``; SD's 4 when absent): the
    UNet's input and output channels follow it."""
    return int(section.get("latent_channels", 4))


class LatentVAE(nn.Module):
    """Frozen-by-default wrapper; ``model`` is the diffusers ``AutoencoderKL``."""

    def __init__(self, model: AutoencoderKL):
        super().__init__()
        self.model = model
        self.scaling_factor = float(model.config.scaling_factor)
        self.downsample = 2 ** (len(model.config.block_out_channels) - 1)

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> LatentVAE:
        return cls(AutoencoderKL.from_config(vae_config(section)))

    def encode(
        self,
        images_m11: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> scaled latents [B,C,H/f,W/f] (C = ``latent_channels``). ``sample=True`` draws from the
        posterior (what LDM/MVDream training does); ``False`` takes its mean. ``noise`` (standard
        normal, the latents' shape) is the posterior draw when given (per-object seeding)."""
        dist = self.model.encode(images_m11.to(self.model.dtype)).latent_dist
        if noise is not None:
            latents = dist.mean + dist.std * noise.to(dist.mean)
        else:
            latents = dist.sample(generator) if sample else dist.mode()
        return latents * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in about [-1,1] (not clamped)."""
        latents = latents.to(self.model.dtype) / self.scaling_factor
        return self.model.decode(latents, return_dict=False)[0]

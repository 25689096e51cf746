"""The multi-view UNet: diffusers' ``UNet2DConditionModel`` with joint multi-view self-attention
and MVDream's camera MLP.

The camera MLP is diffusers' ``class_embedding`` of type ``"projection"``: ``Linear(16, 4C) - SiLU -
Linear(4C, 4C)``, whose output is added to the timestep embedding, exactly MVDream's
``camera_embed``. ``camera=None`` skips it (MVDream's behaviour without a camera).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel

from models.attention import MultiViewAttnProcessor
from models.cameras import CAMERA_DIM
from models.keys import check_keys

# Keys of a preset's ``unet`` section passed to diffusers; the rest is fixed below.
UNET_KEYS = (
    "sample_size",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
)


def unet_config(section: dict[str, Any], latent_channels: int = 4) -> dict[str, Any]:
    """Full diffusers config from a preset's ``unet`` section (SD2.1-style fixed choices) for
    latents of ``latent_channels`` channels (the preset's VAE's)."""
    check_keys(section, UNET_KEYS, "unet config")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in section.items()}
    config.update(
        in_channels=latent_channels,
        out_channels=latent_channels,
        use_linear_projection=True,  # SD2.x / MVDream: linear proj_in/proj_out
        flip_sin_to_cos=True,  # LDM timestep_embedding is cat([cos, sin])
        freq_shift=0,
        class_embed_type="projection",  # the camera MLP
        projection_class_embeddings_input_dim=CAMERA_DIM,
        upcast_attention=False,
    )
    return config


class MultiViewUNet(UNet2DConditionModel):
    """``forward(x, t, context, camera, num_views)`` on object-major ``(b v)`` batches."""

    @classmethod
    def from_config(cls, config: Any = None, **kwargs: Any) -> Any:
        # from_pretrained goes through here too, so every instance gets multi-view attention.
        out = super().from_config(config, **kwargs)
        model = out[0] if isinstance(out, tuple) else out
        model.set_attn_processor(MultiViewAttnProcessor())
        return out

    def get_class_embed(
        self, sample: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor | None:
        if class_labels is None:  # no camera: time embedding only
            return None
        return super().get_class_embed(sample=sample, class_labels=class_labels)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        camera: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        """Predict noise. ``x`` [(b v),4,h,w], ``t`` [(b v)] or scalar, ``context`` [(b v),L,D],
        ``camera`` [(b v),16] or None; ``num_views`` views per object share self-attention."""
        if x.shape[0] % num_views:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_views={num_views}")
        if camera is not None:
            camera = camera.to(x.dtype)
        return super().forward(
            x,
            t,
            encoder_hidden_states=context,
            class_labels=camera,
            cross_attention_kwargs={"num_views": int(num_views)},
            return_dict=False,
        )[0]


def build_unet(section: dict[str, Any], latent_channels: int = 4) -> MultiViewUNet:
    """Random-init multi-view UNet from a preset's ``unet`` section."""
    return MultiViewUNet.from_config(unet_config(section, latent_channels))

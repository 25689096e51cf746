"""Multi-view attention processor for diffusers' ``Attention`` modules.

Batches are object-major, ``(b v)``. Self-attention (no encoder states) runs jointly over the
tokens of all ``num_views`` views of one object, ``(b v) l c -> b (v l) c``, as in MVDream's
``BasicTransformerBlock3D``; cross-attention stays per view. Because the q/k/v projections are
per-token, regrouping the tokens before the projections is the same as regrouping q/k/v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


class MultiViewAttnProcessor:
    """Scaled-dot-product attention; joint over the views of each object for self-attention."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor does not support attention masks")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # conv-style [B,C,H,W] input (not used by the SD UNet, kept general)
            spatial = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_self = encoder_hidden_states is None
        frames, tokens, _ = hidden_states.shape
        joint = is_self and num_views > 1
        if joint:
            if frames % num_views:
                raise ValueError(f"batch of {frames} frames is not a multiple of {num_views} views")
            hidden_states = hidden_states.reshape(frames // num_views, num_views * tokens, -1)
        if is_self:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        batch = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if joint:
            hidden_states = hidden_states.reshape(frames, tokens, -1)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(spatial)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

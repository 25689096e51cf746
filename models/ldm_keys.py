"""Key maps between the original LDM layout (MVDream / Isotropic3D) and our diffusers modules.

Import goes through diffusers' own LDM converters (``convert_ldm_unet_checkpoint`` /
``convert_ldm_vae_checkpoint``). To learn *which* original key lands where without touching the
multi-GB tensors, they are run once on one-element stand-ins whose value is the key's index; the
result is a plain ``{ldm_key: diffusers_key}`` map. Export uses explicit reverse rules (the layout
of diffusers' ``convert_diffusers_to_original_stable_diffusion`` script, generalised to any block
count), so a round trip checks the two independent directions against each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# MVDream's camera MLP has the layout diffusers expects of an LDM ``label_emb`` projection.
_CAMERA_TO_LABEL = ("camera_embed.", "label_emb.0.")


def _trace_map(
    ldm_shapes: Mapping[str, tuple[int, ...]],
    prefix: str,
    convert: Callable[[dict[str, torch.Tensor]], dict[str, Any]],
    rename: Callable[[str], str] = lambda k: k,
) -> dict[str, str]:
    keys = sorted(ldm_shapes)
    stand_ins = {
        prefix + rename(k): torch.full([1] * len(ldm_shapes[k]), float(i), dtype=torch.float64)
        for i, k in enumerate(keys)
    }
    converted = convert(stand_ins)
    mapping: dict[str, str] = {}
    for diffusers_key, value in converted.items():
        if value is None:
            raise KeyError(f"diffusers converter expected an original key for {diffusers_key}")
        ldm_key = keys[int(value.reshape(-1)[0])]
        if ldm_key in mapping:
            raise KeyError(f"{ldm_key} maps to both {mapping[ldm_key]} and {diffusers_key}")
        mapping[ldm_key] = diffusers_key
    unmapped = sorted(set(keys) - set(mapping))
    if unmapped:
        raise KeyError(f"{len(unmapped)} original keys have no diffusers target: {unmapped[:5]}")
    return mapping


def unet_import_map(
    ldm_shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]
) -> dict[str, str]:
    """``{key without model.diffusion_model.: diffusers UNet key}`` for all given UNet keys."""

    def rename(key: str) -> str:
        old, new = _CAMERA_TO_LABEL
        return new + key[len(old) :] if key.startswith(old) else key

    return _trace_map(
        ldm_shapes, UNET_PREFIX, lambda sd: convert_ldm_unet_checkpoint(sd, dict(config)), rename
    )


def vae_import_map(
    ldm_shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]
) -> dict[str, str]:
    """``{key without first_stage_model.: diffusers AutoencoderKL key}``."""
    return _trace_map(
        ldm_shapes, VAE_PREFIX, lambda sd: convert_ldm_vae_checkpoint(sd, dict(config))
    )


# --- export: diffusers -> original names -------------------------------------------------

_UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "class_embedding.linear_1": "camera_embed.0",
    "class_embedding.linear_2": "camera_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _rename_parts(rest: str, table: Iterable[tuple[str, str]]) -> str:
    head, _, leaf = rest.partition(".")
    for new, old in table:
        if head == new:
            return f"{old}.{leaf}"
    return rest


def unet_export_name(key: str, config: Mapping[str, Any]) -> str:
    """Original name (without model.diffusion_model.) of one diffusers UNet key."""
    layers = int(config["layers_per_block"])
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    module, _, leaf = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = (layers + 1) * block + j + 1
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_rename_parts(rest, _UNET_RESNET)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(layers + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = (layers + 1) * block + j
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_rename_parts(rest, _UNET_RESNET)}"
        return f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        block = int(m[1])
        slot = 2 if up_has_attn[block] else 1
        return f"output_blocks.{(layers + 1) * block + layers}.{slot}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_parts(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    raise KeyError(f"no original name for UNet key {key}")


_VAE_ATTN = [
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out", "proj_out"),
]
_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]


def vae_export_name(key: str, config: Mapping[str, Any]) -> str:
    """Original name (without first_stage_model.) of one diffusers AutoencoderKL key."""
    levels = len(config["block_out_channels"])
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    part, _, rest = key.partition(".")
    module, _, leaf = rest.rpartition(".")
    if module in ("conv_in", "conv_out"):
        return key
    if module == "conv_norm_out":
        return f"{part}.norm_out.{leaf}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        block = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        return f"{part}.{m[1]}.{block}.block.{m[3]}.{_rename_parts(m[4], _VAE_RESNET)}"
    if m := re.fullmatch(
        r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)", rest
    ):
        block = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        sampler = "downsample" if m[1] == "down" else "upsample"
        return f"{part}.{m[1]}.{block}.{sampler}.conv.{m[4]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{_rename_parts(m[2], _VAE_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        inner = m[1].replace("to_out.0.", "to_out.")
        return f"{part}.mid.attn_1.{_rename_parts(inner, _VAE_ATTN)}"
    raise KeyError(f"no original name for VAE key {key}")


def reshape_like(tensor: torch.Tensor, shape: tuple[int, ...], key: str) -> torch.Tensor:
    """``tensor`` viewed as ``shape``; only trailing singleton dims may differ (1x1 conv vs
    linear attention weights of the VAE). Anything else is a mismatch error."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    a, b = tuple(tensor.shape), tuple(shape)
    short, long = (a, b) if len(a) < len(b) else (b, a)
    if long[: len(short)] == short and all(d == 1 for d in long[len(short) :]):
        return tensor.reshape(shape)
    raise ValueError(f"shape mismatch for {key}: checkpoint {a} vs model {b}")

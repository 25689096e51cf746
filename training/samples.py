"""Turn one raw shard sample (bytes per member, schema in docs/ARCHITECTURE.md) into training
tensors: one azimuth-orthogonal quadruple of views plus one reference view, RGBA composited on a
background chosen at load time. Raw-image and latent-cache samples give the same batch layout."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.cameras import camera_embedding

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}


class CorruptSample(ValueError):
    """A sample that cannot be used; the stream skips and counts it."""


@dataclass(frozen=True)
class ViewChoice:
    """Which views of an object one training sample uses."""

    quad: list[int]
    ref: int


def read_meta(sample: dict) -> dict:
    try:
        meta = json.loads(sample["meta.json"])
        cameras = np.load(io.BytesIO(sample["cameras.npy"]), allow_pickle=False)
    except KeyError as error:
        raise CorruptSample(f"{sample.get('__key__')}: missing member {error}") from error
    except (ValueError, OSError) as error:
        raise CorruptSample(f"{sample.get('__key__')}: unreadable meta/cameras: {error}") from error
    if cameras.ndim != 3 or cameras.shape[1:] != (4, 4) or not np.isfinite(cameras).all():
        raise CorruptSample(f"{sample.get('__key__')}: cameras.npy has shape {cameras.shape}")
    quads = [list(map(int, q)) for q in meta.get("quads", [])]
    views = cameras.shape[0]
    if not quads or any(len(q) != 4 or not all(0 <= i < views for i in q) for q in quads):
        raise CorruptSample(f"{sample.get('__key__')}: no valid quadruple in meta.json")
    if any(not 0 <= int(i) < views for i in meta.get("refs", [])):
        raise CorruptSample(f"{sample.get('__key__')}: reference index out of range")
    try:  # the angles, for samplers that take (elevation, azimuth) rather than matrices
        meta["_angles"] = torch.tensor(
            [meta["elevation_deg"], meta["azimuth_deg"]], dtype=torch.float32
        ).T.reshape(views, 2)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CorruptSample(f"{sample.get('__key__')}: bad elevation/azimuth lists") from error
    meta["_cameras"] = torch.from_numpy(cameras.astype(np.float32))
    meta["_quads"] = quads
    return meta


def choose_views(meta: dict, rng: random.Random, ref_in_targets: bool) -> ViewChoice:
    """Pick one quadruple and one reference. The reference comes from the random-pose ``refs``
    unless ``ref_in_targets`` (stage-2 policy) asks for one of the target views."""
    quad = rng.choice(meta["_quads"])
    refs = [int(i) for i in meta.get("refs", [])]
    if ref_in_targets or not refs:
        return ViewChoice(quad, rng.choice(quad))
    return ViewChoice(quad, rng.choice(refs))


def background_colour(mode: str, rng: random.Random) -> tuple[float, float, float]:
    if mode == "random":  # one random colour per object, shared by its target views
        return (rng.random(), rng.random(), rng.random())
    return BACKGROUNDS[mode]


def decode_rgba(sample: dict, index: int, resolution: int) -> torch.Tensor:
    """View ``index`` as premultiplied RGBA float ``[4,H,W]`` in [0,1] at ``resolution``."""
    name = f"{index:03d}.png"
    if name not in sample:
        raise CorruptSample(f"{sample.get('__key__')}: missing {name}")
    try:
        with Image.open(io.BytesIO(sample[name])) as image:
            array = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except Exception as error:  # PIL raises many types on truncated or garbage data
        raise CorruptSample(f"{sample.get('__key__')}: {name} does not decode: {error}") from error
    rgba = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
    rgba[:3] *= rgba[3:]  # premultiply so resizing does not bleed the hidden colour into edges
    if rgba.shape[-1] != resolution or rgba.shape[-2] != resolution:
        rgba = F.interpolate(
            rgba[None], size=(resolution, resolution), mode="bilinear", antialias=True
        )[0]
    return rgba


def composite(rgba: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """Premultiplied RGBA ``[...,4,H,W]`` over a solid colour -> RGB in [0,1]."""
    bg = torch.tensor(colour, dtype=rgba.dtype).view(3, 1, 1)
    return (rgba[..., :3, :, :] + (1 - rgba[..., 3:, :, :]) * bg).clamp(0, 1)


def image_sample(
    sample: dict, rng: random.Random, resolution: int, background: str, ref_in_targets: bool
) -> dict:
    """Raw shard sample -> views ``[4,3,H,W]`` in [-1,1], cameras ``[4,16]``, reference image
    (same background, [-1,1]) and reference on white in [0,1] for the CLIP encoder."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    colour = background_colour(background, rng)
    views = torch.stack([decode_rgba(sample, i, resolution) for i in choice.quad])
    ref = decode_rgba(sample, choice.ref, resolution)
    cameras = camera_embedding(meta["_cameras"])
    return {
        "key": sample["__key__"],
        "views": composite(views, colour) * 2 - 1,
        "cameras": cameras[choice.quad],
        "ref_image": composite(ref, colour) * 2 - 1,
        "ref_clip": composite(ref, BACKGROUNDS["white"]),
        "ref_camera": cameras[choice.ref],
        "angles": meta["_angles"][choice.quad],
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def cached_sample(sample: dict, rng: random.Random, ref_in_targets: bool) -> dict:
    """Latent-cache sample (written by training.latent_cache) -> the same layout with latents
    ``[4,4,h,w]``, the reference latent and the precomputed CLIP embedding."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    try:
        latents = torch.from_numpy(np.load(io.BytesIO(sample["latents.npy"])).astype(np.float32))
        embeds = torch.from_numpy(np.load(io.BytesIO(sample["clip.npy"])).astype(np.float32))
    except (KeyError, ValueError, OSError) as error:
        raise CorruptSample(f"{sample.get('__key__')}: bad latent cache entry: {error}") from error
    views = len(meta["_cameras"])
    if latents.shape[0] != views or embeds.shape[0] != views or not torch.isfinite(latents).all():
        raise CorruptSample(f"{sample.get('__key__')}: latent cache shapes do not match cameras")
    cameras = camera_embedding(meta["_cameras"])
    return {
        "key": sample["__key__"],
        "latents": latents[choice.quad],
        "cameras": cameras[choice.quad],
        "ref_latent": latents[choice.ref],
        "ref_embedding": embeds[choice.ref],
        "ref_camera": cameras[choice.ref],
        "angles": meta["_angles"][choice.quad],
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def collate(samples: list[dict]) -> dict:
    """Stack tensors, list strings, and sum the per-sample skip counters into one number."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "skipped":
            batch[name] = torch.tensor(sum(values), dtype=torch.long)
        elif isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    return batch

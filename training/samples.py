"""Turn one raw shard sample (bytes per member, format in models/shards/format.py) into what crosses
the loader-worker boundary: one azimuth-orthogonal quadruple of views plus one reference view,
decoded but otherwise untouched (uint8 straight-alpha RGBA), with the cameras, the view choice and
the background colour drawn for the object. Compositing, resizing and scaling run batched on the
training device (training.batch_transforms). Raw-image and latent-cache samples give the same
batch layout apart from the images."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from models.cameras import camera_embedding
from models.shards.format import SampleMeta, read_cache, read_meta
from models.shards.images import BACKGROUNDS, decode_views


@dataclass(frozen=True)
class ViewChoice:
    """Which views of an object one training sample uses."""

    quad: list[int]
    ref: int


def choose_views(meta: SampleMeta, rng: random.Random, ref_in_targets: bool) -> ViewChoice:
    """Pick one quadruple and one reference. The reference comes from the random-pose ``refs``
    unless ``ref_in_targets`` (stage-2 policy) asks for one of the target views."""
    quad = rng.choice(meta.quads)
    if ref_in_targets or not meta.refs:
        return ViewChoice(quad, rng.choice(quad))
    return ViewChoice(quad, rng.choice(meta.refs))


def background_colour(mode: str, rng: random.Random) -> tuple[float, float, float]:
    if mode == "random":  # one random colour per object, shared by its target views
        return (rng.random(), rng.random(), rng.random())
    return BACKGROUNDS[mode]


def image_sample(sample: dict, rng: random.Random, background: str, ref_in_targets: bool) -> dict:
    """Raw shard sample -> ``rgba``: 5 uint8 ``[H,W,4]`` views (the 4 targets, then the reference,
    at the render's size; ``collate`` stacks them to ``[B,5,H,W,4]``), the object's ``background``
    colour ``[3]``, cameras ``[4,16]``, the reference camera, angles and the choice.
    training.batch_transforms.image_batch makes the images."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    colour = background_colour(background, rng)
    chosen = [*choice.quad, choice.ref]
    cameras = camera_embedding(torch.from_numpy(meta.cameras[chosen]))  # the 5 used, not all
    return {
        "key": sample["__key__"],
        "rgba": decode_views(sample, chosen),
        "background": torch.tensor(colour, dtype=torch.float32),
        "cameras": cameras[:4],
        "ref_camera": cameras[4],
        "angles": torch.from_numpy(meta.angles[choice.quad]),
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def cached_sample(sample: dict, rng: random.Random, ref_in_targets: bool) -> dict:
    """Latent-cache sample (written by training.latent_cache) -> the same layout with latents
    ``[4,4,h,w]``, the reference latent and the precomputed CLIP embedding."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    stored_latents, stored_clip = read_cache(sample, meta.views)
    latents = torch.from_numpy(stored_latents.astype(np.float32))
    embeds = torch.from_numpy(stored_clip.astype(np.float32))
    cameras = camera_embedding(torch.from_numpy(meta.cameras))
    return {
        "key": sample["__key__"],
        "latents": latents[choice.quad],
        "cameras": cameras[choice.quad],
        "ref_latent": latents[choice.ref],
        "ref_embedding": embeds[choice.ref],
        "ref_camera": cameras[choice.ref],
        "angles": torch.from_numpy(meta.angles[choice.quad]),
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def _stack(tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Stack ``tensors`` (all of one shape) with one copy and view the result as
    ``[-1, *shape]``. In a loader worker the copy goes straight into shared memory (as torch's
    default_collate does), so handing the batch to the main process copies nothing. The buffer
    is made in the stack's own shape ``[len, *tensor shape]``: ``torch.stack(out=)`` resizes
    (and warns, a behaviour PyTorch deprecates) an ``out`` of any other shape."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(
            len(tensors) * first.numel(), device=first.device
        )
        out = first.new(storage).view(len(tensors), *first.shape)
    return torch.stack(tensors, out=out).view(-1, *shape)


def collate(samples: list[dict]) -> dict:
    """Stack tensors (each object's views into one ``rgba [B,5,H,W,4]``), list strings, sum the
    per-sample skip counters into one number and join their records into one list."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "skipped":
            batch[name] = torch.tensor(sum(values), dtype=torch.long)
        elif name == "skips":  # records of the skipped samples, as one list
            batch[name] = [record for records in values for record in records]
        elif name == "rgba":
            if len({v[0].shape for v in values}) > 1:  # render sizes differ: resized on the device
                batch[name] = [torch.stack(v) for v in values]
            else:
                views = [view for v in values for view in v]
                batch[name] = _stack(views, (len(values[0]), *views[0].shape))
        elif isinstance(values[0], torch.Tensor):
            batch[name] = _stack(values, tuple(values[0].shape))
        else:
            batch[name] = values
    return batch

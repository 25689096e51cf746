"""Turn one raw shard sample (bytes per member, format in models/shards/format.py) into what crosses
the loader-worker boundary: one azimuth-orthogonal quadruple of views plus one reference view,
decoded but otherwise untouched (uint8 straight-alpha RGBA), with the cameras, the view choice and
the background colour drawn for the object. Compositing, resizing and scaling run batched on the
training device (training.batch_transforms). Raw-image and latent-cache samples give the same
batch layout apart from the images."""

from __future__ import annotations

import math
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


def image_sample(
    sample: dict,
    rng: random.Random,
    background: str,
    ref_in_targets: bool,
    out: torch.Tensor | None = None,
) -> dict:
    """Raw shard sample -> ``rgba``: uint8 ``[5,H,W,4]`` views (the 4 targets, then the reference,
    at the render's size), the object's ``background`` colour ``[3]``, cameras ``[4,16]``, the
    reference camera, angles and the choice. ``out``: the sample's slot ``[5,H,W,4]`` in its
    batch's buffer (``ViewSlots``) that the views decode into when they fit it.
    training.batch_transforms.image_batch makes the images."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    colour = background_colour(background, rng)
    chosen = [*choice.quad, choice.ref]
    cameras = camera_embedding(torch.from_numpy(meta.cameras[chosen]))  # the 5 used, not all
    return {
        "key": sample["__key__"],
        "rgba": decode_views(sample, chosen, out),
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


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a loader worker in shared memory (as torch's default_collate
    makes its batches), so handing the batch to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    empty = torch.empty(0, dtype=dtype)
    return empty.new(empty._typed_storage()._new_shared(math.prod(shape))).view(shape)


def _stack(tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Stack ``tensors`` (all of one shape) with one copy into ``shared_empty`` and view the result
    as ``[-1, *shape]``. The buffer is made in the stack's own shape ``[len, *tensor shape]``:
    ``torch.stack(out=)`` resizes (and warns, a behaviour PyTorch deprecates) an ``out`` of any
    other shape."""
    first = tensors[0]
    out = shared_empty((len(tensors), *first.shape), first.dtype)
    return torch.stack(tensors, out=out).view(-1, *shape)


class ViewSlots:
    """One batch's views ``rgba [B,5,H,W,4]``, decoded straight into their slots: ``slot()`` is the
    next sample's place in a preallocated (in a worker: shared) buffer, ``put`` takes the sample's
    views, ``take`` hands over the batch's and starts the next buffer. Decoding into the slot
    copies each view while it is hot in the cache and spares the batch's separate stacking pass
    (the data path decoded about a third slower than bare decoding when every view was kept
    until the batch was stacked). The buffer has the size of the last batch's views; a sample of
    another size in first place starts a new buffer; one mid-batch makes the batch a list of
    per-object ``[5,H,W,4]`` tensors, as ``collate`` gives (resized on the device)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.buffer: torch.Tensor | None = None
        self.shape: tuple[int, ...] | None = None  # one sample's views, from the last batch
        self.made: list[torch.Tensor] = []

    def slot(self) -> torch.Tensor | None:
        """The next sample's slot (None until a first sample has told the views' size). A sample
        that fails is not ``put``: the next one decodes over its slot."""
        if self.buffer is None and self.shape is not None:
            self.buffer = shared_empty((self.batch_size, *self.shape), torch.uint8)
        return None if self.buffer is None else self.buffer[len(self.made)]

    def put(self, rgba: torch.Tensor) -> None:
        at = len(self.made)
        in_slot = self.buffer is not None and rgba.data_ptr() == self.buffer[at].data_ptr()
        if not in_slot and at == 0:  # the first sample sets the batch's size: one copy
            self.shape, self.buffer = tuple(rgba.shape), None
            rgba = self.slot().copy_(rgba)
        self.made.append(rgba)

    def take(self) -> torch.Tensor | list[torch.Tensor]:
        made, buffer, self.made, self.buffer = self.made, self.buffer, [], None
        if all(v.data_ptr() == buffer[i].data_ptr() for i, v in enumerate(made)):
            return buffer
        return made  # render sizes differ between the objects


def collate(samples: list[dict], rgba: torch.Tensor | list | None = None) -> dict:
    """Stack tensors (each object's views into one ``rgba [B,5,H,W,4]``; ``rgba``: the batch's
    views already made by ``ViewSlots``), list strings, sum the per-sample skip counters into
    one number and join their records into one list."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "skipped":
            batch[name] = torch.tensor(sum(values), dtype=torch.long)
        elif name == "skips":  # records of the skipped samples, as one list
            batch[name] = [record for records in values for record in records]
        elif name == "rgba" and rgba is not None:
            batch[name] = rgba
        elif name == "rgba" and len({v.shape for v in values}) > 1:
            batch[name] = list(values)  # render sizes differ: resized on the device
        elif isinstance(values[0], torch.Tensor):
            batch[name] = _stack(values, tuple(values[0].shape))
        else:
            batch[name] = values
    return batch

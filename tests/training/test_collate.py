"""Batches stacked in a loader worker: straight into shared memory, in the stack's own shape.
The views' buffer used to be made in the batch's final shape ``[B*5, 5, H, W, 4]`` (five times
the memory) and ``torch.stack`` resized it on every batch, with PyTorch's warning "An output
with one or more elements was resized" (a behaviour PyTorch deprecates)."""

from __future__ import annotations

import random
import warnings

import torch
from torch.utils.data import DataLoader

from models.shards.format import list_shards
from models.shards.tar_stream import tar_samples
from training.samples import collate, image_sample


def _collate_in_worker(samples: list[dict]) -> dict:
    """``collate`` as the loader workers run it, reporting what it warned and what it made."""
    assert torch.utils.data.get_worker_info() is not None  # the shared-memory path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collate(samples)
    batch["warned"] = [str(w.message) for w in caught]
    batch["rgba_bytes"] = batch["rgba"].untyped_storage().nbytes()
    batch["cameras_bytes"] = batch["cameras"].untyped_storage().nbytes()
    return batch


def test_worker_collate_stacks_views_without_a_resize(rendered_shards):
    shards = [{"url": str(path)} for path in list_shards(rendered_shards)]
    rng = random.Random(0)
    samples = [image_sample(s, rng, "random", False) for s in tar_samples(shards)][:3]
    loader = DataLoader(samples, batch_size=3, num_workers=1, collate_fn=_collate_in_worker)
    (batch,) = list(loader)
    assert batch["warned"] == []
    rgba = batch["rgba"]
    assert rgba.shape == (3, 5, 32, 32, 4) and rgba.dtype == torch.uint8
    assert rgba.is_shared()  # handed over without a copy
    assert batch["rgba_bytes"] == rgba.numel()  # exactly the views, not five times them
    assert batch["cameras_bytes"] == batch["cameras"].numel() * 4
    for index, sample in enumerate(samples):  # each object's own views, in order
        assert torch.equal(rgba[index], sample["rgba"])
        assert torch.equal(batch["cameras"][index], sample["cameras"])

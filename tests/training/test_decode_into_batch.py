"""Loader views decode straight into their slot of the batch's buffer (training.samples.ViewSlots):
a batch must hold exactly what decoding each chosen view and stacking them gives, a sample that
fails halfway through its views (some already written into its slot) is recorded and replaced by
the next one, and objects of another render size keep today's handling (a new buffer when the
size changes between batches, a list of per-object tensors when it changes within one)."""

from __future__ import annotations

import io
import random
import tarfile

import torch
from data_helpers import synthetic_sample
from torch.utils.data import DataLoader
from train_helpers import tiny_config

from models.shards.format import list_shards, split_member
from models.shards.images import decode_view
from models.shards.tar_stream import tar_samples
from training.datamodule import ShardStream
from training.samples import ViewSlots, image_sample


def _expected(raw: dict, choice: torch.Tensor) -> torch.Tensor:
    """The object's chosen views decoded one by one and stacked: what a batch entry must hold."""
    return torch.stack([decode_view(raw, int(index)) for index in choice])


def _garble_last_view(shard, out, key: str) -> None:
    """A copy of ``shard`` whose object ``key`` has its reference view (decoded last, after the
    four targets went into the slot) replaced by bytes that are no PNG."""
    with tarfile.open(shard) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if split_member(member.name) == (key, "004.png"):
                data = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


def test_stream_batches_equal_each_sample_decoded_and_stacked(rendered_shards, tmp_path):
    shards = list_shards(rendered_shards)
    raw = {s["__key__"]: s for s in tar_samples([{"url": str(p)} for p in shards])}
    config = tiny_config(tmp_path, rendered_shards, "data.batch_size=3")
    stream = iter(ShardStream([str(p) for p in shards], config.data, ref_in_targets=False))
    for _ in range(4):
        batch = next(stream)
        rgba = batch["rgba"]
        assert isinstance(rgba, torch.Tensor) and rgba.shape == (3, 5, 32, 32, 4)
        for index, key in enumerate(batch["key"]):
            assert torch.equal(rgba[index], _expected(raw[key], batch["choice"][index]))


def test_a_sample_failing_after_its_slot_was_written_is_recorded_and_replaced(
    rendered_shards, tmp_path
):
    shard = list_shards(rendered_shards)[0]
    keys = list(dict.fromkeys(split_member(m)[0] for m in tarfile.open(shard).getnames()))
    bad = keys[1]
    broken = tmp_path / shard.name
    _garble_last_view(shard, broken, bad)
    raw = {s["__key__"]: s for s in tar_samples([{"url": str(broken)}])}
    config = tiny_config(tmp_path, [broken], "data.batch_size=3", "data.shuffle_buffer=1")
    batch = next(iter(ShardStream([str(broken)], config.data, ref_in_targets=False)))
    assert batch["key"] == [keys[0], keys[2], keys[3]]  # the next sample took the bad one's slot
    assert int(batch["skipped"]) == 1
    (record,) = batch["skips"]
    assert record["key"] == bad and record["shard"] == str(broken)
    assert "004.png does not decode" in record["reason"]
    for index, key in enumerate(batch["key"]):
        assert torch.equal(batch["rgba"][index], _expected(raw[key], batch["choice"][index]))


def _batch(slots: ViewSlots, samples: list[dict]) -> tuple[torch.Tensor | list, list[dict]]:
    """One batch through ``slots`` as the loader makes it, and each sample made alone."""
    for index, sample in enumerate(samples):
        made = image_sample(sample, random.Random(index), "white", False, slots.slot())
        slots.put(made["rgba"])
    alone = [image_sample(s, random.Random(i), "white", False) for i, s in enumerate(samples)]
    return slots.take(), alone


def test_render_sizes_that_change_keep_their_handling():
    slots = ViewSlots(batch_size=2)
    small, large = synthetic_sample(0, 48), synthetic_sample(1, 64)
    # first batch (no size known yet), then a size change between batches: one tensor each
    for pair, size in (([small, small], 48), ([large, large], 64)):
        rgba, alone = _batch(slots, pair)
        assert isinstance(rgba, torch.Tensor) and rgba.shape == (2, 5, size, size, 4)
        assert all(torch.equal(rgba[i], a["rgba"]) for i, a in enumerate(alone))
    # a size change within a batch: per-object tensors, resized on the device
    rgba, alone = _batch(slots, [large, small])
    assert isinstance(rgba, list) and [v.shape[1] for v in rgba] == [64, 48]
    assert all(torch.equal(rgba[i], a["rgba"]) for i, a in enumerate(alone))


def _slots_in_worker(samples: list[dict]) -> dict:
    rgba, _ = _batch(ViewSlots(len(samples)), samples)
    return {"shared": rgba.is_shared(), "rgba": rgba}


def test_a_worker_decodes_into_shared_memory():
    samples = [synthetic_sample(seed, 32) for seed in range(3)]
    loader = DataLoader(samples, batch_size=3, num_workers=1, collate_fn=_slots_in_worker)
    (batch,) = list(loader)
    assert batch["shared"]  # handed to the main process without a copy
    for index, sample in enumerate(samples):
        alone = image_sample(sample, random.Random(index), "white", False)["rgba"]
        assert torch.equal(batch["rgba"][index], alone)

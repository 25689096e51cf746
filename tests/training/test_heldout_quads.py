"""Held-out camera quadruples: rendered beside the training ones, recorded in meta.json, and never
read by training (the loader, the latent cache's loader, the VAE/encoder pretraining); the
record of what a run trained on (framing, VAE latent, reference preprocessing) reaches the
exported model, and SDS and the sampler use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import webdataset as wds
from train_helpers import FAST

from models.shards.format import CorruptSample, read_meta
from models.shards.images import reference_on_white
from models.shards.urls import expand_shard_urls
from training.batch_transforms import image_batch
from training.config import load_config
from training.datamodule import ShardStream


@pytest.fixture(scope="module")
def heldout_shards(tmp_path_factory):
    """3 built-in objects, 1 training quad + 1 reference + 1 held-out quad each (Blender, 32 px)."""
    from data_prep.config import load_config as render_config
    from data_prep.render import render

    out = tmp_path_factory.mktemp("heldout_shards")
    config = render_config(
        source="samples", out=str(out), count=3, res=32, samples=4, denoise=False,
        num_quads=1, num_refs=1, heldout_quads=1, workers=1, progress=False,
    )  # fmt: skip
    assert not render(config).failed
    return out


def _samples(folder):
    urls = expand_shard_urls([str(folder)])
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_heldout_quads_are_rendered_recorded_and_apart(heldout_shards):
    from data_prep.config import load_config as render_config
    from data_prep.views import plan_views

    samples = _samples(heldout_shards)
    assert len(samples) == 3
    for sample in samples:
        meta = read_meta(sample)
        assert meta.views == 9 and meta.quads == [[0, 1, 2, 3]] and meta.refs == [4]
        assert meta.heldout_quads == [[5, 6, 7, 8]] and meta.training_views == [0, 1, 2, 3, 4]
        assert all(f"{i:03d}.png" in sample for i in range(9))  # the held-out views are there
        azimuths = meta.angles[[5, 6, 7, 8], 1]
        assert np.allclose(np.diff(azimuths) % 360, 90, atol=1e-3)  # an orthogonal quadruple
        # Seen from the middle of the elevation range [0, 30]: the top is in the scored views.
        assert np.allclose(meta.angles[[5, 6, 7, 8], 0], 15.0, atol=1e-3)
        assert meta.meta["view_ranges"]["relative_radius"] == [0.9, 1.1]
        # Drawn after the rest: the training cameras are those of a render without them.
        plain = plan_views(
            meta.meta["id"], render_config(source="samples", num_quads=1, num_refs=1)
        )
        assert np.allclose(plain.c2w, meta.cameras[:5], atol=1e-6)

    # A held-out view that is also a training view is refused: held out means never trained on.
    sample = dict(samples[0])
    bad = json.loads(bytes(sample["meta.json"]))
    bad["heldout_quads"] = [[4, 5, 6, 7]]  # view 4 is the reference
    sample["meta.json"] = json.dumps(bad).encode()
    with pytest.raises(CorruptSample, match="heldout_quads is also in quads or refs"):
        read_meta(sample)


def test_heldout_elevations_split_the_range_evenly():
    from data_prep.views import heldout_ranges
    from models.cameras import OrbitRanges

    ranges = OrbitRanges(elevation_deg=(0.0, 30.0), fov_deg=(20.0, 40.0))
    picked = heldout_ranges(ranges, 3)
    assert [r.elevation_deg for r in picked] == [(5.0, 5.0), (15.0, 15.0), (25.0, 25.0)]
    assert all(r.fov_deg == (20.0, 40.0) for r in picked)  # the rest is drawn as for training
    assert heldout_ranges(ranges, 0) == []


def test_training_never_reads_a_heldout_view(heldout_shards, tmp_path):
    heldout = {5, 6, 7, 8}
    config = load_config(
        None, [*FAST, f"data.train=[{heldout_shards}]", "data.batch_size=3", "data.seed=3"]
    )
    stream = iter(ShardStream(expand_shard_urls(config.data.train), config.data, False))
    chosen = [set(next(stream)["choice"].flatten().tolist()) for _ in range(20)]
    assert set().union(*chosen) == {0, 1, 2, 3, 4}  # 60 draws: every training view, no other
    targets = iter(ShardStream(expand_shard_urls(config.data.train), config.data, True))
    assert not any(set(next(targets)["choice"].flatten().tolist()) & heldout for _ in range(5))

    from training.latent_cache import cache_latents

    cache = tmp_path / "cache"
    cache_latents([str(heldout_shards)], "tiny", cache, 32, "white", 100)
    cached = load_config(
        None, [*FAST, f"data.train=[{cache}]", "data.cached=true", "data.batch_size=3"]
    )
    stream = iter(ShardStream(expand_shard_urls(cached.data.train), cached.data, False))
    assert not any(set(next(stream)["choice"].flatten().tolist()) & heldout for _ in range(20))

    from training.pretrain_vae import load_views

    views, keys = load_views([str(heldout_shards)], 32)
    assert len(views) == 3 * 5 and len(set(keys)) == 3  # 5 training views per object, no more


def test_reference_is_preprocessed_as_training_made_it(heldout_shards):
    """models.shards.images.reference_on_white (the sampler's and SDS's path for a model that
    recorded its reference_resolution) gives the loader's image-encoder input exactly."""
    config = load_config(None, [*FAST, f"data.train=[{heldout_shards}]", "data.batch_size=1"])
    raw = next(iter(ShardStream(expand_shard_urls(config.data.train), config.data, False)))
    batch = image_batch(raw, 32)
    straight = raw["rgba"][:, 4].permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(reference_on_white(straight, 32), batch["ref_clip"])
    smaller = image_batch(raw, 16)["ref_clip"]  # from the 32-px render, at another resolution
    assert torch.allclose(reference_on_white(straight, 16), smaller, atol=1e-6)
    # The sampler and SDS condition through encode_reference: the loader's input for a model
    # that records its reference_resolution (training.data_record), the encoder's own otherwise.
    from models.bundle import build_model

    model = build_model("tiny", seed=0)
    plain = model.encode_reference(straight)
    model.source["reference_resolution"] = 16
    recorded = model.encode_reference(straight)
    assert torch.allclose(recorded, model.image_encoder.encode(smaller), atol=1e-5)
    assert not torch.allclose(recorded, plain, atol=1e-3)


def test_data_record_of_a_run(heldout_shards):
    from training.data_record import data_record
    from training.shard_check import check_shards

    first = check_shards(expand_shard_urls([str(heldout_shards)]), False, 5)
    stage2 = load_config("stage2-tiny", ["stage2.ref_dropout=0.25"])
    record = data_record(first, stage2)
    assert record == {
        "camera_distance_range": [0.9, 1.1], "fov_range": [15.0, 60.0],
        "elevation_range": [0.0, 30.0], "vae_latent": "sample", "reference_resolution": 32,
        "reference_dropout": 0.25,
    }  # fmt: skip
    cached = data_record(first, load_config("stage1-tiny", ["data.cached=true"]))
    assert cached["vae_latent"] == "mean" and "reference_dropout" not in cached
    # Shards from before view_ranges: the range of the training quads' own views.
    for sample in first:
        del sample["meta"]["view_ranges"]
    old = data_record(first, stage2)["camera_distance_range"]
    radii = [
        r for s in first for r in np.array(s["meta"]["relative_radius"])[s["meta"]["quads"][0]]
    ]
    assert old == [round(min(radii), 4), round(max(radii), 4)] and 0.9 <= old[0] <= old[1] <= 1.1

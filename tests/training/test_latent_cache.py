"""The latent cache records what made it (VAE and image-encoder weights' hashes, resolution,
scaling factor, model preset) and training refuses a cache made by another VAE, naming both."""

from __future__ import annotations

import json

import pytest
import webdataset as wds
from train_helpers import tiny_config

from models.bundle import build_model, load_model, save_model
from models.shards.urls import expand_shard_urls
from training.datamodule import ShardDataModule
from training.latent_cache import (
    cache_latents,
    check_cache_matches,
    provenance,
    weights_sha256,
)
from training.shard_check import DataError
from training.train import run


@pytest.fixture(scope="module")
def cache(rendered_shards, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    counts = cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "white", 100)
    assert counts["written"] > 0 and counts["skipped"] == 0
    return out


def _first_samples(cache, tmp_path):
    config = tiny_config(tmp_path, cache, "data.cached=true")
    return ShardDataModule(config.data).check()


def test_every_cached_sample_records_its_provenance(cache, tiny_model_dir):
    model = load_model(tiny_model_dir)
    expected = provenance(model, str(tiny_model_dir), 32)
    stream = wds.WebDataset(expand_shard_urls([str(cache)]), shardshuffle=False, empty_check=False)
    records = [json.loads(sample["meta.json"])["latent_cache"] for sample in stream]
    assert records and all(r == {**expected, "background": "white", "vae": "mean"} for r in records)
    assert expected["vae_sha256"] == weights_sha256(model.vae)
    assert expected["scaling_factor"] == model.vae.scaling_factor
    summary = json.loads((cache / "cache-000.json").read_text())
    assert summary["latent_cache"] == expected


def test_the_hash_follows_the_weights(tiny_model_dir):
    model = load_model(tiny_model_dir)
    before = weights_sha256(model.vae)
    assert weights_sha256(load_model(tiny_model_dir).vae) == before  # same weights, same hash
    next(model.vae.parameters()).data[0].add_(1e-3)
    assert weights_sha256(model.vae) != before


def test_training_refuses_a_cache_made_by_another_vae(cache, tiny_model_dir, tmp_path):
    other = save_model(build_model("tiny", seed=1), tmp_path / "other")
    config = tiny_config(tmp_path / "run", cache, "data.cached=true", f"model.init={other}")
    with pytest.raises(DataError, match="made by another VAE") as error:
        run(config)
    ours = weights_sha256(load_model(tiny_model_dir).vae)[:12]
    theirs = weights_sha256(load_model(other).vae)[:12]
    message = str(error.value)
    assert ours in message and theirs in message and str(tiny_model_dir) in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_scaling_factor_resolution_and_unrecorded_caches_are_refused(
    cache, tiny_model_dir, tmp_path
):
    first = _first_samples(cache, tmp_path)
    model = load_model(tiny_model_dir)
    check_cache_matches(first, model, 32)  # the model that made it: accepted
    with pytest.raises(DataError, match="resolution: 32"):
        check_cache_matches(first, model, 64)
    model.vae.scaling_factor = 0.18215
    with pytest.raises(DataError, match="VAE scaling factor: 4.0"):
        check_cache_matches(first, model, 32)
    meta = first[0]["meta"]
    del meta["latent_cache"]
    old = [{**first[0], "meta.json": json.dumps(meta).encode()}]
    with pytest.raises(DataError, match="records no VAE"):
        check_cache_matches(old, load_model(tiny_model_dir), 32)


def test_a_finished_cache_is_kept_and_a_changed_input_rebuilds_it(
    rendered_shards, tiny_model_dir, tmp_path
):
    out = tmp_path / "cache"
    first = cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "white", 100)
    shard = next(out.glob("cache-000-*.tar"))
    shard.write_bytes(b"marker")  # a rebuild would overwrite it
    again = cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "white", 100)
    assert again == first and shard.read_bytes() == b"marker"  # same inputs: nothing redone
    cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "black", 100)
    assert shard.read_bytes() != b"marker"  # another background: rebuilt
    summary = json.loads((out / "cache-000.json").read_text())
    assert summary["background"] == "black"

"""The latent cache records what made it (VAE and image-encoder weights' hashes, resolution,
scaling factor, model preset) and training refuses a cache made by another VAE, naming both."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import webdataset as wds
from train_helpers import ROOT, tiny_config

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
    summary = json.loads((cache / "cache-000000.json").read_text())
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
    shard = next(out.glob("cache-000000-*.tar"))
    shard.write_bytes(b"marker")  # a rebuild would overwrite it
    again = cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "white", 100)
    assert first["written"] == 10 and again == {"written": 0, "skipped": 0, "kept": 3}
    assert shard.read_bytes() == b"marker"  # same inputs: nothing redone
    cache_latents([str(rendered_shards)], str(tiny_model_dir), out, 32, "black", 100)
    assert shard.read_bytes() != b"marker"  # another background: rebuilt
    summary = json.loads((out / "cache-000000.json").read_text())
    assert summary["background"] == "black"


def _cache_cli(data, init, out, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    args = ["-m", "training.latent_cache", "--data", str(data), "--init", str(init)]
    args += ["--out", str(out), "--resolution", "32", "--shard-size", "3"]
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_ranks_make_the_same_cache_as_one_process(rendered_shards, tiny_model_dir, tmp_path):
    """Ranks 0 and 1 of 2 (RANK/WORLD_SIZE, as torchrun sets them) at once: the folder is the one
    process's, byte for byte (3 input shards, 2 cache shards of <= 3 objects from each 4-object
    shard). The ranks share nothing but the model: no process group is needed."""
    one, two = tmp_path / "one", tmp_path / "two"
    single = _cache_cli(rendered_shards, tiny_model_dir, one, {})
    ranks = [
        _cache_cli(rendered_shards, tiny_model_dir, two, {"RANK": str(r), "WORLD_SIZE": "2"})
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in (single, *ranks)]
    assert [p.returncode for p in (single, *ranks)] == [0, 0, 0], "\n".join(logs)[-4000:]
    counts = [int(re.search(r"rank \d: cached (\d+) objects", log).group(1)) for log in logs]
    assert counts[0] == 10 and counts[1] + counts[2] == 10 and min(counts[1:]) > 0
    expected = _folder_bytes(one)
    names = sorted(expected)
    assert [n for n in names if n.endswith(".json")] == [f"cache-{i:06d}.json" for i in range(3)]
    assert len([n for n in names if n.endswith(".tar")]) >= 4  # 4-object shards: 2 cache shards
    assert _folder_bytes(two) == expected

"""The WebDataset data module on the project's rendered shards: batch layout, background
compositing, equal steps and different samples per rank, URL forms, corrupt samples skipped and
counted."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import json
import tarfile
import threading

import numpy as np
import pytest
import torch
from train_helpers import tiny_config

from models.cameras import camera_embedding
from models.shards.urls import expand_shard_urls
from training.batch_transforms import image_batch
from training.datamodule import ShardDataModule


def _loader(config, urls=None):
    module = ShardDataModule(config.data)
    return module.make_loader(urls or config.data.train, progress=lambda: 0)


def _first(loader, count):
    """The first ``count`` batches as the module sees them (images made as on the device)."""
    out = []
    for batch in loader:
        assert batch["rgba"].dtype == torch.uint8  # workers hand over decoded bytes only
        out.append(image_batch(batch, loader.stream.config.resolution))
        if len(out) == count:
            break
    return out


def _shard_cameras(shard_folder):
    cameras = {}
    for path in sorted(shard_folder.rglob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cameras.npy"):
                    key = member.name.split(".", 1)[0]
                    cameras[key] = np.load(io.BytesIO(tar.extractfile(member).read()))
    return cameras


def test_batch_layout_matches_the_shard_schema(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards, "data.batch_size=3")
    (batch,) = _first(_loader(config), 1)
    assert batch["views"].shape == (3, 4, 3, 32, 32)
    assert batch["views"].min() >= -1 and batch["views"].max() <= 1
    assert batch["ref_clip"].shape == (3, 3, 32, 32) and batch["ref_clip"].min() >= 0
    assert batch["cameras"].shape == (3, 4, 16) and batch["ref_camera"].shape == (3, 16)
    cameras = _shard_cameras(rendered_shards)
    for i, key in enumerate(batch["key"]):
        quad, ref = batch["choice"][i, :4].tolist(), int(batch["choice"][i, 4])
        expected = camera_embedding(torch.from_numpy(cameras[key]))
        assert torch.allclose(batch["cameras"][i], expected[quad], atol=1e-6)
        assert torch.allclose(batch["ref_camera"][i], expected[ref], atol=1e-6)
        assert ref not in quad  # default policy: the reference is a random-pose view
        # 4 orthogonal views: 4 distinct camera vectors, azimuths 90 degrees apart
        assert len({tuple(c.round(decimals=4).tolist()) for c in batch["cameras"][i]}) == 4
        steps = torch.diff(batch["angles"][i, :, 1]) % 360
        assert torch.allclose(steps, torch.full_like(steps, 90.0), atol=1e-3)
    assert int(batch["skipped"]) == 0


def test_background_is_composited_at_load_time(rendered_shards, tmp_path):
    white = tiny_config(tmp_path, rendered_shards, "data.background=white", "data.batch_size=4")
    rand = dataclasses.replace(white, data=dataclasses.replace(white.data, background="random"))
    (w,) = _first(_loader(white), 1)
    (r,) = _first(_loader(rand), 1)
    corner_w = w["views"][:, :, :, 0, 0]  # renders are centred: the corners are background
    assert torch.allclose(corner_w, torch.ones_like(corner_w))
    corner_r = r["views"][:, 0, :, 0, 0]
    assert corner_r.std(0).max() > 0.05  # one random colour per object, not all white
    for obj in range(4):  # the same colour for all four target views of one object
        assert torch.allclose(
            r["views"][obj, :, :, 0, 0], r["views"][obj, :1, :, 0, 0].expand(4, 3), atol=1e-5
        )
    assert torch.allclose(r["ref_clip"][:, :, 0, 0], torch.ones(4, 3))  # CLIP input on white


def test_ranks_take_equal_steps_and_see_different_samples(rendered_shards, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, rendered_shards, "data.steps_per_epoch=6")
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        batches = list(_loader(config))  # one epoch: with_epoch ends it
        seen[rank] = [
            (k, tuple(c.tolist())) for b in batches for k, c in zip(b["key"], b["choice"])
        ]
        assert len(batches) == 6
    assert seen[0] != seen[1]


@pytest.mark.parametrize("form", ["folder", "glob", "brace", "pipe", "http"])
def test_url_forms(rendered_shards, tmp_path, form):
    shards = sorted(rendered_shards.rglob("*.tar"))
    if form == "folder":
        url = str(rendered_shards)
    elif form == "glob":
        url = str(rendered_shards / "part-000" / "shard-*.tar")
    elif form == "brace":
        url = str(rendered_shards / "part-000" / f"shard-000-{{000000..{len(shards) - 1:06d}}}.tar")
    elif form == "pipe":
        url = f"pipe:cat {shards[0]}"
    else:
        handler = functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(rendered_shards)
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/part-000/{shards[0].name}"
    expanded = expand_shard_urls([url])
    assert len(expanded) == (1 if form in ("pipe", "http") else len(shards))
    config = tiny_config(tmp_path, [url])
    (batch,) = _first(_loader(config), 1)
    assert batch["views"].shape[1:] == (4, 3, 32, 32)
    if form == "http":
        server.shutdown()


def test_missing_shards_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards"):
        expand_shard_urls([str(tmp_path)])


def test_corrupt_samples_are_skipped_and_counted(corrupt_shards, tmp_path):
    shard = corrupt_shards["shard"]
    config = tiny_config(tmp_path, [shard], "data.batch_size=1", "data.shuffle_buffer=1")
    good = corrupt_shards["good"]
    batches = _first(_loader(config), good)  # exactly one pass over the damaged shard
    keys = [b["key"][0] for b in batches]
    assert not set(keys) & set(corrupt_shards["broken"])
    assert sum(int(b["skipped"]) for b in batches) == 2
    manifest = json.dumps(keys)
    assert len(set(keys)) == good, manifest


def _epoch(loader) -> list:
    return [(k, tuple(c.tolist())) for b in loader for k, c in zip(b["key"], b["choice"])]


def test_persistent_workers_draw_a_fresh_stream_each_epoch(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards, "data.num_workers=2", "data.steps_per_epoch=4")
    loader = _loader(config)
    first = _epoch(loader)
    workers = loader.pipeline[0]._iterator._workers  # the DataLoader under the WebLoader
    pids = [w.pid for w in workers]
    second = _epoch(loader)
    assert [w.pid for w in loader.pipeline[0]._iterator._workers] == pids  # the same processes
    assert all(w.is_alive() for w in workers)
    assert len(first) == len(second) == 4 * config.data.batch_size and first != second
    # the workers read the new epoch from the shared position: a loader started at epoch 1
    # draws what the persistent workers drew in their second epoch
    fresh = _loader(config)
    fresh._epoch = 0
    assert _epoch(fresh) == second

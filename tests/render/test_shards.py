"""Real renders through the whole pipeline, read back the way training reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from data_prep.manifest import read_partition
from data_prep.samples import SAMPLES
from data_prep.shard_writer import select_objects
from models.cameras import project_points
from models.shards.format import list_shards, shard_ids


def _samples(folder):
    # read the way training does: plain webdataset, rgba8 keeps the alpha channel
    urls = [str(p) for p in list_shards(folder)]
    return list(wds.WebDataset(urls, shardshuffle=False).decode("rgba8"))


def test_shards_read_back_with_webdataset_rgba8(rendered_shards):
    samples = _samples(rendered_shards)
    assert sorted(s["__key__"] for s in samples) == sorted(SAMPLES)
    for sample in samples:
        meta = sample["meta.json"]
        views = len(meta["fov_deg"])
        assert views == 5 and meta["quads"] == [[0, 1, 2, 3]] and meta["refs"] == [4]
        expected = {f"{i:03d}.png" for i in range(views)} | {"cameras.npy", "meta.json"}
        assert expected <= set(sample)
        for i in range(views):
            image = sample[f"{i:03d}.png"]
            assert image.shape == (32, 32, 4) and image.dtype == np.uint8
            alpha = image[..., 3]
            assert alpha.min() == 0 and alpha.max() == 255  # transparent background, opaque object
            assert 0.03 < (alpha > 127).mean() < 0.9
        cameras = sample["cameras.npy"]
        assert cameras.shape == (views, 4, 4) and cameras.dtype == np.float32
        rot = cameras[:, :3, :3]
        assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
        assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-5)
        assert np.allclose(np.linalg.norm(cameras[:, :3, 3], axis=1), meta["distance"], rtol=1e-5)
        quad = meta["quads"][0]
        assert len({round(meta["elevation_deg"][i], 4) for i in quad}) == 1
        gaps = np.diff(np.sort(np.asarray(meta["azimuth_deg"])[quad]))
        assert np.allclose(gaps, 90.0, atol=1e-3)
        assert all(15 <= f <= 60 for f in meta["fov_deg"])
        assert meta["source"] == "samples" and meta["resolution"] == 32
        assert meta["renderer"]["engine"] == "cycles" and meta["renderer"]["samples"] == 8


def test_manifest_lists_every_object_and_shard(rendered_shards):
    manifest = read_partition(rendered_shards)
    assert sorted(manifest["done"]) == sorted(SAMPLES) and manifest["failed"] == {}
    assert sorted(manifest["shards"]) == [p.name for p in list_shards(rendered_shards)]
    assert [len(s["ids"]) for s in manifest["shards"].values()] == [4, 4, 2]
    assert not list(rendered_shards.glob("*.tmp"))


def test_stored_camera_projects_the_object_onto_its_silhouette(rendered_shards):
    """The front_marker cube is centred at the origin: the origin lands on the image centre and
    the projected cube corners bound the rendered alpha mask, view by view."""
    sample = next(s for s in _samples(rendered_shards) if s["__key__"] == "front_marker")
    meta, cameras = sample["meta.json"], torch.from_numpy(sample["cameras.npy"])
    norm = meta["normalisation"]
    corners = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    )
    corners = (corners + torch.tensor(norm["offset"])) * norm["scale"]
    for i, fov in enumerate(meta["fov_deg"]):
        centre, _ = project_points(torch.zeros(1, 3), cameras[i], fov, 32)
        assert torch.allclose(centre, torch.tensor([[16.0, 16.0]]), atol=1e-3)
        uv, _ = project_points(corners, cameras[i], fov, 32)
        ys, xs = np.nonzero(sample[f"{i:03d}.png"][..., 3] > 127)
        rendered = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        projected = np.array([*uv.min(0).values.tolist(), *uv.max(0).values.tolist()]).clip(0, 32)
        assert np.abs(rendered - projected).max() <= 1.5, (i, rendered, projected)


def test_select_objects_copies_the_named_objects_in_order_and_names_a_missing_one(
    rendered_shards, tmp_path
):
    out = select_objects(rendered_shards, ["mug", "front_marker"], tmp_path / "two")
    (shard,) = list_shards(out)
    assert shard_ids(shard) == ["mug", "front_marker"]
    raw = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in list_shards(rendered_shards)])}
    for sample in wds.WebDataset([str(shard)], shardshuffle=False):
        original = raw[sample["__key__"]]
        fields = [k for k in original if not k.startswith("__")]
        assert sorted(fields) == sorted(k for k in sample if not k.startswith("__"))
        assert all(sample[k] == original[k] for k in fields)  # bytes unchanged
    mtime = shard.stat().st_mtime_ns
    assert select_objects(rendered_shards, ["mug", "front_marker"], out) == out  # a rerun keeps it
    assert shard.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="already holds"):
        select_objects(rendered_shards, ["car"], out)
    with pytest.raises(KeyError, match="no_such_object"):
        select_objects(rendered_shards, ["mug", "no_such_object"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileNotFoundError, match="no complete shards"):
        select_objects(tmp_path / "bad", ["mug"], tmp_path / "empty")

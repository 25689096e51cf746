"""Optional depth and normal passes, checked against the known geometry of front_marker."""

from __future__ import annotations

import math

import numpy as np

from data_prep.config import load_config
from data_prep.render import render
from data_prep.samples import write_samples
from data_prep.summary import iter_samples


def test_depth_is_along_the_camera_axis_and_normals_are_in_world_space(tmp_path):
    write_samples(tmp_path / "src", ["front_marker"])
    config = load_config(
        source=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        res=32,
        samples=4,
        denoise=False,
        num_quads=1,
        num_refs=0,
        elevation_deg=(0.0, 0.0),
        azimuth_start_deg=0.0,
        depth=True,
        normal=True,
        progress=False,
    )
    assert render(config).rendered == 1
    (sample,) = list(iter_samples(tmp_path / "out"))
    depth, normal = sample["depth.npy"], sample["normal.npy"]
    assert depth.shape == (4, 32, 32) and depth.dtype == np.float16
    assert normal.shape == (4, 32, 32, 3) and normal.dtype == np.float16
    alpha = sample["000.png"][..., 3]
    assert (depth[0][alpha == 0] == 0).all()  # background
    # the front face is perpendicular to the view axis: planar depth is constant across it
    half = 0.5 * sample["meta.json"]["normalisation"]["scale"]
    face = depth[0, 10:22, 10:22].astype(np.float64)
    expected = sample["meta.json"]["distance"][0] - half
    assert np.allclose(face, expected, atol=0.01), (face.min(), face.max(), expected)
    for view, world in enumerate([(0, -1, 0), (1, 0, 0), (0, 1, 0), (-1, 0, 0)]):
        centre = normal[view, 12:20, 12:20].reshape(-1, 3).astype(np.float64).mean(0)
        assert np.allclose(centre, world, atol=0.02), (view, centre)
    assert math.isfinite(float(depth.max()))

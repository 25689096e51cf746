"""The camera convention seen in real renders: azimuth 0 shows the object's front (-Y)."""

from __future__ import annotations

import numpy as np
import webdataset as wds

from data_prep.config import load_config
from data_prep.render import render
from data_prep.samples import write_samples
from models.shards.format import list_shards

# front_marker's face colours (data_prep/samples.py): -Y red, +X green, +Y blue, -X yellow, +Z purple
PURPLE = (140, 60, 180)
EXPECTED = {0.0: (220, 30, 30), 90.0: (40, 170, 60), 180.0: (40, 80, 220), 270.0: (240, 200, 30)}


def _render_front_marker(tmp_path, elevation_deg: float) -> dict:
    """front_marker's one quadruple at ``elevation_deg``, azimuths 0, 90, 180, 270."""
    write_samples(tmp_path / "src", ["front_marker"])
    config = load_config(
        source=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        res=32,
        samples=8,
        denoise=False,
        num_quads=1,
        num_refs=0,
        elevation_deg=(elevation_deg, elevation_deg),
        azimuth_start_deg=0.0,
        workers=1,
        progress=False,
    )
    assert render(config).rendered == 1
    urls = [str(p) for p in list_shards(tmp_path / "out")]
    (sample,) = wds.WebDataset(urls, shardshuffle=False).decode("rgba8")
    return sample


def test_azimuth_zero_shows_the_front_and_ninety_the_plus_x_side(tmp_path):
    sample = _render_front_marker(tmp_path, 0.0)
    assert sample["meta.json"]["azimuth_deg"] == [0.0, 90.0, 180.0, 270.0]
    palette = np.array(list(EXPECTED.values()), dtype=float)
    for i, azimuth in enumerate(EXPECTED):
        image = sample[f"{i:03d}.png"]
        centre = image[11:21, 11:21]  # the cube spans >= 12 px at any drawn distance
        assert (centre[..., 3] == 255).all()
        mean = centre[..., :3].reshape(-1, 3).astype(float).mean(0)
        nearest = int(np.argmin(np.linalg.norm(palette - mean, axis=1)))
        assert nearest == i, f"azimuth {azimuth}: mean colour {mean} is not {EXPECTED[azimuth]}"
        # colours stay faithful: not darkened, not washed out
        assert np.linalg.norm(mean - palette[i]) < 60, (azimuth, mean)


def test_the_top_is_purple_and_stands_out_from_the_white_background(tmp_path):
    # A white top vanished against the white background the demo trains on; SDS then carved the
    # top away and the silhouette score at the ground-truth poses lost most of its margin.
    sample = _render_front_marker(tmp_path, 75.0)
    for i in range(4):
        centre = sample[f"{i:03d}.png"][13:19, 13:19]  # seen from 75 deg up: the top face
        assert (centre[..., 3] == 255).all()
        mean = centre[..., :3].reshape(-1, 3).astype(float).mean(0)
        assert np.linalg.norm(mean - PURPLE) < 60, (i, mean)
        assert np.linalg.norm(mean - 255.0) > 150, (i, mean)  # far from the white background

"""The camera convention seen in real renders: azimuth 0 shows the object's front (-Y)."""

from __future__ import annotations

import numpy as np
import webdataset as wds

from data_prep.config import load_config
from data_prep.render import render
from data_prep.samples import write_samples
from data_prep.shards import list_shards

# front_marker's face colours (data_prep/samples.py): -Y red, +X green, +Y blue, -X yellow
EXPECTED = {0.0: (220, 30, 30), 90.0: (40, 170, 60), 180.0: (40, 80, 220), 270.0: (240, 200, 30)}


def test_azimuth_zero_shows_the_front_and_ninety_the_plus_x_side(tmp_path):
    write_samples(tmp_path / "src", ["front_marker"])
    config = load_config(
        source=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        res=32,
        samples=8,
        denoise=False,
        num_quads=1,
        num_refs=0,
        elevation_deg=(0.0, 0.0),
        azimuth_start_deg=0.0,
        workers=1,
        progress=False,
    )
    assert render(config).rendered == 1
    urls = [str(p) for p in list_shards(tmp_path / "out")]
    (sample,) = wds.WebDataset(urls, shardshuffle=False).decode("rgba8")
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

"""Every external texture that exists is used, whatever path the asset names it by, in every
format Blender imports here; a missing one is recorded per object; hidden helpers do not count in
the framing; meshes without material show the documented untextured colour."""

from __future__ import annotations

import numpy as np
from render_assets import GREEN, make_assets

from data_prep.config import load_config
from data_prep.render import render
from data_prep.summary import iter_samples

UNTEXTURED = (0.2, 0.3, 0.9)  # a colour no asset has, so the test sees where it is used


def _mean_colour(rgba: np.ndarray) -> np.ndarray:
    return rgba[..., :3][rgba[..., 3] == 255].astype(float).mean(0)


def test_textures_of_every_format_are_found_and_rendered(tmp_path):
    cases = make_assets(tmp_path / "assets")
    config = load_config(
        source=str(tmp_path / "assets"),
        out=str(tmp_path / "out"),
        res=16,
        samples=4,
        denoise=False,
        num_quads=0,
        num_refs=1,
        key_light=0.0,
        untextured_color=UNTEXTURED,
        progress=False,
    )
    summary = render(config)
    assert summary.rendered == len(cases) and not summary.failed, summary.failed
    samples = {s["meta.json"]["id"]: s for s in iter_samples(tmp_path / "out")}
    assert sorted(samples) == sorted(cases)
    for object_id, case in cases.items():
        meta, mean = samples[object_id]["meta.json"], _mean_colour(samples[object_id]["000.png"])
        if case == "missing":
            assert meta["textures"]["missing"] == ["gone.png"], meta["textures"]
            assert "missing_texture: gone.png" in meta["warnings"]
            assert min(mean) > 150, (object_id, mean)  # the white base colour, no magenta
        elif case.startswith("geometry only"):
            expected = 255 * np.array(UNTEXTURED)
            assert np.abs(mean - expected).max() < 40, (object_id, mean, expected)
        else:
            assert not meta["textures"].get("missing"), (object_id, meta["textures"])
            assert not any(w.startswith("missing_texture") for w in meta["warnings"]), object_id
            # the texture's green, not the white base colour
            assert mean[1] > mean[0] + 60 and mean[1] > mean[2] + 60, (object_id, case, mean)
            assert abs(mean[1] - GREEN[1]) < 60, (object_id, mean)
    assert samples["obj_moved/cube"]["meta.json"]["textures"]["relinked"] == ["Green.PNG"]
    # a PNG found at its own path loads there (not taken for missing because Blender had not
    # read it yet: image.has_data is False until then)
    assert samples["obj_beside/cube"]["meta.json"]["textures"]["relinked"] == []
    # the hidden helper (40 units wide, 300 units away) does not shrink the cube
    blend = samples["blend/model"]["meta.json"]["normalisation"]
    assert abs(blend["scale"] - 0.7 / (0.5 * 3**0.5)) < 1e-3, blend

"""The isotropic camera sampler: evenly spaced azimuths, a uniform random start, configured
ranges, cameras that look at the object; the model's camera input follows the legacy flag."""

from __future__ import annotations

import torch

from evaluation.config import load_config
from evaluation.views import orbit_cameras, sample_lights, sample_sds_cameras
from models.bundle import build_model
from models.cameras import camera_embedding, camera_to_world


def test_groups_are_isotropic_and_within_ranges():
    cfg = load_config(
        overrides=[
            "cameras.elevation_deg=[5,25]",
            "cameras.fov_deg=[20,50]",
            "cameras.elevation_sampling=uniform",  # threestudio's: test_eval_recipe.py
        ]
    )
    generator = torch.Generator().manual_seed(0)
    starts = []
    for _ in range(400):
        cams = sample_sds_cameras(generator, cfg.cameras, 8)
        assert len(cams) == 8
        for group in range(2):
            sl = slice(4 * group, 4 * group + 4)
            az = cams.azimuth_deg[sl]
            gaps = (az.roll(-1) - az) % 360
            assert torch.allclose(gaps, torch.full((4,), 90.0), atol=1e-3)
            for values in (cams.elevation_deg[sl], cams.fov_deg[sl], cams.distance[sl]):
                assert torch.all(values == values[0])  # shared within the group
            starts.append(float(az[0]))
        assert cams.elevation_deg.min() >= 5 and cams.elevation_deg.max() <= 25
        assert cams.fov_deg.min() >= 20 and cams.fov_deg.max() <= 50
        relative = cams.distance * torch.tan(torch.deg2rad(cams.fov_deg) / 2)
        assert relative.min() >= 0.8 - 1e-5 and relative.max() <= 1.0 + 1e-5
    # The random start covers the circle evenly: 8 bins of 45 deg, 800 draws, ~100 each.
    counts = torch.histc(torch.tensor(starts), bins=8, min=0, max=360)
    assert counts.min() > 60 and counts.max() < 140


def test_cameras_look_at_the_origin_from_the_configured_distance():
    cams = orbit_cameras(8, elevation_deg=15.0, fov_deg=40.0, relative_radius=0.9)
    c2w = cams.c2w()
    forward = -c2w[:, :3, 2]
    to_origin = torch.nn.functional.normalize(-c2w[:, :3, 3], dim=-1)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    expected = 0.9 / torch.tan(torch.deg2rad(torch.tensor(20.0)))
    assert torch.allclose(c2w[:, :3, 3].norm(dim=-1), expected.expand(8), atol=1e-5)


def test_lights_sit_near_the_camera_side():
    c2w = orbit_cameras(4, 0.0, 40.0, 1.0).c2w()
    lights = sample_lights(torch.Generator().manual_seed(0), c2w, 0.3, (0.8, 1.5), 4)
    cos = torch.nn.functional.cosine_similarity(lights, c2w[:, :3, 3], dim=-1)
    assert cos.min() > 0.3
    assert lights.norm(dim=-1).min() >= 0.8 - 1e-5 and lights.norm(dim=-1).max() <= 1.5 + 1e-5


def test_model_camera_input_follows_the_saved_legacy_flag():
    cams = orbit_cameras(4, 10.0, 40.0, 1.0)
    model = build_model("tiny")
    plain = model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)
    assert torch.allclose(plain, camera_embedding(cams.c2w()))
    model.preset["cameras"]["legacy_double_radians"] = True
    legacy = model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)
    expected = camera_embedding(camera_to_world(cams.elevation_deg, cams.azimuth_deg, 1.0, True))
    assert torch.allclose(legacy, expected) and not torch.allclose(legacy, plain)

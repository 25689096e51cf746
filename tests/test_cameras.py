"""The camera convention of docs/design.md (cameras), checked numerically."""

import math

import pytest
import torch

from models.cameras import (
    OrbitRanges,
    camera_embedding,
    camera_position,
    camera_to_world,
    distance_for_fov,
    orthogonal_azimuths,
    project_points,
    sample_orbit_group,
)


def test_azimuth_zero_sits_on_minus_y_and_ninety_on_plus_x():
    pos = camera_position(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), 2.0)
    assert torch.allclose(pos[0], torch.tensor([0.0, -2.0, 0.0]), atol=1e-6)
    assert torch.allclose(pos[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    top = camera_position(90.0, 0.0, 1.0)
    assert torch.allclose(top, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_matches_mvdream_opengl_construction_then_blender_flip():
    # MVDream: y-up OpenGL look-at on the unit sphere, then flip_yz into Blender axes.
    for elev, azim in [(0.0, 0.0), (15.0, 37.0), (30.0, 200.0), (-10.0, 300.0)]:
        e, a = math.radians(elev), math.radians(azim)
        pos = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
        forward = -pos / pos.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        gl = torch.eye(4)
        gl[:3, :3] = torch.stack([right, up, -forward], dim=1)
        gl[:3, 3] = pos
        flip_yz = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        assert torch.allclose(flip_yz @ gl, camera_to_world(elev, azim), atol=1e-5)


def test_rotations_are_orthonormal_and_cameras_look_at_origin():
    c2w = camera_to_world(torch.rand(16) * 60 - 10, torch.rand(16) * 360, 1 + torch.rand(16))
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)
    looking = -rot[:, :, 2]  # camera looks down its -Z
    to_origin = torch.nn.functional.normalize(-c2w[:, :3, 3], dim=-1)
    assert torch.allclose(looking, to_origin, atol=1e-5)


def test_four_orthogonal_azimuths_give_four_distinct_camera_vectors():
    emb = camera_embedding(camera_to_world(20.0, orthogonal_azimuths(30.0), 2.5))
    assert emb.shape == (4, 16)
    assert torch.cdist(emb, emb).add(torch.eye(4) * 10).min() > 0.5
    # translation is unit length whatever the distance
    assert torch.allclose(emb.view(4, 4, 4)[:, :3, 3].norm(dim=-1), torch.ones(4), atol=1e-6)


def test_origin_projects_to_image_centre_and_distance_rule():
    c2w = camera_to_world(25.0, 123.0, float(distance_for_fov(40.0, 1.0)))
    uv, depth = project_points(torch.zeros(1, 3), c2w, 40.0, 64)
    assert torch.allclose(uv, torch.tensor([[32.0, 32.0]]), atol=1e-4)
    assert depth.item() == pytest.approx(1 / math.tan(math.radians(20.0)), rel=1e-5)


def test_legacy_double_radians_differs_from_the_convention():
    normal = camera_to_world(30.0, 90.0)
    legacy = camera_to_world(30.0, 90.0, legacy_double_radians=True)
    assert not torch.allclose(normal, legacy, atol=1e-3)
    expected = camera_to_world(math.radians(30.0), math.radians(90.0))
    assert torch.allclose(legacy, expected, atol=1e-6)


def test_orbit_group_is_isotropic_and_in_range():
    gen = torch.Generator().manual_seed(0)
    ranges = OrbitRanges(
        elevation_deg=(5.0, 25.0), fov_deg=(20.0, 50.0), relative_radius=(0.8, 1.0)
    )
    starts = []
    for _ in range(200):
        group = sample_orbit_group(gen, 4, ranges)
        gaps = torch.diff(torch.sort(group.azimuth_deg).values)
        assert torch.allclose(gaps, torch.full((3,), 90.0), atol=1e-3)
        assert 5.0 <= group.elevation_deg[0] <= 25.0 and 20.0 <= group.fov_deg[0] <= 50.0
        rel = group.distance[0] * math.tan(math.radians(group.fov_deg[0].item() / 2))
        assert 0.8 - 1e-5 <= rel <= 1.0 + 1e-5
        starts.append(group.azimuth_deg[0].item())
    hist = torch.histc(torch.tensor(starts), bins=4, min=0, max=360)
    assert hist.min() > 30  # random start covers the circle


def test_framing_definition_fits_the_bounding_sphere_with_a_margin():
    from models.cameras import (
        OBJECT_RADIUS,
        fit_distance,
        silhouette_fraction,
        worst_case_fraction,
    )

    # a sphere touches the border exactly at the fit distance, is cropped closer, fits farther
    for fov in (15.0, 40.0, 60.0):
        at_fit = silhouette_fraction(fov, fit_distance(fov))
        assert at_fit.item() == pytest.approx(1.0, rel=1e-5)
        assert silhouette_fraction(fov, fit_distance(fov) * 0.95).item() > 1.0
        assert silhouette_fraction(fov, fit_distance(fov) * 1.05).item() < 1.0
    from models.cameras import relative_radius_of

    assert relative_radius_of(40.0, distance_for_fov(40.0, 0.93)).item() == pytest.approx(0.93)
    # MVDream's training ranges keep the normalised object's sphere well inside every view
    worst = worst_case_fraction((15.0, 60.0), (0.9, 1.1))
    assert 0.8 < worst < 0.9
    fovs, rels = torch.linspace(15, 60, 50), torch.linspace(0.9, 1.1, 50)
    grid = silhouette_fraction(fovs[:, None], distance_for_fov(fovs[:, None], rels[None]))
    assert grid.max().item() == pytest.approx(worst, rel=1e-5)
    assert (distance_for_fov(fovs[:, None], rels[None]) > fit_distance(fovs[:, None])).all()
    # the old framing (radius 1 at the same distances) crops most draws: the bug
    assert worst_case_fraction((15.0, 60.0), (0.9, 1.1), radius=1.0) > 1.0
    # a point on the sphere's outline projects at silhouette_fraction of the half-image
    fov, dist = 50.0, float(distance_for_fov(50.0, 0.95))
    c2w = camera_to_world(0.0, 0.0, dist)  # camera on -Y looking at the origin
    tangent = math.asin(OBJECT_RADIUS / dist)  # outline point seen at this angle off-axis
    point = torch.tensor(
        [[OBJECT_RADIUS * math.cos(tangent), -OBJECT_RADIUS * math.sin(tangent), 0.0]]
    )
    uv, _ = project_points(point, c2w, fov, 200)
    expected = 100 * (1 + silhouette_fraction(fov, dist).item())
    assert uv[0, 0].item() == pytest.approx(expected, rel=1e-4)


def _released_get_camera(num_frames, elevation=15.0, azimuth_start=0.0, azimuth_span=360.0):
    """The released Isotropic3D sampler's cameras, re-derived in numpy for this test: a y-up
    OpenGL look-at whose angles go through np.radians, then the Blender flip; its loop applies
    np.deg2rad to the (reassigned) elevation on every pass and to each azimuth once."""
    import numpy as np

    cameras = []
    for azimuth in np.arange(
        azimuth_start, azimuth_span + azimuth_start, azimuth_span / num_frames
    ):
        elevation = np.deg2rad(elevation)  # reassigned: compounds frame after frame
        e, a = np.radians(elevation), np.radians(np.deg2rad(azimuth))
        pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
        forward = -pos / np.linalg.norm(pos)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        gl = np.eye(4)
        gl[:3, :3] = np.array([right, up / np.linalg.norm(up), -forward]).T
        gl[:3, 3] = pos
        flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
        cameras.append((flip_yz @ gl).flatten())
    return torch.tensor(np.stack(cameras)).float()


def test_legacy_sampling_cameras_reproduce_the_released_get_camera():
    from models.cameras import legacy_sampling_cameras

    for elevation in (15.0, 0.0, 30.0):
        expected = _released_get_camera(4, elevation)
        got = legacy_sampling_cameras(elevation, orthogonal_azimuths(0.0, 4))
        assert torch.allclose(got, expected, atol=1e-6), elevation
    got = legacy_sampling_cameras(15.0, [0.0, 90.0, 180.0, 270.0]).view(4, 4, 4)
    heights = torch.rad2deg(torch.asin(got[:, 2, 3]))  # elevation of each camera centre
    twice = math.degrees(math.radians(math.radians(15.0)))  # 0.26 deg
    assert heights[0].item() == pytest.approx(twice, rel=1e-4)
    assert heights[1:].abs().max().item() < 0.005  # frames 1-3 sit at ~0 deg
    # SDS keeps the guidance's cameras: every frame's angles converted exactly twice.
    sds = camera_embedding(camera_to_world(15.0, orthogonal_azimuths(0.0, 4), 1.0, True))
    assert torch.allclose(sds[0], got.view(4, 16)[0], atol=1e-6)
    assert not torch.allclose(sds[1:], got.view(4, 16)[1:], atol=1e-5)

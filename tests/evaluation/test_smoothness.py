"""The 3D smoothness terms of SDS: surface points from the renders, albedo and normal terms that
are larger on a noisy field than on a smooth one, and their gradients in an SDS step."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_config

from evaluation.field import Field
from evaluation.guidance import MultiViewGuidance
from evaluation.renderer import render_settings, render_views
from evaluation.sds import FieldState, build_occupancy, sds_step
from evaluation.smoothness import smoothness_terms, surface_points
from evaluation.views import orbit_cameras
from models.bundle import build_model


def _views(field, cfg, size=24):
    cameras = orbit_cameras(2, elevation_deg=15.0, fov_deg=40.0, relative_radius=0.9)
    c2w, fov = cameras.c2w(), cameras.fov_deg
    settings = render_settings(cfg, torch.device("cpu"), stratified=False, shading="albedo")
    with torch.no_grad():
        out = render_views(field, c2w, fov, size, cfg.field.radius, settings)
    return c2w, fov, out


def test_surface_points_lie_on_the_blob_and_only_covered_pixels_count():
    cfg = tiny_config()
    field = Field(cfg.field)  # a fresh field is the blob: dense inside radius blob_std
    c2w, fov, out = _views(field, cfg)
    points, weight = surface_points(c2w, fov, out["depth"], out["alpha"], 512, None)
    assert points.shape == (512, 3) and weight.shape == (512,)
    assert 0 < weight.sum() < 512  # the blob covers some pixels, not all
    radii = points[weight > 0].norm(dim=-1)
    blob = cfg.field.blob_std
    # the blob's density ramps up inward, so its expected depth lies in the outer shell
    assert radii.max() < blob + 0.05 and radii.min() > 0.15


def test_a_noisy_albedo_costs_more_than_a_smooth_one_and_gets_the_gradient():
    cfg = tiny_config()
    smooth, noisy = Field(cfg.field), Field(cfg.field)
    with torch.no_grad():
        noisy.encoding.table.normal_(0.0, 1.0)  # every level's features random: streaks
        noisy.feature_net[-1].weight.mul_(20.0)
    points = torch.rand(256, 3) - 0.5
    weight = torch.ones(256)
    gen = torch.Generator().manual_seed(0)
    quiet = smoothness_terms(smooth, points, weight, 0.03, gen, normals=True)
    loud = smoothness_terms(noisy, points, weight, 0.03, gen, normals=True)
    assert loud["albedo_smooth"] > 10 * quiet["albedo_smooth"]
    assert loud["normal_smooth"] > quiet["normal_smooth"]
    loud["albedo_smooth"].backward()
    assert noisy.encoding.table.grad.abs().sum() > 0
    none = smoothness_terms(noisy, points, torch.zeros(256), 0.03, gen, normals=False)
    assert none["albedo_smooth"] == 0 and "normal_smooth" not in none


@pytest.mark.parametrize("frozen", [False, True])
def test_the_sds_step_adds_the_weighted_terms(frozen):
    model = build_model("tiny", seed=0)
    cfg = tiny_config("sds.smoothness.lambda_albedo=2", "sds.smoothness.lambda_normal=3")
    guidance = MultiViewGuidance(model, cfg.sds, 4, torch.device("cpu"))
    cond = model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    state = FieldState(Field(cfg.field), build_occupancy(cfg))
    if frozen:
        state.field.freeze_geometry()
    camera = lambda cams: model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    terms = sds_step(state, guidance, cond, cfg, 0, generator, camera)
    parts = terms["_parts"]
    # the terms draw from their own generator: the run's cameras, timesteps and rays are the
    # ones it would draw without them
    plain = torch.Generator().manual_seed(0)
    sds_step(state, guidance, cond, tiny_config(), 0, plain, camera)
    assert torch.equal(generator.get_state(), plain.get_state())
    assert torch.allclose(parts["albedo_smooth"], 2 * terms["albedo_smooth"])
    # a frozen shape's normals take no gradient, so their term is not computed
    assert ("normal_smooth" in parts) is not frozen
    if not frozen:
        assert torch.allclose(parts["normal_smooth"], 3 * terms["normal_smooth"])
    assert terms["albedo_smooth"] > 0

"""Renderer and field: an analytic sphere gives the expected alpha, depth and normals; the hash
grid matches a per-corner reference; occupancy skipping changes nothing visible; mesh export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from eval_helpers import SphereField, tiny_config

from evaluation.export import extract_mesh
from evaluation.field import Field, HashGrid
from evaluation.renderer import (
    OccupancyGrid,
    RenderSettings,
    generate_rays,
    render_views,
    step_size,
)
from models.cameras import camera_to_world

RADIUS, DISTANCE, FOV, SIZE = 0.5, 2.5, 40.0, 32


def _render(field, occupancy=None, samples=256, **kwargs):
    c2w = camera_to_world(torch.tensor([10.0]), torch.tensor([30.0]), DISTANCE)
    settings = RenderSettings(samples_per_ray=samples, stratified=False, **kwargs)
    out = render_views(field, c2w, torch.tensor([FOV]), SIZE, 1.0, settings, occupancy)
    return c2w, out


def _ray_distance_to_centre(c2w):
    origins, dirs = generate_rays(c2w, torch.tensor([FOV]), SIZE)
    return torch.linalg.cross(origins, dirs, dim=-1).norm(dim=-1)[0]  # |o x d|, d unit


def test_sphere_alpha_and_depth_match_geometry():
    c2w, out = _render(SphereField(RADIUS))
    miss = _ray_distance_to_centre(c2w)
    alpha, depth = out["alpha"][0], out["depth"][0]
    inside, outside = miss < RADIUS - 0.02, miss > RADIUS + 0.02
    assert inside.sum() > 50 and outside.sum() > 50
    assert torch.all(alpha[inside] > 0.999)
    assert torch.all(alpha[outside] < 1e-6)
    # First hit along the ray: t = o.d' - sqrt(r^2 - miss^2) with o.d' the distance to the foot.
    expected = (DISTANCE**2 - miss**2).sqrt() - (RADIUS**2 - miss**2).clamp_min(0).sqrt()
    step = 2.0 * math.sqrt(3) / 256  # upper bound of the sample spacing inside the cube
    assert (depth[inside] - expected[inside]).abs().max() < 1.5 * step
    # White background outside, the albedo inside.
    assert torch.allclose(out["rgb"][0][outside], torch.ones(3), atol=1e-5)
    assert torch.allclose(out["rgb"][0][inside], torch.tensor([0.9, 0.2, 0.1]), atol=1e-3)


def test_normals_and_orientation_of_a_sphere():
    c2w, out = _render(SphereField(RADIUS), need_normals=True)
    inside = _ray_distance_to_centre(c2w) < RADIUS - 0.02
    normal = out["normal"][0][inside]
    camera_dir = torch.nn.functional.normalize(c2w[0, :3, 3], dim=0)
    assert (normal @ camera_dir).min() > 0  # outward normals face the camera
    assert float(out["orient"]) < 1e-6  # no normal points away from the viewer


def test_occupancy_skipping_keeps_the_image_and_skips_space():
    field = SphereField(RADIUS, peak=200.0, smooth=True)
    # A low alpha threshold: what the grid drops is then invisible (the default 0.01 trades a
    # faint rim for speed, as nerfacc does).
    grid = OccupancyGrid(1.0, resolution=32, threshold=1e-4, decay=0.95)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):  # one jittered point per cell per update, as during training
        grid.update(field, step_size=0.01, generator=generator)
    occupied = grid.occupied.float().mean().item()
    assert occupied < 0.15  # the ball fills ~6.5% of the cube (plus dilated boundary cells)
    _, dense = _render(field)
    _, skipped = _render(field, occupancy=grid)
    assert (dense["alpha"] - skipped["alpha"]).abs().max() < 2e-3
    assert (dense["rgb"] - skipped["rgb"]).abs().max() < 2e-3
    assert dense["alpha"].max() > 0.99


def _reference_hash_grid(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written per level and corner, with int64 arithmetic."""
    out = []
    for level in range(grid.levels):
        res = int(grid.resolution[level])
        pos = x * res
        base = pos.floor().clamp_max(res - 1)
        frac, base = pos - base, base.long()
        acc = 0
        for corner in range(8):
            offset = torch.tensor([corner >> 2 & 1, corner >> 1 & 1, corner & 1])
            v = base + offset
            if bool(grid.dense[level]):
                index = v[:, 0] + (res + 1) * (v[:, 1] + (res + 1) * v[:, 2])
            else:
                index = (v[:, 0] ^ (v[:, 1] * 2654435761) ^ (v[:, 2] * 805459861)) % (
                    int(grid.mask[level]) + 1
                )
            weight = torch.where(offset.bool(), frac, 1 - frac).prod(-1)
            acc = acc + grid.table[int(grid.offset32[level]) + index] * weight[:, None]
        out.append(acc)
    return torch.cat(out, 1)


def test_hash_grid_matches_reference_and_is_differentiable():
    grid = HashGrid(levels=5, features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                    per_level_scale=2.0, init_std=1.0)  # fmt: skip
    assert grid.dense.any() and not grid.dense.all()  # both index paths are exercised
    x = torch.rand(500, 3, requires_grad=True)
    feats = grid(x)
    assert torch.allclose(feats, _reference_hash_grid(grid, x.detach()), atol=1e-5)
    feats.square().sum().backward()
    assert grid.table.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_field_blob_init_and_normals():
    cfg = tiny_config()
    field = Field(cfg.field)
    centre, far = field.density(torch.zeros(1, 3)), field.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre.item() > 5 and far.item() < 0.01  # Magic3D blob: dense ball of radius ~0.5
    x = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0]])
    normals = field.normals(x)
    assert (normals * torch.nn.functional.normalize(x, dim=-1)).sum(-1).min() > 0.9
    cfg_analytic = tiny_config("field.normal=analytic")
    analytic = Field(cfg_analytic.field)
    analytic.load_state_dict(field.state_dict())
    assert torch.allclose(analytic.normals(x), normals, atol=0.05)


def test_mesh_of_a_sphere_is_round_outward_and_y_up(tmp_path):
    cfg = tiny_config("export.mesh_resolution=48", "export.mesh_threshold=25.0")
    mesh = extract_mesh(SphereField(RADIUS, peak=100.0, smooth=True), cfg)
    level_radius = RADIUS * (1 - 25.0 / 100.0)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - level_radius) < 0.02
    outward = (mesh.face_normals * mesh.triangles_center).sum(1) > 0
    assert outward.mean() > 0.99
    assert np.allclose(mesh.visual.vertex_colors[:, :3], [230, 51, 26], atol=1)
    mesh.export(tmp_path / "m.glb")
    loaded = trimesh.load(tmp_path / "m.glb", force="mesh")
    assert len(loaded.vertices) == len(mesh.vertices)


@pytest.mark.parametrize("azimuth,axis", [(0.0, 2), (90.0, 0)])
def test_export_axes_follow_gltf(azimuth, axis):
    """A point on the side azimuth 0 sees (Blender -Y, the front) lands on glTF +Z."""
    from evaluation.export import _TO_Y_UP

    pos = camera_to_world(0.0, azimuth, 1.0)[:3, 3].numpy()
    assert np.argmax(np.abs(_TO_Y_UP @ pos)) == axis and (_TO_Y_UP @ pos)[axis] > 0.99


def _graded_render(field, chunk_rays: int, saved: list[int]):
    """Two views of ``field`` with gradient (diffuse shading, normals, stratified from one seed);
    ``saved`` collects the bytes autograd keeps for the backward."""
    c2w = camera_to_world(torch.tensor([10.0, 100.0]), torch.tensor([30.0, 10.0]), DISTANCE)
    settings = RenderSettings(
        samples_per_ray=48, shading="diffuse", ambient=0.3, need_normals=True,
        chunk_rays=chunk_rays,
    )  # fmt: skip

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    field.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = render_views(
            field, c2w, torch.tensor([FOV, FOV]), SIZE, 1.0, settings,
            light_position=c2w[:, :3, 3] * 1.2, generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
    loss = (out["rgb"] * torch.linspace(0, 1, 3)).sum() + out["alpha"].square().sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in field.parameters()])
    return out, grads


def test_checkpointed_chunks_give_the_same_render_and_gradient_with_less_kept():
    """``chunk_rays`` with gradient (``renderer.grad_chunk_rays``, the full-size SDS on a small
    machine): each chunk is recomputed in the backward, so the same image and the same field
    gradient come out while autograd keeps a fraction of the whole render's activations."""
    torch.manual_seed(0)
    field = Field(tiny_config().field)
    whole_saved, chunk_saved = [], []
    whole, whole_grad = _graded_render(field, 0, whole_saved)
    chunked, chunk_grad = _graded_render(field, 256, chunk_saved)
    assert (
        float(whole["alpha"].detach().max()) > 0.1
    )  # the blob is visible: the gradient is not trivial
    for key in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-6)
    assert whole_grad.abs().max() > 0
    torch.testing.assert_close(chunk_grad, whole_grad, rtol=1e-4, atol=1e-7)
    # 8 chunks of 256 rays: at most one chunk's activations (plus its inputs) kept at a time
    assert sum(chunk_saved) < sum(whole_saved) / 4, (sum(chunk_saved), sum(whole_saved))


def test_exact_no_grad_render_runs_the_field_on_valid_slots_only():
    """Exports (every slot, no budget): without gradient only the occupied, in-cube slots reach
    the field; the image equals the static-shape render that runs every slot."""
    field = SphereField(RADIUS, peak=400.0, smooth=True)
    grid = OccupancyGrid(1.0, resolution=32, threshold=0.01, decay=0.95)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        grid.update(field, step_size=step_size(1.0, 128), generator=generator)
    calls: list[int] = []
    density = field.density
    field.density = lambda x: calls.append(x.shape[0]) or density(x)
    _, static = _render(field, grid, samples=128)  # gradient on: every slot, static shape
    every = sum(calls)
    calls.clear()
    with torch.no_grad():
        _, exact = _render(field, grid, samples=128)
    for key in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(exact[key], static[key].detach(), rtol=1e-5, atol=1e-6)
    assert 0 < sum(calls) < every / 4, (sum(calls), every)

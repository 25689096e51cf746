"""The released recipe, pinned: material schedule and probabilities, lights per view group,
analytic normals, the sampler's density and near-surface samples, AdamW as the reference builds
it, threestudio's elevation sampling; the render step traces as one graph; floaters dropped."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import torch
from eval_helpers import SphereField, tiny_config

from evaluation.config import load_config
from evaluation.export import save_mesh
from evaluation.field import Field
from evaluation.renderer import (
    OccupancyGrid,
    RenderSettings,
    _render_core,
    render_views,
    shade_parameters,
    step_size,
)
from evaluation.schedules import at_step
from evaluation.sds import make_optimizer, sample_step_size, step_shading
from evaluation.views import orbit_cameras, sample_elevations, sample_lights
from models.cameras import camera_to_world


def test_defaults_are_the_released_geometry_recipe():
    """configs/isotropic3d-shading.yaml of the release and the threestudio defaults it relies on."""
    cfg = load_config()
    mat = cfg.material
    assert mat.mode == "diffuse" and at_step(mat.ambient_only_steps, cfg.sds.steps) == 5000
    assert mat.textureless_prob == 0.5 and mat.soft_shading is True
    assert mat.diffuse_prob == 0.75  # threestudio's material default (the config sets none)
    assert mat.light_perturb == 1.0 and mat.light_distance == [0.8, 1.5]
    assert cfg.field.normal == "analytic"
    assert cfg.renderer.samples_per_ray == 512
    assert abs(sample_step_size(cfg) - 0.0068) < 1e-4  # 1.732 * 2 * radius / 512
    assert cfg.renderer.alpha_threshold == 0.01 and cfg.renderer.early_stop == 1e-4
    occ = cfg.renderer.occupancy
    assert (occ.resolution, occ.threshold, occ.decay, occ.update_every, occ.dilate) == (
        32, 0.01, 0.95, 16, 0
    )  # fmt: skip
    assert cfg.cameras.elevation_sampling == "threestudio"
    # AdamW(betas=(0.9, 0.99), eps=1e-15) and nothing else: torch's default weight decay
    default_wd = inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default
    assert cfg.optim.weight_decay == default_wd == 0.01
    optimizer = make_optimizer(Field(tiny_config().field), cfg.optim)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-15
    assert group["weight_decay"] == 0.01


def test_shading_schedule_and_probabilities():
    cfg = load_config()
    generator = torch.Generator().manual_seed(0)
    total = cfg.sds.steps
    albedo = {step_shading(cfg.material, s, generator, total)[0] for s in range(0, 5000, 50)}
    assert albedo == {"albedo"}
    draws = [step_shading(cfg.material, 5000 + i, generator, total) for i in range(6000)]
    modes = [mode for mode, _ in draws]
    share = {m: modes.count(m) / len(modes) for m in ("albedo", "textureless", "diffuse")}
    # threestudio: albedo when rand > 0.75, else textureless when rand < 0.5, else diffuse
    assert abs(share["albedo"] - 0.25) < 0.03
    assert abs(share["textureless"] - 0.375) < 0.03 and abs(share["diffuse"] - 0.375) < 0.03
    ambient = np.array([a for m, a in draws if m != "albedo"])
    assert ambient.min() < 0.05 and ambient.max() > 0.95 and abs(ambient.mean() - 0.5) < 0.03
    plain = load_config(overrides=["material.mode=albedo"])
    assert step_shading(plain.material, 9000, generator, total) == ("albedo", 1.0)


def test_shading_formula_of_each_mode():
    """albedo as is; diffuse = albedo * (ambient + diffuse * n.l); textureless = white albedo."""
    device = torch.device("cpu")
    for mode, ambient, expected in [
        ("albedo", 0.3, (0.0, 1.0, 0.0)),
        ("diffuse", 0.3, (0.0, 0.3, 0.7)),
        ("textureless", 0.2, (1.0, 0.2, 0.8)),
    ]:
        params = shade_parameters(RenderSettings(shading=mode, ambient=ambient), device)
        assert torch.allclose(params, torch.tensor(expected))
    # Head-on light on a sphere: n.l = 1 at the centre pixel, so diffuse shading is the albedo.
    c2w = camera_to_world(torch.tensor([0.0]), torch.tensor([0.0]), 2.5)
    lights = c2w[:, :3, 3] * 10
    outs = {}
    for mode in ("diffuse", "textureless"):
        settings = RenderSettings(samples_per_ray=256, stratified=False, shading=mode, ambient=0.2)
        outs[mode] = render_views(SphereField(0.5), c2w, torch.tensor([40.0]), 9, 1.0, settings,
                                  light_position=lights)["rgb"][0, 4, 4]  # fmt: skip
    assert torch.allclose(outs["diffuse"], torch.tensor([0.9, 0.2, 0.1]), atol=2e-3)
    assert torch.allclose(outs["textureless"], torch.ones(3), atol=2e-3)


def test_analytic_normals_are_the_exact_gradient_and_train_the_table():
    cfg = tiny_config()
    field = Field(cfg.field).double()
    torch.nn.init.uniform_(field.encoding.table, -1.0, 1.0)  # a non-trivial field
    x = (torch.rand(300, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    out = field(x, with_normals=True)
    (grad,) = torch.autograd.grad(field.density(x).sum(), x)
    assert torch.allclose(out["normal"], -torch.nn.functional.normalize(grad, dim=-1), atol=1e-9)
    # the orientation loss reaches the table through the normals (first-order backward only)
    out["normal"][:, 0].sum().backward()
    assert field.encoding.table.grad.abs().sum() > 0


def test_threestudio_elevation_sampling():
    """Per step a fair coin: uniform in degrees, or threestudio's inverse transform, which maps
    the range percent linearly (so [0, 30] deg becomes [0, asin(1/3)] = [0, 19.47] deg)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([sample_elevations(generator, 0.0, 30.0, 2, "threestudio")
                        for _ in range(4000)])  # fmt: skip
    top = math.degrees(math.asin(1 / 3))
    assert values.min() >= 0 and values.max() <= 30
    above = (values > top + 1e-3).float().mean().item()
    assert abs(above - 0.5 * (30 - top) / 30) < 0.03  # only the uniform half reaches above
    uniform = torch.cat(
        [sample_elevations(generator, 0.0, 30.0, 2, "uniform") for _ in range(2000)]
    )
    assert abs(uniform.mean().item() - 15.0) < 0.5


def test_one_light_draw_per_view_group():
    c2w = orbit_cameras(8, 10.0, 40.0, 1.0).c2w()
    lights = sample_lights(torch.Generator().manual_seed(0), c2w, 1.0, (0.8, 1.5), 4)
    dist = lights.norm(dim=-1)
    assert torch.allclose(dist[:4], dist[0].expand(4)) and torch.allclose(dist[4:], dist[4])
    assert not torch.allclose(dist[0], dist[4])
    # direction = normalize(camera + n) with n shared per group: solve n up to the scale
    flat = sample_lights(torch.Generator().manual_seed(0), c2w, 0.0, (1.0, 1.0), 4)
    assert torch.allclose(flat, torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1), atol=1e-6)


def _sphere_grid(field, step):
    grid = OccupancyGrid(1.0, resolution=32, threshold=0.01, decay=0.95, dilate=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        grid.update(field, step_size=step, generator=generator)
    return grid


def test_samples_sit_near_the_surface_and_match_the_uncapped_render():
    field = SphereField(0.5, peak=400.0, smooth=True)
    step = step_size(1.0, 512)
    grid = _sphere_grid(field, step)
    c2w = camera_to_world(torch.tensor([10.0]), torch.tensor([30.0]), 2.5)
    capped = RenderSettings(512, stratified=False, proposal_samples=160, surface_samples=48)
    full = RenderSettings(512, stratified=False)  # every occupied march position: no caps
    out = render_views(field, c2w, torch.tensor([40.0]), 24, 1.0, capped, grid)
    ref = render_views(field, c2w, torch.tensor([40.0]), 24, 1.0, full, grid)
    assert ref["alpha"].max() > 0.99
    assert (out["alpha"] - ref["alpha"]).abs().max() < 0.02
    assert float(out["truncated"]) == 0.0
    # the graded samples of a centre ray lie in the first few hundredths past the surface
    origins = c2w[:, :3, 3].expand(1, 3)
    dirs = -torch.nn.functional.normalize(origins, dim=-1)
    core = _render_core(field, origins, dirs, torch.full((1,), 0.5), grid.occupied.view(32, 32, 32),
                        shade_parameters(capped, origins.device), origins, torch.ones(3), 1.0,
                        step, 512, 160, 48, 1.0, 1.0, 0.01, 1e-4, False, None)  # fmt: skip
    depth = float(core["depth"][0])
    assert abs(depth - 2.0) < 0.06  # the surface is at distance 2.5 - 0.5
    tight = RenderSettings(512, stratified=False, proposal_samples=96, surface_samples=2)
    few = render_views(field, c2w, torch.tensor([40.0]), 24, 1.0, tight, grid)
    assert float(few["truncated"]) > 0  # the cap is reported, not hidden


def test_render_step_traces_as_one_graph():
    """Static shapes and no host reads: dynamo captures the whole training render without a
    graph break (a boolean gather or an .item() would break it)."""
    cfg = tiny_config()
    field = Field(cfg.field)
    grid = OccupancyGrid(1.0, 16, 0.01, 0.95)
    rays = 64
    origins = torch.tensor([[0.0, -2.5, 0.3]]).expand(rays, 3)
    dirs = torch.nn.functional.normalize(-origins + 0.05 * torch.randn(rays, 3), dim=-1)
    settings = RenderSettings(48, shading="diffuse", ambient=0.4, need_normals=True)
    args = (field, origins, dirs, torch.rand(rays), grid.occupied.view(16, 16, 16),
            shade_parameters(settings, origins.device), origins * 2, torch.ones(3), 1.0,
            step_size(1.0, 48), 48, 32, 16, 0.5, 0.5, 0.01, 1e-4, True, None)  # fmt: skip
    explanation = torch._dynamo.explain(_render_core)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


class _TwoBlobs(SphereField):
    """A big ball and a small far one (a floater)."""

    def density(self, x):
        big = self.peak * (1 - x.norm(dim=-1) / 0.5).clamp_min(0)
        small = self.peak * (1 - (x - torch.tensor([0.75, 0.0, 0.0])).norm(dim=-1) / 0.08)
        return torch.maximum(big, small.clamp_min(0))


def test_mesh_export_drops_floaters(tmp_path):
    cfg = tiny_config("export.mesh_resolution=48", "export.mesh_formats=[ply]")
    save_mesh(_TwoBlobs(peak=100.0), cfg, tmp_path / "kept")
    record = json.loads((tmp_path / "kept" / "mesh.json").read_text())
    assert record["drop_floaters"] and record["components"] == 2
    assert record["dropped_components"] == 1 and record["dropped_faces"] > 0
    import trimesh

    mesh = trimesh.load(tmp_path / "kept" / "mesh.ply", force="mesh")
    assert np.linalg.norm(mesh.vertices, axis=1).max() < 0.5  # only the big ball is left
    raw = tiny_config("export.mesh_resolution=48", "export.mesh_formats=[ply]",
                      "export.drop_floaters=false")  # fmt: skip
    save_mesh(_TwoBlobs(peak=100.0), raw, tmp_path / "raw")
    everything = trimesh.load(tmp_path / "raw" / "mesh.ply", force="mesh")
    assert np.linalg.norm(everything.vertices, axis=1).max() > 0.7
    assert json.loads((tmp_path / "raw" / "mesh.json").read_text())["dropped_faces"] == 0


def test_packed_budgets_change_nothing_until_they_overflow():
    """The field runs only on the valid slots packed into a static buffer: with room for all of
    them the render is the unpacked one; an overflow drops the deepest samples and is reported."""
    field = SphereField(0.5, peak=400.0, smooth=True)
    grid = _sphere_grid(field, step_size(1.0, 256))
    c2w = camera_to_world(torch.tensor([10.0]), torch.tensor([30.0]), 2.5)

    def render(proposal_fill, surface_fill):
        settings = RenderSettings(256, stratified=False, proposal_samples=96, surface_samples=32,
                                  proposal_fill=proposal_fill, surface_fill=surface_fill)  # fmt: skip
        return render_views(field, c2w, torch.tensor([40.0]), 24, 1.0, settings, grid)

    full, packed, tight = render(1.0, 1.0), render(0.5, 0.5), render(0.05, 0.05)
    assert float(packed["dropped"]) == 0.0
    assert torch.allclose(packed["rgb"], full["rgb"], atol=1e-6)
    assert torch.allclose(packed["alpha"], full["alpha"], atol=1e-6)
    assert float(tight["dropped"]) > 0  # reported, and the first samples of every ray survive
    hit = full["alpha"] > 0.5
    assert (tight["alpha"][hit] > 0.3).all()


def test_compiled_form_of_the_hash_grid_matches(monkeypatch):
    """The explicit-term sums used under torch.compile give the eager features and Jacobian."""
    field = Field(tiny_config().field).double()
    torch.nn.init.uniform_(field.encoding.table, -1.0, 1.0)
    x = torch.rand(200, 3, dtype=torch.float64)
    eager = field.encoding(x, with_grad=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    unrolled = field.encoding(x, with_grad=True)
    for a, b in zip(eager, unrolled, strict=True):
        assert torch.allclose(a, b, atol=1e-12)

"""The exported mesh opens anywhere: GLB and OBJ+MTL+PNG, UV-unwrapped, with the field's albedo
baked into a texture whose colours match what the field renders from every side."""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from eval_helpers import SphereField, tiny_config
from PIL import Image

from evaluation.export import _TO_Y_UP, render_cameras, save_mesh
from evaluation.views import orbit_cameras
from models.cameras import project_points

SIZE = 64  # render side


class PaintedSphere(SphereField):
    """A sphere whose albedo varies over the surface: red towards +X, blue towards -X, the green
    channel rising with height, so a texture baked in the wrong place shows."""

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> dict[str, torch.Tensor]:
        out = super().forward(x, with_normals)
        side = (x[:, :1] / self.radius).clamp(-1, 1)
        height = (x[:, 2:3] / self.radius).clamp(-1, 1)
        red, blue = 0.5 + 0.45 * side, 0.5 - 0.45 * side
        out["albedo"] = torch.cat([red, 0.5 + 0.4 * height, blue], dim=1)
        return out


def _texture_at(mesh: trimesh.Trimesh, image: np.ndarray) -> np.ndarray:
    """Colour of each face's centre, read from the texture the way a viewer does (nearest)."""
    uv = mesh.visual.uv[mesh.faces].mean(axis=1)
    size = image.shape[0]
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return image[rows, cols, :3] / 255.0


def _render_error(mesh: trimesh.Trimesh, image: np.ndarray, field, cfg) -> float:
    """Mean |texture - render| over faces seen head-on in 4 renders of the field."""
    cameras = orbit_cameras(4, 0.0, 40.0, 0.9)
    renders = render_cameras(field, None, cameras, SIZE, cfg, background=(1.0, 1.0, 1.0))
    centres = torch.from_numpy((mesh.triangles_center @ _TO_Y_UP).astype(np.float32))
    normals = torch.from_numpy((mesh.face_normals @ _TO_Y_UP).astype(np.float32))
    colours = torch.from_numpy(_texture_at(mesh, image)).float()
    errors = []
    for view, c2w in enumerate(cameras.c2w()):
        pixels, _ = project_points(centres, c2w, 40.0, SIZE)
        towards = torch.nn.functional.normalize(c2w[:3, 3] - centres, dim=1)
        seen = (normals * towards).sum(1) > 0.8
        col, row = pixels[seen].round().long().unbind(1)
        rendered = renders["rgb"][view][row.clamp(0, SIZE - 1), col.clamp(0, SIZE - 1)]
        errors.append((rendered - colours[seen]).abs().mean(1))
    return float(torch.cat(errors).mean())


def test_glb_and_obj_are_uv_textured_with_the_fields_colours(tmp_path):
    cfg = tiny_config("export.mesh_resolution=40", "export.texture_size=128",
                      "export.mesh_formats=[glb, obj, ply]", "renderer.samples_per_ray=96")  # fmt: skip
    field = PaintedSphere(0.5, peak=100.0, smooth=True)
    paths = save_mesh(field, cfg, tmp_path)
    names = {p.name for p in paths}
    assert {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply"} <= names
    glb = trimesh.load(tmp_path / "mesh.glb", force="mesh")
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals)
    assert glb.visual.uv.shape == (len(glb.vertices), 2)
    assert 0.0 <= glb.visual.uv.min() and glb.visual.uv.max() <= 1.0
    texture = np.asarray(glb.visual.material.baseColorTexture.convert("RGB"))
    assert texture.shape == (128, 128, 3)
    obj = trimesh.load(tmp_path / "mesh.obj", force="mesh")  # finds mesh.mtl and the PNG
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals) and obj.visual.uv is not None
    assert np.array_equal(np.asarray(obj.visual.material.image.convert("RGB")), texture)
    assert "Kd 1 1 1" in (tmp_path / "mesh.mtl").read_text()
    ply = trimesh.load(tmp_path / "mesh.ply", force="mesh")
    assert ply.visual.kind == "vertex"

    error = _render_error(glb, texture, field, cfg)
    assert error < 0.06, error
    mirrored = np.asarray(Image.fromarray(texture).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert _render_error(glb, mirrored, field, cfg) > 2 * error + 0.05  # the check can fail


def test_texture_size_zero_keeps_vertex_colours(tmp_path):
    cfg = tiny_config("export.mesh_resolution=24", "export.texture_size=0",
                      "export.mesh_formats=[glb]")  # fmt: skip
    save_mesh(PaintedSphere(0.5, peak=100.0, smooth=True), cfg, tmp_path)
    assert trimesh.load(tmp_path / "mesh.glb", force="mesh").visual.kind == "vertex"

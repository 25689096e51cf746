"""A UV-unwrapped mesh with the field's albedo baked into a texture (GLB, OBJ+MTL+PNG): the form
threestudio-style tools and every 3D viewer open, where vertex colours are non-standard (OBJ) or
too coarse. xatlas unwraps; each texel's surface point is found by rasterising the triangles in
UV space, and the field is queried there. Empty texels take their nearest baked neighbour's colour
so bilinear filtering at chart borders does not bleed background into the surface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
import xatlas
from PIL import Image, ImageDraw
from scipy import ndimage

PADDING_TEXELS = 2  # gutter between charts in the atlas


def unwrap(mesh: trimesh.Trimesh, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertex index into ``mesh.vertices`` per new vertex, faces, uv ``[0,1]^2``) from xatlas."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = PADDING_TEXELS
    atlas.generate(pack_options=pack)
    vmapping, faces, uvs = atlas[0]
    return vmapping.astype(np.int64), faces.astype(np.int64), uvs.astype(np.float64)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per texel of a ``size``^2 texture: the face covering it (-1: none) and its barycentric
    coordinates ``[S,S,3]``. Row 0 is the top of the image (v = 1), as glTF and OBJ expect."""
    ids = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    corners = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)
    for index, face in enumerate(faces):  # PIL fills in C; a face id per texel
        draw.polygon([tuple(p) for p in corners[face]], fill=index + 1, outline=index + 1)
    face_of = np.asarray(ids, dtype=np.int64) - 1
    rows, cols = np.nonzero(face_of >= 0)
    centre = np.stack([cols + 0.5, rows + 0.5], axis=1)
    tri = corners[faces[face_of[rows, cols]]]  # [N,3,2]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, centre - a
    det = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    beta = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / det
    gamma = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / det
    weights = np.clip(np.stack([1 - beta - gamma, beta, gamma], axis=1), 0.0, 1.0)
    weights /= weights.sum(axis=1, keepdims=True).clip(min=1e-12)  # edge texels: onto the face
    bary = np.zeros((size, size, 3))
    bary[rows, cols] = weights
    return face_of, bary


def fill_gutters(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the colour of the nearest covered one."""
    if covered.all() or not covered.any():
        return texture
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return texture[rows, cols]


@torch.no_grad()
def bake(
    field: torch.nn.Module,
    mesh: trimesh.Trimesh,
    size: int,
    to_field: np.ndarray,
) -> trimesh.Trimesh:
    """``mesh`` unwrapped, with the field's albedo (at ``vertices @ to_field.T`` in the field's
    frame) baked into a ``size``^2 texture; returns a textured mesh."""
    vmapping, faces, uv = unwrap(mesh, size)
    vertices = np.asarray(mesh.vertices, np.float64)[vmapping]
    face_of, bary = rasterize_uv(uv, faces, size)
    covered = face_of >= 0
    points = np.einsum("nk,nkd->nd", bary[covered], vertices[faces[face_of[covered]]])
    device = next(field.parameters()).device
    query = torch.from_numpy((points @ to_field.T).astype(np.float32)).to(device)
    albedo = [field(chunk)["albedo"].float().cpu() for chunk in query.split(65536)]
    colours = torch.cat(albedo).clamp(0, 1).numpy() if albedo else np.zeros((0, 3))
    texture = np.ones((size, size, 3))
    texture[covered] = colours
    texture = fill_gutters(texture, covered)
    image = Image.fromarray((texture * 255 + 0.5).astype(np.uint8), "RGB")
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0, name="albedo"
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    textured = trimesh.Trimesh(vertices, faces, visual=visual, process=False)
    textured.metadata.update(mesh.metadata)
    return textured


def save_textured(mesh: trimesh.Trimesh, folder: Path, formats: list[str]) -> list[Path]:
    """``mesh.glb`` (texture embedded) and/or ``mesh.obj`` + ``mesh.mtl`` + ``mesh_albedo.png``."""
    paths = []
    if "glb" in formats:
        paths.append(folder / "mesh.glb")
        mesh.export(paths[-1])
    if "obj" in formats:
        text, _ = trimesh.exchange.obj.export_obj(
            mesh, include_texture=True, mtl_name="mesh.mtl", return_texture=True
        )
        (folder / "mesh.obj").write_text(text.replace("usemtl material_0", "usemtl albedo"))
        mesh.visual.material.baseColorTexture.save(folder / "mesh_albedo.png")
        # Our own .mtl: trimesh's sets Kd 0.4, which viewers multiply into the texture.
        (folder / "mesh.mtl").write_text(
            "newmtl albedo\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd mesh_albedo.png\n"
        )
        paths += [folder / "mesh.obj", folder / "mesh.mtl", folder / "mesh_albedo.png"]
    return paths

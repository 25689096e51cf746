"""Exports of a trained field: N-view renders, a turntable video and a mesh (small disconnected
pieces -- floaters -- dropped by default), UV-textured (evaluation/texture.py) or vertex-coloured."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import trimesh
from PIL import Image
from skimage.measure import marching_cubes

from evaluation import texture
from evaluation.renderer import OccupancyGrid, render_settings, render_views
from evaluation.views import CameraBatch, orbit_cameras

# Blender world (z up, front on -Y) -> glTF/OBJ (y up, front on +Z): the inverse of the mapping
# Blender's glTF importer applies, so an exported mesh re-imports in our orientation.
_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)


@torch.no_grad()
def render_cameras(
    field: torch.nn.Module,
    occupancy: OccupancyGrid | None,
    cameras: CameraBatch,
    size: int,
    cfg,
    background: tuple[float, float, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Deterministic (unjittered, albedo) renders at ``cameras``; rgb ``[B,H,W,3]`` in [0,1]."""
    device = next(field.parameters()).device
    settings = render_settings(
        cfg,
        device,
        stratified=False,
        background=tuple(background or cfg.renderer.background),
        chunk_rays=cfg.renderer.eval_chunk_rays,
        proposal_samples=cfg.renderer.samples_per_ray,  # no cap: no gradient, chunked
        surface_samples=cfg.renderer.samples_per_ray,
        proposal_fill=1.0,  # every slot: exact, no budget
        surface_fill=1.0,
    )
    out = render_views(
        field,
        cameras.c2w().to(device),
        cameras.fov_deg.to(device),
        size,
        cfg.field.radius,
        settings,
        occupancy,
    )
    return {k: v.float().cpu() for k, v in out.items()}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[..., 3]`` floats in [0,1] -> uint8 array."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def save_views(field, occupancy, cfg, folder: Path) -> list[Path]:
    """The N-view renders (PNG, RGBA with the rendered alpha) around the object."""
    exp = cfg.export
    cameras = orbit_cameras(exp.views, exp.elevation_deg, exp.fov_deg, exp.relative_radius)
    out = render_cameras(field, occupancy, cameras, exp.resolution, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    rgba = torch.cat([out["rgb"], out["alpha"][..., None]], dim=-1)
    paths = []
    for index, image in enumerate(to_uint8(rgba)):
        path = folder / f"view_{index:03d}.png"
        Image.fromarray(image, "RGBA").save(path)
        paths.append(path)
    return paths


def save_turntable(field, occupancy, cfg, path: Path) -> Path:
    """One revolution as an H.264 mp4 (yuv420p so browsers play it)."""
    exp = cfg.export
    cameras = orbit_cameras(
        exp.turntable_frames, exp.elevation_deg, exp.fov_deg, exp.relative_radius
    )
    frames = to_uint8(
        render_cameras(field, occupancy, cameras, exp.turntable_resolution, cfg)["rgb"]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        path, fps=exp.turntable_fps, codec="libx264", pixelformat="yuv420p", macro_block_size=16
    )
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    return path


def drop_floaters(mesh: trimesh.Trimesh, min_fraction: float) -> tuple[trimesh.Trimesh, dict]:
    """Keep the connected components (faces sharing an edge) whose face count is at least
    ``min_fraction`` of the largest one's; the largest is always kept."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, len(mesh.faces))
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, int)
    info = {"components": int(len(sizes)), "dropped_components": 0, "dropped_faces": 0}
    if len(sizes) <= 1:
        return mesh, info
    keep = sizes >= min_fraction * sizes.max()
    mask = keep[labels]
    info["dropped_components"] = int((~keep).sum())
    info["dropped_faces"] = int((~mask).sum())
    if mask.all():
        return mesh, info
    kept = mesh.submesh([np.nonzero(mask)[0]], append=True, repair=False)
    return kept, info


@torch.no_grad()
def extract_mesh(field, cfg) -> trimesh.Trimesh:
    """Marching cubes on the density grid, vertex colours from the albedo at the vertices."""
    exp, radius = cfg.export, cfg.field.radius
    device = next(field.parameters()).device
    res = exp.mesh_resolution
    axis = torch.linspace(-radius, radius, res, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    density = torch.cat([field.density(chunk) for chunk in grid.split(65536)])
    volume = density.reshape(res, res, res).float().cpu().numpy()
    level = float(exp.mesh_threshold)
    if not volume.min() < level < volume.max():
        level = float(volume.mean())  # the configured level misses the field: fall back
    if not volume.min() < level < volume.max():
        raise ValueError("the density field is constant: no surface to extract")
    spacing = (2 * radius / (res - 1),) * 3
    verts, faces, _, _ = marching_cubes(volume, level=level, spacing=spacing)
    verts = verts - radius
    points = torch.from_numpy(verts.astype(np.float32)).to(device)
    albedo = torch.cat([field(chunk)["albedo"] for chunk in points.split(65536)]).cpu()
    colours = np.concatenate([to_uint8(albedo), np.full((len(verts), 1), 255, np.uint8)], 1)
    # marching_cubes returns faces wound for an outward normal along +gradient; density grows
    # inwards, so flip them to point outwards.
    mesh = trimesh.Trimesh(
        vertices=verts.astype(np.float32) @ _TO_Y_UP.T,
        faces=faces[:, ::-1],
        vertex_colors=colours,
        process=False,
    )
    # Recorded in mesh.json and shown in the report: a fallen-back level usually means the
    # "mesh" is the initial blob, not the object.
    configured = float(exp.mesh_threshold)
    floaters = {"components": None, "dropped_components": 0, "dropped_faces": 0}
    if exp.drop_floaters:
        mesh, floaters = drop_floaters(mesh, float(exp.floater_min_fraction))
    mesh.metadata.update(
        iso_level=level, configured_level=configured, iso_fallback=level != configured,
        drop_floaters=bool(exp.drop_floaters), **floaters,
    )  # fmt: skip
    return mesh


def save_mesh(field, cfg, folder: Path) -> list[Path]:
    """The mesh in ``export.mesh_formats``: GLB and OBJ (+MTL+PNG) UV-unwrapped with the albedo
    baked into a texture (``export.texture_size``; 0: vertex colours), PLY vertex-coloured."""
    mesh = extract_mesh(field, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    formats = list(cfg.export.mesh_formats)
    for fmt in formats:
        if fmt not in ("glb", "obj", "ply"):
            raise ValueError(f"config key 'export.mesh_formats': unknown format {fmt!r}")
    size = int(cfg.export.texture_size)
    textured = [f for f in formats if f in ("glb", "obj")] if size else []
    paths = texture.save_textured(texture.bake(field, mesh, size, _TO_Y_UP.T), folder, textured)
    for fmt in (f for f in formats if f not in textured):
        path = folder / f"mesh.{fmt}"
        mesh.export(path)
        paths.append(path)
    keys = ("iso_level", "configured_level", "iso_fallback", "drop_floaters", "components",
            "dropped_components", "dropped_faces")  # fmt: skip
    info = {k: mesh.metadata[k] for k in keys} | {"texture_size": size if textured else 0}
    (folder / "mesh.json").write_text(json.dumps(info, indent=2) + "\n")
    return paths

"""Geometry renders for the report: normal maps and textureless (white, headlight-shaded) views at
the export cameras, so a reader judges the shape apart from the albedo. The shading itself is the
renderer's (``RenderSettings.shading``); this module only picks the cameras and writes PNGs."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from evaluation.export import to_uint8
from evaluation.renderer import render_settings, render_views
from evaluation.views import orbit_cameras

AMBIENT = 0.3  # share of unshaded light in the textureless views (keeps grazing faces visible)


@torch.no_grad()
def save_geometry_views(field, occupancy, cfg, folder: Path) -> dict[str, list[Path]]:
    """``normal/view_NNN.png`` (world normals as ``(n + 1) / 2`` on white) and
    ``textureless/view_NNN.png`` at the cameras of ``export.views``."""
    exp = cfg.export
    cameras = orbit_cameras(exp.views, exp.elevation_deg, exp.fov_deg, exp.relative_radius)
    device = next(field.parameters()).device
    c2w = cameras.c2w().to(device)
    # The exports' sampler (renderer.*), unjittered, with the renderer's textureless shading.
    settings = render_settings(
        cfg,
        device,
        stratified=False,
        background=(1.0, 1.0, 1.0),
        chunk_rays=cfg.renderer.eval_chunk_rays,
        shading="textureless",
        ambient=AMBIENT,
        need_normals=True,
        proposal_samples=cfg.renderer.samples_per_ray,  # no cap: no gradient, chunked (as exports)
        surface_samples=cfg.renderer.samples_per_ray,
    )
    out = render_views(
        field,
        c2w,
        cameras.fov_deg.to(device),
        exp.resolution,
        cfg.field.radius,
        settings,
        occupancy,
        light_position=c2w[:, :3, 3],  # a headlight: the camera centre
    )
    alpha = out["alpha"].float().cpu()[..., None]
    normal = torch.nn.functional.normalize(out["normal"].float().cpu(), dim=-1)
    images = {
        "normal": (normal * 0.5 + 0.5) * alpha + (1 - alpha),
        "textureless": out["rgb"].float().cpu(),
    }
    written: dict[str, list[Path]] = {}
    for kind, batch in images.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        written[kind] = []
        for index, image in enumerate(to_uint8(batch)):
            path = folder / kind / f"view_{index:03d}.png"
            Image.fromarray(image, "RGB").save(path)
            written[kind].append(path)
    return written

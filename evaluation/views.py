"""Camera sets for SDS and evaluation, all built with the one camera module ``models/cameras.py``.

SDS draws, per step, groups of ``views`` cameras at evenly spaced azimuths with a random start and
one shared elevation, fov and distance (the isotropic sampler of MVDream/Isotropic3D); evaluation
uses fixed orbits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.cameras import (
    OrbitGroup,
    OrbitRanges,
    distance_for_fov,
    orthogonal_azimuths,
    sample_orbit_group,
)

# ``B`` cameras in object-major groups of ``views``: the camera module's group type.
CameraBatch = OrbitGroup


def sample_sds_cameras(generator: torch.Generator, cameras_cfg, batch_views: int) -> CameraBatch:
    """``batch_views // views`` isotropic groups; the azimuth start is drawn from
    ``cameras.azimuth_deg`` and elevation/fov/relative radius from their configured ranges."""
    ranges = OrbitRanges(
        elevation_deg=tuple(cameras_cfg.elevation_deg),
        fov_deg=tuple(cameras_cfg.fov_deg),
        relative_radius=tuple(cameras_cfg.relative_radius),
        azimuth_start_deg=tuple(cameras_cfg.azimuth_deg),
    )
    groups = [
        sample_orbit_group(generator, cameras_cfg.views, ranges)
        for _ in range(batch_views // cameras_cfg.views)
    ]
    return OrbitGroup.concat(groups)


def orbit_cameras(
    num_views: int,
    elevation_deg: float,
    fov_deg: float,
    relative_radius: float,
    azimuth_start_deg: float = 0.0,
) -> CameraBatch:
    """``num_views`` cameras evenly spaced in azimuth (turntables, scoring views)."""
    full = torch.ones(num_views)
    return CameraBatch(
        elevation_deg=full * elevation_deg,
        azimuth_deg=orthogonal_azimuths(azimuth_start_deg, num_views),
        fov_deg=full * fov_deg,
        distance=full * float(distance_for_fov(fov_deg, relative_radius)),
    )


def sample_lights(
    generator: torch.Generator, c2w: torch.Tensor, perturb: float, distance: tuple[float, float]
) -> torch.Tensor:
    """One point light per view ``[B,3]`` near the camera's direction (Magic3D's strategy), so the
    lit side is mostly the visible side and shading reveals geometry."""
    cam_dir = F.normalize(c2w[:, :3, 3], dim=-1)
    noise = torch.randn(cam_dir.shape, generator=generator).to(cam_dir) * perturb
    dist = torch.rand(cam_dir.shape[0], generator=generator).to(cam_dir)
    dist = distance[0] + (distance[1] - distance[0]) * dist
    return F.normalize(cam_dir + noise, dim=-1) * dist[:, None]

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


def sample_elevations(generator: torch.Generator, low: float, high: float, groups: int, mode: str):
    """One elevation (degrees) per group. ``threestudio`` (the released sampler): per step a fair
    coin picks uniform-in-degrees or uniform-on-the-sphere (inverse-transform ``asin``) for all
    groups; ``uniform``: always uniform in degrees."""
    u = torch.rand(groups, generator=generator, dtype=torch.float64)
    on_sphere = mode == "threestudio" and torch.rand((), generator=generator).item() >= 0.5
    if mode not in ("threestudio", "uniform"):
        raise ValueError(
            f"config key 'cameras.elevation_sampling': {mode!r} not threestudio|uniform"
        )
    if not on_sphere:
        return (low + (high - low) * u).float()
    p0, p1 = (low + 90.0) / 180.0, (high + 90.0) / 180.0
    return torch.rad2deg(torch.asin(2 * (p0 + (p1 - p0) * u) - 1)).float()


def sample_sds_cameras(generator: torch.Generator, cameras_cfg, batch_views: int) -> CameraBatch:
    """``batch_views // views`` isotropic groups; the azimuth start is drawn from
    ``cameras.azimuth_deg``, elevation by ``cameras.elevation_sampling`` and fov/relative radius
    from their configured ranges (distance from ``models.cameras.distance_for_fov``)."""
    groups = batch_views // cameras_cfg.views
    low, high = cameras_cfg.elevation_deg
    elevations = sample_elevations(
        generator, low, high, groups, cameras_cfg.get("elevation_sampling", "uniform")
    )
    out = []
    for elevation in elevations.tolist():
        ranges = OrbitRanges(
            elevation_deg=(elevation, elevation),
            fov_deg=tuple(cameras_cfg.fov_deg),
            relative_radius=tuple(cameras_cfg.relative_radius),
            azimuth_start_deg=tuple(cameras_cfg.azimuth_deg),
        )
        out.append(sample_orbit_group(generator, cameras_cfg.views, ranges))
    return OrbitGroup.concat(out)


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
    generator: torch.Generator,
    c2w: torch.Tensor,
    perturb: float,
    distance: tuple[float, float],
    views_per_group: int = 1,
) -> torch.Tensor:
    """Point lights ``[B,3]`` near each camera, as the released sampler draws them (threestudio's
    ``dreamfusion`` strategy): direction ``normalize(camera_position + n)`` and a distance, with
    the noise ``n ~ N(0, perturb^2)`` and the distance shared by each group of
    ``views_per_group`` views (one light draw per group; each view adds its own camera)."""
    groups = c2w.shape[0] // views_per_group
    noise = torch.randn(groups, 3, generator=generator).to(c2w) * perturb
    dist = torch.rand(groups, generator=generator).to(c2w)
    dist = distance[0] + (distance[1] - distance[0]) * dist
    noise = noise.repeat_interleave(views_per_group, 0)
    dist = dist.repeat_interleave(views_per_group, 0)
    return F.normalize(c2w[:, :3, 3] + noise, dim=-1) * dist[:, None]

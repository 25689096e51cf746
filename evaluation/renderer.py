"""Volume renderer with empty-space skipping, for any field that has ``density(x)`` and
``forward(x, with_normals)`` (the learned :class:`evaluation.field.Field` or an analytic one).

Rays come from the camera convention of ``models/cameras.py`` (OpenGL axes: the camera looks down
its -Z, +Y up, pixel rows go down). Samples are stratified between the ray's entry and exit of the
scene cube; an occupancy grid drops samples in empty cells before the field is evaluated, and rays
that miss the cube are never evaluated at all. Compositing is front-to-back alpha over a solid
background colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.field import shade
from models.cameras import focal_length_px


def generate_rays(
    c2w: torch.Tensor, fov_deg: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre rays for ``c2w`` ``[B,4,4]`` and ``fov_deg`` ``[B]``: origins and unit
    directions, each ``[B, size, size, 3]``."""
    device, dtype = c2w.device, c2w.dtype
    focal = focal_length_px(fov_deg.to(device=device, dtype=dtype), size)  # [B]
    coords = torch.arange(size, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    x = (u - size / 2)[None] / focal[:, None, None]
    y = -(v - size / 2)[None] / focal[:, None, None]
    cam_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    dirs = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], cam_dirs)
    dirs = F.normalize(dirs, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def ray_cube(
    origins: torch.Tensor, dirs: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry/exit distances of rays ``[R,3]`` through the cube ``[-radius, radius]^3`` and a hit
    mask (slab method)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) / safe, (radius - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


class OccupancyGrid(nn.Module):
    """Binary grid of cells that may hold density, refreshed from the field every few steps.

    The running per-cell density is ``max(decay * old, new)`` at jittered cell points (nerfacc's
    rule), and a cell is occupied when that density gives an alpha above ``threshold`` over one
    sample step, with the threshold capped by the mean so a fading field never empties the grid.
    One jittered point per cell can miss a cell that the surface only clips, so the occupied set
    is dilated by ``dilate`` cells.
    """

    def __init__(
        self, radius: float, resolution: int, threshold: float, decay: float, dilate: int = 1
    ):
        super().__init__()
        self.radius, self.resolution = radius, resolution
        self.threshold, self.decay, self.dilate = threshold, decay, dilate
        self.register_buffer("density", torch.zeros(resolution**3))
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))
        idx = torch.arange(resolution)
        grid = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("cells", grid, persistent=False)

    @torch.no_grad()
    def update(self, field: nn.Module, step_size: float, generator: torch.Generator | None = None):
        cell = 2 * self.radius / self.resolution
        jitter = torch.rand(self.cells.shape, generator=generator).to(self.density.device)
        points = -self.radius + (self.cells.to(jitter.dtype) + jitter) * cell
        sigma = torch.cat([field.density(chunk) for chunk in points.split(65536)])
        self.density.copy_(torch.maximum(self.density * self.decay, sigma.to(self.density.dtype)))
        alpha = 1 - torch.exp(-self.density * step_size)
        threshold = min(self.threshold, alpha.mean().item())
        occupied = (alpha > threshold).float().view(1, 1, *(self.resolution,) * 3)
        if self.dilate > 0:
            occupied = F.max_pool3d(occupied, 2 * self.dilate + 1, stride=1, padding=self.dilate)
        self.occupied.copy_(occupied.flatten() > 0)

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """``[N,3]`` world points -> bool ``[N]``: inside an occupied cell."""
        idx = ((points + self.radius) / (2 * self.radius) * self.resolution).long()
        inside = ((idx >= 0) & (idx < self.resolution)).all(-1)
        idx = idx.clamp(0, self.resolution - 1)
        flat = (idx[:, 0] * self.resolution + idx[:, 1]) * self.resolution + idx[:, 2]
        return inside & self.occupied[flat]


@dataclass
class RenderSettings:
    samples_per_ray: int = 64
    stratified: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunk_rays: int = 0  # 0: all rays at once (needed for gradients); >0 splits no-grad renders
    shading: str = "albedo"  # albedo | diffuse | textureless
    ambient: float = 1.0  # ambient share of the light in diffuse modes
    need_normals: bool = False
    normal_min_weight: float = 1e-4  # normals only at samples whose weight exceeds this


def _composite(sigma: torch.Tensor, t: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Front-to-back weights ``T_i * alpha_i`` for densities ``[R, S]``."""
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], 1), 1)
    return alpha * trans[:, :-1]


def render_rays(
    field: nn.Module,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    radius: float,
    settings: RenderSettings,
    occupancy: OccupancyGrid | None = None,
    light_position: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Render ``[R]`` rays. Returns ``rgb [R,3]``, ``alpha [R]``, ``depth [R]`` (distance along
    the ray of the expected hit, 0 where empty), ``normal [R,3]`` and ``orient`` (Ref-NeRF
    orientation penalty summed over rays, only with normals). ``light_position`` ``[R,3]``."""
    rays, samples = origins.shape[0], settings.samples_per_ray
    near, far, hit = ray_cube(origins, dirs, radius)
    near, far = torch.where(hit, near, 0.0), torch.where(hit, far, 1.0)
    steps = torch.arange(samples, device=origins.device, dtype=origins.dtype)
    if settings.stratified:
        offsets = torch.rand((rays, samples), generator=generator).to(origins)
    else:
        offsets = torch.full((rays, samples), 0.5, device=origins.device, dtype=origins.dtype)
    span = far - near
    t = near[:, None] + span[:, None] * (steps[None] + offsets) / samples  # [R, S]
    delta = torch.cat([t[:, 1:] - t[:, :-1], span[:, None] - t[:, -1:] + near[:, None]], 1)
    points = origins[:, None] + dirs[:, None] * t[..., None]  # [R, S, 3]
    keep = hit[:, None].expand(rays, samples)
    if occupancy is not None:
        keep = keep & occupancy.query(points.reshape(-1, 3)).reshape(rays, samples)
    flat_keep = keep.reshape(-1)
    flat_points = points.reshape(-1, 3)
    kept_points = flat_points[flat_keep]
    sigma = torch.zeros(rays * samples, device=origins.device, dtype=origins.dtype)
    colour = torch.zeros(rays * samples, 3, device=origins.device, dtype=origins.dtype)
    normal = torch.zeros_like(colour)
    if kept_points.shape[0]:
        out = field(kept_points)
        sigma = sigma.masked_scatter(flat_keep, out["density"].to(sigma.dtype))
        colour = colour.masked_scatter(flat_keep[:, None], out["albedo"].to(colour.dtype))
    weights = _composite(sigma.reshape(rays, samples), t, delta)  # [R, S]
    want_normals = settings.need_normals or settings.shading != "albedo"
    if want_normals:
        # Normals cost 6 density evaluations (finite differences) or a double backward, so
        # they are computed only where a sample's weight is visible at all.
        visible = weights.detach().reshape(-1) > settings.normal_min_weight
        visible_points = flat_points[visible]
        if visible_points.shape[0]:
            normals = field.normals(visible_points).to(normal.dtype)
            normal = normal.masked_scatter(visible[:, None], normals)
            if settings.shading != "albedo":
                light = None
                if light_position is not None:
                    light = light_position[:, None].expand(rays, samples, 3).reshape(-1, 3)
                    light = light[visible]
                shaded = shade(
                    colour[visible],
                    normals,
                    visible_points,
                    light,
                    settings.shading,
                    settings.ambient,
                )
                shaded = torch.zeros_like(colour).masked_scatter(visible[:, None], shaded)
                colour = torch.where(visible[:, None], shaded, colour * settings.ambient)
    alpha = weights.sum(-1)
    background = torch.tensor(settings.background, device=origins.device, dtype=origins.dtype)
    result = {
        "rgb": (weights[..., None] * colour.reshape(rays, samples, 3)).sum(1)
        + (1 - alpha[:, None]) * background,
        "alpha": alpha,
        "depth": (weights * t).sum(-1) / alpha.clamp_min(1e-8) * (alpha > 1e-4),
        "normal": (weights[..., None] * normal.reshape(rays, samples, 3)).sum(1),
    }
    if want_normals:
        facing = (normal.reshape(rays, samples, 3) * dirs[:, None]).sum(-1).clamp_min(0.0)
        result["orient"] = (weights.detach() * facing**2).sum()
        result["orient_rays"] = (alpha.detach() > 0).sum()
    return result


def render_views(
    field: nn.Module,
    c2w: torch.Tensor,
    fov_deg: torch.Tensor,
    size: int,
    radius: float,
    settings: RenderSettings,
    occupancy: OccupancyGrid | None = None,
    light_position: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Render ``B`` views ``[B,size,size,...]``: rgb, alpha, depth, normal (+ orientation terms).
    ``light_position`` is one point light per view ``[B,3]``."""
    origins, dirs = generate_rays(c2w, fov_deg, size)
    views = c2w.shape[0]
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    lights = None
    if light_position is not None:
        lights = light_position[:, None].expand(views, size * size, 3).reshape(-1, 3)
    chunk = settings.chunk_rays if settings.chunk_rays > 0 else origins.shape[0]
    parts = []
    for start in range(0, origins.shape[0], chunk):
        sl = slice(start, start + chunk)
        parts.append(
            render_rays(
                field,
                origins[sl],
                dirs[sl],
                radius,
                settings,
                occupancy,
                None if lights is None else lights[sl],
                generator,
            )
        )
    result = {}
    for key in parts[0]:
        if parts[0][key].dim() == 0:
            result[key] = sum(p[key] for p in parts)
        else:
            merged = torch.cat([p[key] for p in parts])
            result[key] = merged.reshape(views, size, size, *merged.shape[1:])
    return result

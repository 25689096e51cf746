"""Volume renderer with empty-space skipping, for any field that has ``density(x)`` and
``forward(x, with_normals)`` (the learned :class:`evaluation.field.Field` or an analytic one).

Rays come from the camera convention of ``models/cameras.py`` (OpenGL axes: the camera looks down
its -Z, +Y up, pixel rows go down). Sampling follows nerfacc's occupancy-grid estimator as the
released recipe uses it: march at the fixed step ``1.732 * 2 * radius / samples_per_ray`` (one
stratified offset per ray), keep the positions in occupied cells, evaluate their density without
gradient and keep those with alpha above ``alpha_threshold`` while the transmittance is above
``early_stop`` -- the samples near surfaces -- then run the field with gradient (and normals) on
those. Every stage has a static shape: each ray keeps at most ``proposal_samples`` occupied
positions and ``surface_samples`` surface samples (compacted with a cumulative-sum rank, not a
boolean gather), so a step has no host sync and compiles to one graph per resolution. Compositing
is front-to-back alpha over a solid background colour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from evaluation.occupancy import OccupancyGrid
from models.cameras import focal_length_px

__all__ = ["OccupancyGrid", "RenderSettings", "render_rays", "render_views", "render_settings"]


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


@dataclass
class RenderSettings:
    samples_per_ray: int = 512  # march step = 1.732 * 2 * radius / samples_per_ray (nerfacc's)
    stratified: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunk_rays: int = 0  # rays per chunk (0: all at once); with gradient, chunks are checkpointed
    shading: str = "albedo"  # albedo | diffuse | textureless
    ambient: float = 1.0  # ambient share of the light in diffuse modes (the rest is diffuse)
    need_normals: bool = False
    proposal_samples: int = 0  # occupied positions kept per ray (0: samples_per_ray, no cap)
    surface_samples: int = 0  # samples per ray the field runs on with gradient (0: proposal's)
    proposal_fill: float = 1.0  # share of the [rays, proposal] slots evaluated (packed; 1: all)
    surface_fill: float = 1.0  # share of the [rays, surface] slots evaluated (packed; 1: all)
    alpha_threshold: float = 0.01  # nerfacc's alpha_thre of the recipe's renderer
    early_stop: float = 1e-4  # nerfacc's early_stop_eps (transmittance)
    compile: bool = False  # run the step through torch.compile (one graph per shape)
    proposal_dtype: torch.dtype | None = None  # autocast dtype of the no-grad density pass


def render_settings(cfg, device: torch.device, **changes) -> RenderSettings:
    """The renderer settings of the config (``renderer.*``, ``speed.*``); ``changes`` on top."""
    rcfg = cfg.renderer
    bf16 = cfg.speed.proposal_bf16 and device.type == "cuda"
    settings = RenderSettings(
        samples_per_ray=rcfg.samples_per_ray,
        background=tuple(rcfg.background),
        proposal_samples=rcfg.proposal_samples,
        surface_samples=rcfg.surface_samples,
        proposal_fill=rcfg.proposal_fill,
        surface_fill=rcfg.surface_fill,
        alpha_threshold=rcfg.alpha_threshold,
        early_stop=rcfg.early_stop,
        proposal_dtype=torch.bfloat16 if bf16 else None,
        chunk_rays=rcfg.grad_chunk_rays,
    )
    return dataclasses.replace(settings, **changes)


def step_size(radius: float, samples_per_ray: int) -> float:
    """The march step of the recipe's renderer: ``1.732 * 2 * radius / samples_per_ray``."""
    return 1.732 * 2 * radius / samples_per_ray


def _exclusive_transmittance(alpha: torch.Tensor) -> torch.Tensor:
    ones = torch.ones_like(alpha[:, :1])
    return torch.cumprod(torch.cat([ones, 1 - alpha + 1e-10], 1), 1)[:, :-1]


def _first_k(mask: torch.Tensor, values: torch.Tensor, k: int, fill: torch.Tensor):
    """The first ``k`` entries of each row of ``values`` where ``mask`` holds, packed to the
    front of ``[R, k]`` (rank by cumulative sum, written with a scatter: a static shape), with
    their validity and each row's count before the cap."""
    rank = mask.long().cumsum(1) - 1
    slot = torch.where(mask & (rank < k), rank, torch.full_like(rank, k))  # k = discard slot
    out = fill[:, None].expand(-1, k + 1).clone()
    out.scatter_(1, slot, values)
    count = mask.sum(1)
    valid = torch.arange(k, device=mask.device)[None] < count[:, None]
    return out[:, :k], valid, count


def _pack_index(valid: torch.Tensor, fill: float):
    """Indices (into the flattened ``[R, K]``) of at most ``ceil(fill * R * K)`` valid slots,
    sample-major (every ray's first sample, then every ray's second, ...: an overflow drops the
    deepest samples of all rays first), which of them are used, and how many were dropped."""
    rays, k = valid.shape
    budget = max(1, min(rays * k, math.ceil(fill * rays * k)))
    order = valid.t().reshape(-1)
    rank = order.long().cumsum(0) - 1
    slot = torch.where(order & (rank < budget), rank, torch.full_like(rank, budget))
    flat = torch.arange(rays * k, device=valid.device).view(rays, k).t().reshape(-1)
    index = torch.zeros(budget + 1, dtype=torch.long, device=valid.device)
    index = index.scatter(0, slot, flat)[:budget]
    total = order.sum()
    used = torch.arange(budget, device=valid.device) < total
    return index, used, (total - budget).clamp_min(0)


def _run_packed(
    fn, points: torch.Tensor, valid: torch.Tensor, fill: float
) -> tuple[dict, torch.Tensor]:
    """``fn`` (a field call returning ``[n, ...]`` tensors) on the valid ``points`` ``[R, K, 3]``
    only, packed into a buffer of static size (``fill`` of the slots); results are scattered
    back to ``[R * K, ...]`` (zeros elsewhere). With ``fill >= 1`` every slot runs in a step
    (static shape), or, without gradient outside compilation, the valid slots alone: an exact
    export render of a 512-slot march would otherwise run the field on every empty slot."""
    flat = points.reshape(-1, 3)
    if fill >= 1.0 and (torch.is_grad_enabled() or torch.compiler.is_compiling()):
        return fn(flat), torch.zeros((), device=points.device)
    if fill >= 1.0:  # exact no-grad renders (exports, metrics): the valid slots only
        index = valid.reshape(-1).nonzero().squeeze(1)  # a host sync: fine outside a step
        out = fn(flat[index])
        return (
            {k: v.new_zeros(flat.shape[0], *v.shape[1:]).index_copy_(0, index, v)
             for k, v in out.items()},
            torch.zeros((), device=points.device),
        )  # fmt: skip
    index, used, dropped = _pack_index(valid, fill)
    out = fn(flat[index])
    full = {}
    for key, value in out.items():
        mask = used.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
        buffer = value.new_zeros(flat.shape[0], *value.shape[1:])
        full[key] = buffer.index_put((index,), value * mask, accumulate=True)
    return full, dropped.float() / valid.numel()


def _render_core(
    field: nn.Module,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    offsets: torch.Tensor,
    occupied: torch.Tensor | None,
    shade_params: torch.Tensor,
    lights: torch.Tensor,
    background: torch.Tensor,
    radius: float,
    step: float,
    march: int,
    proposal: int,
    surface: int,
    proposal_fill: float,
    surface_fill: float,
    alpha_threshold: float,
    early_stop: float,
    want_normals: bool,
    proposal_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """The static-shape render of ``[R]`` rays; see the module docstring."""
    rays = origins.shape[0]
    near, far, hit = ray_cube(origins, dirs, radius)
    near = torch.where(hit, near, torch.zeros_like(near))
    with torch.no_grad():
        index = torch.arange(march, device=origins.device, dtype=origins.dtype)
        t = near[:, None] + (index[None] + offsets[:, None]) * step  # [R, march]
        mask = hit[:, None] & (t < far[:, None])
        if occupied is not None:
            res = occupied.shape[0]
            points = origins[:, None] + dirs[:, None] * t[..., None]
            cell = ((points + radius) / (2 * radius) * res).long().clamp(0, res - 1)
            mask = mask & occupied[cell[..., 0], cell[..., 1], cell[..., 2]]
        t_prop, valid_prop, _ = _first_k(mask, t, proposal, near)
        points = origins[:, None] + dirs[:, None] * t_prop[..., None]
        autocast = torch.autocast(origins.device.type, proposal_dtype or torch.float32,
                                  enabled=proposal_dtype is not None)  # fmt: skip
        with autocast:
            prop, dropped_prop = _run_packed(
                lambda x: {"density": field.density(x)}, points, valid_prop, proposal_fill
            )
        sigma = prop["density"].reshape(rays, proposal).float()
        alpha = 1 - torch.exp(-torch.where(valid_prop, sigma, 0.0) * step)
        keep = valid_prop & (alpha > alpha_threshold)
        keep = keep & (_exclusive_transmittance(alpha) > early_stop)
        t_surf, valid, count = _first_k(keep, t_prop, surface, near)
    points = origins[:, None] + dirs[:, None] * t_surf[..., None]  # [R, K, 3]
    out, dropped = _run_packed(
        lambda x: field(x, with_normals=want_normals), points, valid, surface_fill
    )
    sigma = torch.where(valid, out["density"].reshape(rays, surface).to(origins.dtype), 0.0)
    alpha = 1 - torch.exp(-sigma * step)
    weights = alpha * _exclusive_transmittance(alpha)  # [R, K]
    colour = out["albedo"].reshape(rays, surface, 3).to(origins.dtype)
    result = {}
    if want_normals:
        normal = out["normal"].reshape(rays, surface, 3).to(origins.dtype)
        # Shading as one formula for the three modes (no branch: one compiled graph):
        # base * (ambient + diffuse * max(n.l, 0)), base = albedo or white (textureless);
        # albedo mode is ambient 1, diffuse 0.
        textureless, ambient, diffuse = shade_params[0], shade_params[1], shade_params[2]
        light_dir = F.normalize(lights[:, None] - points, dim=-1)
        lambert = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
        base = colour + textureless * (1 - colour)
        colour = base * (ambient + diffuse * lambert)
        facing = (normal * dirs[:, None]).sum(-1).clamp_min(0.0)
        opacity = weights.sum(-1)
        result["normal"] = (weights[..., None] * normal).sum(1)
        result["orient"] = (weights.detach() * facing**2).sum()
        result["orient_rays"] = (opacity.detach() > 0).sum()
    else:
        result["normal"] = torch.zeros_like(origins)
    opacity = weights.sum(-1)
    result["rgb"] = (weights[..., None] * colour).sum(1) + (1 - opacity[:, None]) * background
    result["alpha"] = opacity
    result["depth"] = (weights * t_surf).sum(-1) / opacity.clamp_min(1e-8) * (opacity > 1e-4)
    result["truncated"] = (count > surface).float().mean()  # rays that had more surface samples
    result["dropped"] = dropped + dropped_prop  # slot shares the packed budgets left out
    return result


_compiled_core = None


def _core(compiled: bool):
    global _compiled_core
    if not compiled:
        return _render_core
    if _compiled_core is None:
        # shapes are static per (resolution, views): one graph each, no dynamic shapes
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # The logging steps take each loss term's gradient norm with retain_graph
        # (evaluation.sds.grad_norms), which a backward with donated buffers refuses.
        torch._functorch.config.donated_buffer = False
        _compiled_core = torch.compile(_render_core, dynamic=False)
    return _compiled_core


def _offsets(rays: int, stratified: bool, like: torch.Tensor, generator) -> torch.Tensor:
    """One stratification offset per ray, drawn on the rays' device."""
    if not stratified:
        return torch.full((rays,), 0.5, device=like.device, dtype=like.dtype)
    if generator is not None and generator.device == like.device:
        return torch.rand(rays, generator=generator, device=like.device, dtype=like.dtype)
    if generator is not None:  # a CPU generator for device rays: draw on the device instead
        seed = torch.randint(0, 2**62, (1,), generator=generator).item()
        device_gen = torch.Generator(like.device).manual_seed(seed)
        return torch.rand(rays, generator=device_gen, device=like.device, dtype=like.dtype)
    return torch.rand(rays, device=like.device, dtype=like.dtype)


def shade_parameters(settings: RenderSettings, device: torch.device) -> torch.Tensor:
    """``[textureless, ambient, diffuse]`` of a shading mode (see ``_render_core``)."""
    if settings.shading == "albedo":
        values = (0.0, 1.0, 0.0)
    elif settings.shading in ("diffuse", "textureless"):
        ambient = float(settings.ambient)
        values = (float(settings.shading == "textureless"), ambient, 1.0 - ambient)
    else:
        raise ValueError(
            f"unknown shading mode {settings.shading!r} (albedo, diffuse, textureless)"
        )
    return torch.tensor(values, device=device)


def render_rays(
    field: nn.Module,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    radius: float,
    settings: RenderSettings,
    occupancy: OccupancyGrid | None = None,
    light_position: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    offsets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Render ``[R]`` rays. Returns ``rgb [R,3]``, ``alpha [R]``, ``depth [R]`` (distance along
    the ray of the expected hit, 0 where empty), ``normal [R,3]``, ``truncated`` (share of rays
    with more surface samples than ``surface_samples``) and, with normals, ``orient``/
    ``orient_rays`` (the Ref-NeRF orientation penalty summed over samples, and the rays with
    any opacity). ``light_position`` ``[R,3]``; ``generator`` draws the stratification unless
    ``offsets`` ``[R]`` gives it."""
    march = settings.samples_per_ray
    proposal = settings.proposal_samples or march
    surface = settings.surface_samples or proposal
    want_normals = settings.need_normals or settings.shading != "albedo"
    if settings.shading != "albedo" and light_position is None:
        raise ValueError(f"shading mode {settings.shading!r} needs a light position")
    lights = origins if light_position is None else light_position.to(origins)
    occupied = None
    if occupancy is not None:
        res = occupancy.resolution
        occupied = occupancy.occupied.view(res, res, res)
    return _core(settings.compile)(
        field,
        origins,
        dirs,
        _offsets(origins.shape[0], settings.stratified, origins, generator)
        if offsets is None
        else offsets,
        occupied,
        shade_parameters(settings, origins.device),
        lights,
        torch.tensor(settings.background, device=origins.device, dtype=origins.dtype),
        float(radius),
        step_size(radius, march),
        march,
        min(proposal, march),
        min(surface, proposal, march),
        float(settings.proposal_fill),
        float(settings.surface_fill),
        float(settings.alpha_threshold),
        float(settings.early_stop),
        want_normals,
        settings.proposal_dtype,
    )


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
    ``light_position`` is one point light per view ``[B,3]``.

    ``settings.chunk_rays`` splits the rays. With gradient, each chunk runs under activation
    checkpointing: rays composite independently, so the backward recomputes one chunk at a time
    and the step holds one chunk's samples instead of every ray's (the graded render at 256 px
    is most of an SDS step's memory). The stratification is drawn once, before the chunks, so the
    recomputation samples the same positions."""
    origins, dirs = generate_rays(c2w, fov_deg, size)
    views = c2w.shape[0]
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    lights = None
    if light_position is not None:
        lights = light_position[:, None].expand(views, size * size, 3).reshape(-1, 3)
    rays = origins.shape[0]
    chunk = settings.chunk_rays if settings.chunk_rays > 0 else rays
    offsets = _offsets(rays, settings.stratified, origins, generator)
    recompute = chunk < rays and torch.is_grad_enabled()
    parts = []
    for start in range(0, rays, chunk):
        sl = slice(start, start + chunk)
        args = (field, origins[sl], dirs[sl], radius, settings, occupancy)
        light = None if lights is None else lights[sl]
        if recompute:
            part = checkpoint(render_rays, *args, light, None, offsets[sl], use_reentrant=False)
        else:
            part = render_rays(*args, light, None, offsets[sl])
        parts.append(part)
    result = {}
    for key in parts[0]:
        if key in ("truncated", "dropped"):
            result[key] = sum(p[key] for p in parts) / len(parts)
        elif parts[0][key].dim() == 0:
            result[key] = sum(p[key] for p in parts)
        else:
            merged = torch.cat([p[key] for p in parts])
            result[key] = merged.reshape(views, size, size, *merged.shape[1:])
    return result

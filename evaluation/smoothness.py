"""3D smoothness of the SDS field at its surface: albedo and normals at a point against the same
at a jittered copy (the 3D normal-smoothness term of threestudio's image-to-3D recipes, applied to
the albedo as well).

Why: the tiny prior paints 8x8 or 12x12 latents, so nothing in its targets tells the field that a
face is one colour and one plane; the hash grid keeps the step-to-step noise of the targets as
streaks of colour and bumps of shape, while the prior accepts them (docs/evaluation.md).
"""

from __future__ import annotations

import torch

from evaluation.field import Field
from evaluation.renderer import generate_rays


def surface_points(
    c2w: torch.Tensor,
    fov_deg: torch.Tensor,
    depth: torch.Tensor,
    alpha: torch.Tensor,
    count: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` pixels drawn uniformly from the rendered views ``depth``/``alpha``
    ``[B, H, W]``: their surface points (ray origin + depth * direction) ``[count, 3]`` and a
    weight ``[count]`` that is 1 where the pixel is mostly covered (alpha > 0.5), else 0. A
    fixed count and a weight rather than a mask keep the shapes static (no read-back)."""
    views, size = depth.shape[0], depth.shape[1]
    origins, dirs = generate_rays(c2w, fov_deg.to(c2w.device), size)
    pixels = torch.randint(views * size * size, (count,), generator=generator, device=depth.device)
    depth_flat = depth.detach().reshape(-1)[pixels]
    points = origins.reshape(-1, 3)[pixels] + dirs.reshape(-1, 3)[pixels] * depth_flat[:, None]
    weight = (alpha.detach().reshape(-1)[pixels] > 0.5).to(points.dtype)
    return points, weight


def smoothness_terms(
    field: Field,
    points: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    generator: torch.Generator | None,
    normals: bool,
) -> dict[str, torch.Tensor]:
    """Mean absolute difference of the albedo (``albedo_smooth``) and, with ``normals``, of the
    unit normals (``normal_smooth``) between ``points`` and ``points + N(0, eps^2)``, over the
    points of weight 1."""
    jitter = torch.randn(points.shape, generator=generator, device=points.device) * eps
    both = torch.cat([points, points + jitter])
    # without normals only the albedo is read: no density (nor a frozen shape's second encoding)
    out = field(both, with_normals=True) if normals else {"albedo": field.albedo(both)}
    total = weight.sum().clamp_min(1.0)
    count = points.shape[0]

    def term(values: torch.Tensor) -> torch.Tensor:
        diff = (values[:count] - values[count:]).abs().sum(-1)
        return (diff * weight).sum() / total

    terms = {"albedo_smooth": term(out["albedo"])}
    if normals:
        terms["normal_smooth"] = term(out["normal"])
    return terms

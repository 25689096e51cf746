"""Shared pieces of the evaluation tests: an analytic sphere field and the tiny test config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.config import load_config

# Smallest settings that still exercise every stage (tiny model, 32 px, few steps).
TINY_OVERRIDES = [
    "sds.steps=2",
    "sds.resolution=[32,32]",
    "sds.batch_views=[4,4]",
    "sds.milestones=[1]",
    "sds.checkpoint_every=1",
    "renderer.samples_per_ray=24",
    "renderer.occupancy.resolution=16",
    "renderer.occupancy.update_every=2",
    "export.views=4",
    "export.resolution=32",
    "export.turntable_frames=4",
    "export.turntable_resolution=32",
    "export.mesh_resolution=24",
    "metrics.clip.num_views=4",
    "metrics.clip.resolution=32",
    "inputs.size=32",
]


def tiny_config(*extra: str):
    return load_config("configs/eval_tiny.yaml", [*TINY_OVERRIDES, *extra])


class SphereField(nn.Module):
    """Density ``peak`` inside a ball of ``radius`` (hard edge) or a linear ramp
    ``peak * (1 - |x| / radius)`` (``smooth``), constant albedo, exact normals."""

    def __init__(self, radius: float = 0.5, peak: float = 1e4, smooth: bool = False):
        super().__init__()
        self.radius, self.peak, self.smooth = radius, peak, smooth
        self.colour = nn.Parameter(torch.tensor([0.9, 0.2, 0.1]))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        r = x.norm(dim=-1)
        if self.smooth:
            return self.peak * (1 - r / self.radius).clamp_min(0)
        return torch.where(r < self.radius, self.peak, 0.0)

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> dict[str, torch.Tensor]:
        out = {"density": self.density(x), "albedo": self.colour.expand(x.shape[0], 3)}
        if with_normals:
            out["normal"] = self.normals(x)
        return out

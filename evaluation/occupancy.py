"""The occupancy grid of empty-space skipping (nerfacc's OccGridEstimator rule, one level)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        device = self.density.device
        if generator is not None and generator.device == device:
            jitter = torch.rand(self.cells.shape, generator=generator, device=device)
        else:
            jitter = torch.rand(self.cells.shape, generator=generator).to(device)
        points = -self.radius + (self.cells.to(jitter.dtype) + jitter) * cell
        sigma = torch.cat([field.density(chunk) for chunk in points.split(262144)])
        self.density.copy_(torch.maximum(self.density * self.decay, sigma.to(self.density.dtype)))
        alpha = 1 - torch.exp(-self.density * step_size)
        threshold = alpha.mean().clamp_max(self.threshold)  # a tensor: no host sync
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

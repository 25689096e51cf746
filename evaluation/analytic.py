"""Analytic fields for the 3D controls: the demo's coloured cube and an opaque sphere.

Both have the learned field's interface (``density(x)`` and ``forward(x, with_normals)``), so the
SDS renderer draws them exactly as it draws a learned field. The cube is ``front_marker`` of the
built-in samples, at the scale the renderer normalises every object to (bounding sphere of radius
``OBJECT_RADIUS``): rendered at a shard's cameras it must match Blender's views, which checks the
renderer's cameras against Blender's without any learning. ``face_map`` says which face each pixel
sees, for the per-face colour scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.renderer import generate_rays
from evaluation.views import CameraBatch
from models.cameras import OBJECT_RADIUS

# front_marker's face colours (sRGB, as data_prep/samples.py builds it; a test holds them equal),
# by outward normal: +X, -X, +Y, -Y, +Z, -Z.
FACE_NORMALS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
FACE_NAMES = ("+X green", "-X yellow", "+Y blue", "-Y red (front)", "+Z purple (top)", "-Z bottom")
FACE_COLOURS_SRGB8 = (
    (40, 170, 60),
    (240, 200, 30),
    (40, 80, 220),
    (220, 30, 30),
    (140, 60, 180),
    (235, 235, 235),
)
SCORED_FACES = (0, 1, 2, 3, 4)  # faces seen from the side or above (the bottom never is)
# The sample is the cube [-0.5, 0.5]^3; the renders scale its bounding sphere (radius sqrt(3)/2)
# to OBJECT_RADIUS.
CUBE_HALF = OBJECT_RADIUS / math.sqrt(3.0)
OPAQUE_DENSITY = 1000.0  # alpha ~1 within one march step of any of our renderer settings


class _Analytic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # the renderer reads the device from the parameters
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.inside(x).to(x.dtype) * OPAQUE_DENSITY

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> dict[str, torch.Tensor]:
        out = {"density": self.density(x), "albedo": self.albedo(x)}
        if with_normals:
            out["normal"] = self.normal(x)
        return out


class AnalyticCube(_Analytic):
    """An opaque axis-aligned cube of half-side ``half``, one albedo per face (sRGB in [0,1])."""

    def __init__(self, half: float = CUBE_HALF, colours=FACE_COLOURS_SRGB8) -> None:
        super().__init__()
        self.half = float(half)
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.float32) / 255.0)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().amax(-1) <= self.half

    def face(self, x: torch.Tensor) -> torch.Tensor:
        """Index into ``FACE_NORMALS`` of the face nearest each point (largest coordinate)."""
        axis = x.abs().argmax(-1)
        negative = torch.gather(x, -1, axis[..., None])[..., 0] < 0
        return axis * 2 + negative.long()

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return self.colours.to(x.device, x.dtype)[self.face(x)]

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        normals = torch.tensor(FACE_NORMALS, dtype=x.dtype, device=x.device)
        return normals[self.face(x)]


class OpaqueSphere(_Analytic):
    """An opaque ball of ``radius`` about the origin, one albedo: the best-fit-sphere baseline."""

    def __init__(self, radius: float, colour: tuple[float, float, float]) -> None:
        super().__init__()
        self.radius = float(radius)
        self.register_buffer("colour", torch.tensor(colour, dtype=torch.float32))

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1) <= self.radius

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return self.colour.to(x.device, x.dtype).expand(x.shape[0], 3)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def face_map(cameras: CameraBatch, size: int, half: float = CUBE_HALF) -> torch.Tensor:
    """``[V,size,size]`` index of the cube face each pixel's ray hits first (-1: misses)."""
    origins, dirs = generate_rays(cameras.c2w(), cameras.fov_deg, size)
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-half - origins) / safe, (half - origins) / safe
    near = torch.minimum(t0, t1)
    entry, axis = near.max(-1)
    hit = entry < torch.maximum(t0, t1).amin(-1)
    # the entry face's normal points against the ray along that axis
    towards = torch.gather(dirs, -1, axis[..., None])[..., 0] > 0
    index = axis * 2 + towards.long()
    return torch.where(hit & (entry > 0), index, torch.full_like(index, -1))

"""The project's one camera module: every stage (render, training, sampling, SDS) imports it.

Convention (docs/design.md, cameras; MVDream's own): the world is Blender's, z up. A camera at
elevation ``e`` and azimuth ``a`` (degrees) and distance ``d`` sits at
``d * (cos e sin a, -cos e cos a, sin e)``, so azimuth 0 is on -Y looking at the origin (it sees
the object's front) and azimuth 90 is on +X. Camera axes are OpenGL's: the camera looks down its
-Z axis with +Y up. The model's camera input is the camera-to-world matrix with its translation
scaled to unit length, flattened row-major to 16 numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CAMERA_DIM = 16  # flattened 4x4 camera-to-world matrix


def _as_float_tensor(value: torch.Tensor | float | list | tuple) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    return tensor if tensor.is_floating_point() else tensor.to(torch.float32)


def camera_position(
    elevation_deg: torch.Tensor | float,
    azimuth_deg: torch.Tensor | float,
    distance: torch.Tensor | float = 1.0,
    legacy_double_radians: bool = False,
) -> torch.Tensor:
    """Camera centre(s) in world coordinates, shape ``[..., 3]``.

    ``legacy_double_radians`` reproduces the released Isotropic3D SDS code, which converts degrees
    to radians twice; use it only with that checkpoint's legacy camera flag.
    """
    elevation, azimuth, distance = torch.broadcast_tensors(
        _as_float_tensor(elevation_deg), _as_float_tensor(azimuth_deg), _as_float_tensor(distance)
    )
    elevation, azimuth = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    if legacy_double_radians:
        elevation, azimuth = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return distance.unsqueeze(-1) * torch.stack(
        [
            torch.cos(elevation) * torch.sin(azimuth),
            -torch.cos(elevation) * torch.cos(azimuth),
            torch.sin(elevation),
        ],
        dim=-1,
    )


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """OpenGL-style camera-to-world matrices ``[..., 4, 4]`` for cameras at ``eye`` looking at
    ``target`` (default: the origin) with world +Z as up."""
    eye = _as_float_tensor(eye)
    target = torch.zeros_like(eye) if target is None else _as_float_tensor(target).expand_as(eye)
    backward = torch.nn.functional.normalize(eye - target, dim=-1)  # camera +Z points away
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.linalg.cross(world_up, backward, dim=-1)
    # Straight above/below the target, world up is degenerate: fall back to world +Y as up.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.linalg.cross(alt_up, backward, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(backward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = right, up, backward
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def camera_to_world(
    elevation_deg: torch.Tensor | float,
    azimuth_deg: torch.Tensor | float,
    distance: torch.Tensor | float = 1.0,
    legacy_double_radians: bool = False,
) -> torch.Tensor:
    """The one function that turns (elevation, azimuth, distance) into c2w ``[..., 4, 4]``."""
    return look_at(camera_position(elevation_deg, azimuth_deg, distance, legacy_double_radians))


def camera_embedding(c2w: torch.Tensor) -> torch.Tensor:
    """Model camera input ``[..., 16]``: c2w with unit-length translation, flattened row-major."""
    c2w = _as_float_tensor(c2w).clone()
    translation = c2w[..., :3, 3]
    norm = translation.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    c2w[..., :3, 3] = translation / norm
    return c2w.flatten(-2)


# --- framing: the one definition of object size and camera distance --------------------------
# Every stage (training renders in data_prep/, SDS and evaluation cameras) uses these, so an
# object at the field's scale appears at the same size in training views and SDS renders:
#   * the object's normalised size: its bounding sphere (centred on the bounding-box centre,
#     through the farthest surface vertex) has radius OBJECT_RADIUS;
#   * the camera looks at the origin from distance_for_fov(fov, relative_radius)
#     = relative_radius / tan(fov / 2), MVDream's rule: relative_radius is the half-width of the
#     view, in world units, on the plane through the origin facing the camera.
# The whole sphere is in view when distance >= OBJECT_RADIUS / sin(fov / 2) (fit_distance); its
# outline spans silhouette_fraction(...) of the half-image. With MVDream's training ranges
# (fov 15-60 deg, relative_radius 0.9-1.1) a radius of 0.7 keeps it within 87% of the half-image
# in the worst draw (fov 60, relative_radius 0.9), so every view has a margin.
OBJECT_RADIUS = 0.7


def distance_for_fov(fov_deg: torch.Tensor | float, relative_radius: torch.Tensor | float = 1.0):
    """Camera distance ``relative_radius / tan(fov / 2)`` (MVDream's rule): the view's half-width
    on the plane through the origin is ``relative_radius`` world units. See OBJECT_RADIUS."""
    fov = torch.deg2rad(_as_float_tensor(fov_deg))
    return _as_float_tensor(relative_radius) / torch.tan(fov / 2)


def relative_radius_of(fov_deg: torch.Tensor | float, distance: torch.Tensor | float):
    """Inverse of :func:`distance_for_fov`: ``distance * tan(fov / 2)``."""
    fov = torch.deg2rad(_as_float_tensor(fov_deg))
    return _as_float_tensor(distance) * torch.tan(fov / 2)


def fit_distance(fov_deg: torch.Tensor | float, radius: float = OBJECT_RADIUS) -> torch.Tensor:
    """The closest distance at which a sphere of ``radius`` at the origin is wholly in view of a
    camera with full field of view ``fov_deg`` looking at the origin: ``radius / sin(fov / 2)``."""
    return radius / torch.sin(torch.deg2rad(_as_float_tensor(fov_deg)) / 2)


def silhouette_fraction(
    fov_deg: torch.Tensor | float,
    distance: torch.Tensor | float,
    radius: float = OBJECT_RADIUS,
) -> torch.Tensor:
    """Radius of the outline of a sphere of ``radius`` at the origin, seen from ``distance``, as a
    fraction of the half-image (1 = it touches the image border; > 1 = it is cropped)."""
    distance = _as_float_tensor(distance)
    half_angle = torch.asin((radius / distance).clamp(max=1.0))
    return torch.tan(half_angle) / torch.tan(torch.deg2rad(_as_float_tensor(fov_deg)) / 2)


def worst_case_fraction(
    fov_deg: tuple[float, float],
    relative_radius: tuple[float, float],
    radius: float = OBJECT_RADIUS,
) -> float:
    """The largest :func:`silhouette_fraction` over the given ranges (it grows with the fov and
    shrinks with the relative radius, so it is reached at the widest fov and smallest radius)."""
    fov, rel = max(fov_deg), min(relative_radius)
    return float(silhouette_fraction(fov, distance_for_fov(fov, rel), radius))


def focal_length_px(fov_deg: torch.Tensor | float, image_size: int) -> torch.Tensor:
    """Pinhole focal length in pixels for a square image with the given full field of view."""
    return 0.5 * image_size / torch.tan(torch.deg2rad(_as_float_tensor(fov_deg)) / 2)


def project_points(points: torch.Tensor, c2w: torch.Tensor, fov_deg: float, image_size: int):
    """Project world points ``[N, 3]`` to pixel coordinates ``[N, 2]`` (x right, y down, origin
    top-left) and camera-space depth ``[N]`` for one camera."""
    w2c = torch.linalg.inv(_as_float_tensor(c2w))
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    focal = focal_length_px(fov_deg, image_size)
    u = image_size / 2 + focal * cam[:, 0] / depth
    v = image_size / 2 - focal * cam[:, 1] / depth
    return torch.stack([u, v], dim=-1), depth


def orthogonal_azimuths(start_deg: float, num_views: int = 4) -> torch.Tensor:
    """``num_views`` azimuths evenly spaced around the circle, starting at ``start_deg``."""
    return (start_deg + torch.arange(num_views, dtype=torch.float32) * 360.0 / num_views) % 360.0


@dataclass(frozen=True)
class OrbitRanges:
    """Ranges of the camera group sampler (defaults: MVDream's training ranges)."""

    elevation_deg: tuple[float, float] = (0.0, 30.0)
    fov_deg: tuple[float, float] = (15.0, 60.0)
    relative_radius: tuple[float, float] = (0.9, 1.1)
    azimuth_start_deg: tuple[float, float] = (0.0, 360.0)  # range of a group's random first azimuth


@dataclass
class OrbitGroup:
    """One group of views sharing elevation, fov and distance at evenly spaced azimuths."""

    elevation_deg: torch.Tensor  # [V]
    azimuth_deg: torch.Tensor  # [V]
    fov_deg: torch.Tensor  # [V]
    distance: torch.Tensor  # [V]

    def c2w(self, legacy_double_radians: bool = False) -> torch.Tensor:
        return camera_to_world(
            self.elevation_deg, self.azimuth_deg, self.distance, legacy_double_radians
        )

    def __len__(self) -> int:
        return self.elevation_deg.shape[0]

    @classmethod
    def concat(cls, groups: list[OrbitGroup]) -> OrbitGroup:
        """Groups one after the other (object-major order, as the multi-view UNet expects)."""
        fields = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")
        return cls(*(torch.cat([getattr(group, name) for group in groups]) for name in fields))


def _uniform(generator: torch.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_orbit_group(
    generator: torch.Generator,
    num_views: int = 4,
    ranges: OrbitRanges = OrbitRanges(),
    azimuth_start_deg: float | None = None,
) -> OrbitGroup:
    """Sample one isotropic view group: random azimuth start (unless given), then ``num_views``
    evenly spaced azimuths at one shared elevation, fov and distance drawn from ``ranges``."""
    if azimuth_start_deg is None:
        azimuth_start_deg = _uniform(generator, ranges.azimuth_start_deg)
    start = azimuth_start_deg
    elevation = _uniform(generator, ranges.elevation_deg)
    fov = _uniform(generator, ranges.fov_deg)
    distance = float(distance_for_fov(fov, _uniform(generator, ranges.relative_radius)))
    full = torch.full((num_views,), 1.0)
    return OrbitGroup(
        elevation_deg=full * elevation,
        azimuth_deg=orthogonal_azimuths(start, num_views),
        fov_deg=full * fov,
        distance=full * distance,
    )


def random_pose(generator: torch.Generator, ranges: OrbitRanges = OrbitRanges()) -> OrbitGroup:
    """A single view at a random azimuth (a reference view), as a one-view group."""
    return sample_orbit_group(generator, num_views=1, ranges=ranges)


def fov_from_focal(focal_px: float, image_size: int) -> float:
    """Inverse of :func:`focal_length_px`, in degrees."""
    return math.degrees(2 * math.atan(0.5 * image_size / focal_px))


def legacy_sampling_cameras(
    elevation_deg: float, azimuths_deg: torch.Tensor | list[float]
) -> torch.Tensor:
    """Camera inputs ``[V, 16]`` exactly as the released Isotropic3D multi-view sampler builds
    them (its ``get_camera``, used by its 2D sampling scripts): its loop converts the elevation
    from degrees to radians again on every pass and the matrix builder converts once more, so
    frame ``k``'s elevation is converted ``k + 2`` times (15 deg: frame 0 at 0.26 deg, frames 1-3
    at ~0 deg), and every azimuth twice. Azimuths are taken as given (``get_camera`` steps
    ``start + k * span / V`` without wrapping at 360). Only for 2D sampling with a model whose
    ``legacy_double_radians`` flag is set; SDS uses :func:`camera_to_world` with the flag (every
    angle converted exactly twice), as the released guidance does."""
    azimuths = _as_float_tensor(azimuths_deg).reshape(-1).to(torch.float64)
    elevation = torch.tensor(float(elevation_deg), dtype=torch.float64)
    elevations = []
    for _ in range(azimuths.numel()):
        elevation = torch.deg2rad(elevation)  # once more per frame, as the released loop does
        elevations.append(elevation)
    # camera_to_world converts each angle once more: elevations k + 2 times, azimuths twice.
    c2w = camera_to_world(torch.stack(elevations), torch.deg2rad(azimuths))
    return camera_embedding(c2w).to(torch.float32)

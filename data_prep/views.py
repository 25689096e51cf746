"""Per-object view plan: azimuth-orthogonal quadruples plus reference views, from models.cameras.

Computed in the parent (which has torch) and handed to the Blender worker as plain matrices. The
random stream is seeded by (run seed, object id), so an object gets the same cameras whichever
machine, partition or rerun renders it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from data_prep.config import RenderConfig
from models.cameras import OrbitRanges, random_pose, relative_radius_of, sample_orbit_group


@dataclass
class ViewPlan:
    c2w: np.ndarray  # [V, 4, 4] float32, true distance
    fov_deg: list[float]
    elevation_deg: list[float]
    azimuth_deg: list[float]
    distance: list[float]
    relative_radius: list[float]
    quads: list[list[int]]
    refs: list[int]
    heldout_quads: list[list[int]]
    view_ranges: dict[str, list[float]]  # the ranges the quadruples' cameras were drawn from

    def worker_views(self) -> list[dict]:
        return [
            {"c2w": self.c2w[i].astype(float).tolist(), "fov_deg": self.fov_deg[i]}
            for i in range(len(self.fov_deg))
        ]

    def meta(self) -> dict:
        keys = ("fov_deg", "elevation_deg", "azimuth_deg", "distance", "relative_radius")
        meta = {key: getattr(self, key) for key in keys} | {"quads": self.quads, "refs": self.refs}
        meta["view_ranges"] = self.view_ranges
        return meta | ({"heldout_quads": self.heldout_quads} if self.heldout_quads else {})


def object_seed(seed: int, object_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{object_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def heldout_ranges(ranges: OrbitRanges, count: int) -> list[OrbitRanges]:
    """The ranges of ``count`` held-out quadruples: each at the middle elevation of its own equal
    share of the elevation range (one quad: 15 deg of [0, 30]), the rest drawn as for training.
    Scores need views from above: a random draw near 0 deg hides the top (a cube's top face)."""
    low, high = ranges.elevation_deg
    mids = [low + (high - low) * (q + 0.5) / count for q in range(count)]
    return [replace(ranges, elevation_deg=(mid, mid)) for mid in mids]


def plan_views(object_id: str, config: RenderConfig) -> ViewPlan:
    generator = torch.Generator().manual_seed(object_seed(config.seed, object_id))
    quad_ranges = OrbitRanges(config.elevation_deg, config.fov_deg, config.relative_radius)
    ref_ranges = OrbitRanges(config.ref_elevation_deg, config.fov_deg, config.relative_radius)
    start = config.azimuth_start_deg
    groups = [sample_orbit_group(generator, 4, quad_ranges, start) for _ in range(config.num_quads)]
    groups += [random_pose(generator, ref_ranges) for _ in range(config.num_refs)]
    # Drawn last: the training quads and refs are those of a render without held-out quads.
    groups += [
        sample_orbit_group(generator, 4, ranges, start)
        for ranges in heldout_ranges(quad_ranges, config.heldout_quads)
    ]
    c2w = torch.cat([group.c2w() for group in groups]).numpy().astype(np.float32)
    cat = {
        name: torch.cat([getattr(group, name) for group in groups]).tolist()
        for name in ("fov_deg", "elevation_deg", "azimuth_deg", "distance")
    }
    relative = relative_radius_of(torch.tensor(cat["fov_deg"]), torch.tensor(cat["distance"]))
    relative = relative.tolist()
    quads = [list(range(4 * q, 4 * q + 4)) for q in range(config.num_quads)]
    refs = list(range(4 * config.num_quads, 4 * config.num_quads + config.num_refs))
    first = refs[-1] + 1 if refs else 4 * config.num_quads
    heldout = [list(range(first + 4 * q, first + 4 * q + 4)) for q in range(config.heldout_quads)]
    ranges = {
        "elevation_deg": list(config.elevation_deg),
        "fov_deg": list(config.fov_deg),
        "relative_radius": list(config.relative_radius),
    }
    return ViewPlan(
        c2w=c2w,
        relative_radius=relative,
        quads=quads,
        refs=refs,
        heldout_quads=heldout,
        view_ranges=ranges,
        **cat,
    )

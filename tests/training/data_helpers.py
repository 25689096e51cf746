"""Synthetic shard samples for the data-path tests: seeded RGBA views with soft-edged alpha and
garbage colour under the transparent pixels (what premultiplied resizing must not bleed), in the
shard format of docs/shards.md."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from models.cameras import camera_to_world

VIEWS = 6  # two quadruples' worth of poses: [0,1,2,3] and [2,3,4,5]; references 4 and 5


def rgba_view(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 ``[H,W,4]``, straight alpha: a soft disc on a fully transparent background."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    radius = np.hypot(yy - rng.uniform(-0.2, 0.2), xx - rng.uniform(-0.2, 0.2))
    alpha = np.clip((0.7 - radius) / 0.15, 0, 1)
    rgb = rng.integers(0, 256, (size, size, 3))  # noise, also where alpha is 0
    return np.dstack([rgb, np.round(alpha * 255)]).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def synthetic_sample(seed: int, size: int) -> dict:
    """One raw shard sample (member name -> bytes) of ``VIEWS`` views at ``size`` px."""
    rng = np.random.default_rng(seed)
    elevation = [float(rng.uniform(-10, 40))] * VIEWS
    azimuth = [float((a * 90 + 17 * seed) % 360) for a in range(VIEWS)]
    cameras = camera_to_world(torch.tensor(elevation), torch.tensor(azimuth), 2.0).numpy()
    meta = {
        "id": f"obj{seed}",
        "resolution": size,
        "elevation_deg": elevation,
        "azimuth_deg": azimuth,
        "quads": [[0, 1, 2, 3], [2, 3, 4, 5]],
        "refs": [4, 5],
    }
    sample = {
        "__key__": f"obj{seed}",
        "meta.json": json.dumps(meta).encode(),
        "cameras.npy": npy_bytes(cameras.astype(np.float32)),
    }
    for view in range(VIEWS):
        sample[f"{view:03d}.png"] = png_bytes(rgba_view(rng, size))
    return sample

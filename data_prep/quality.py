"""Quality figures of one object's rendered views, computed from the PNGs' alpha channel.

Stored in ``meta.json`` as ``quality`` and used to refuse silent bad renders: an object with an
empty or near-empty view (a point cloud, a lines-only mesh, a fully transparent material, an
object behind the camera) is recorded as failed (``empty_view``) instead of written as a sample.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def view_figures(png: bytes) -> dict[str, float]:
    """``coverage``: fraction of pixels with alpha >= 0.5; ``border``: fraction of the 1-pixel
    image border with any alpha (0 = the object is wholly in frame); ``mean_alpha``: mean alpha
    of the pixels the object touches (< 1: semi-transparent or thin)."""
    alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3].astype(np.float32)
    alpha /= 255.0
    edge = np.concatenate([alpha[0], alpha[-1], alpha[1:-1, 0], alpha[1:-1, -1]])
    touched = alpha[alpha > 0]
    return {
        "coverage": float((alpha >= 0.5).mean()),
        "border": float((edge > 0).mean()),
        "mean_alpha": float(touched.mean()) if touched.size else 0.0,
    }


def quality(pngs: list[bytes]) -> dict:
    """Per-view lists plus the object's summary figures (min coverage, max border contact)."""
    views = [view_figures(png) for png in pngs]
    figures = {key: [round(v[key], 5) for v in views] for key in ("coverage", "border")}
    figures["mean_alpha"] = [round(v["mean_alpha"], 4) for v in views]
    figures["min_coverage"] = min(figures["coverage"], default=0.0)
    figures["border_views"] = sum(v["border"] > 0 for v in views)
    return figures


def empty_view_problem(figures: dict, min_coverage: float) -> str | None:
    """Why the object must not become a sample (None when every view shows it)."""
    low = [i for i, c in enumerate(figures["coverage"]) if c < min_coverage]
    if not low:
        return None
    shown = ", ".join(f"view {i}: {100 * figures['coverage'][i]:.2f}%" for i in low[:4])
    return f"{len(low)} of {len(figures['coverage'])} views nearly empty ({shown}; min {min_coverage:g})"

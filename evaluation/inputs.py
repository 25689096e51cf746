"""Objects to evaluate: a folder of reference images, or held-out shards (models/shards/format.py).

A shard object gives its reference view (the first of ``refs``, else the first view) with its
known pose, and its first azimuth-orthogonal quadruple as ground truth for the 2D multi-view score.

Images: non-square ones are padded to a square (never squashed); an RGB image without alpha gets
its background estimated from its border (with a warning) so it can be recentred like RGBA. A
known ``inputs.reference_pose`` refers to the image as given (padded to a square, not
recentred): PSNR/SSIM compare the render at that pose with that image, while the recentred
image conditions the model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.shards.format import read_meta, read_sample, shard_keys
from models.shards.images import composite, decode_view

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
log = logging.getLogger(__name__)


@dataclass
class EvalObject:
    id: str
    reference: torch.Tensor  # [4,S,S] RGBA in [0,1], recentred: what conditions the model
    reference_pose: dict | None = None  # elevation_deg, azimuth_deg, fov_deg, distance
    pose_reference: torch.Tensor | None = None  # [4,S,S] the image as given (padded) at the pose
    gt_views: torch.Tensor | None = None  # [4,4,H,W] RGBA of one quad
    gt_pose: dict | None = None  # lists per view: elevation_deg, azimuth_deg, fov_deg, distance
    source: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ObjectRef:
    """A cheap handle (id + loader) so partitioning never decodes what another rank evaluates."""

    id: str
    load: Callable[[], EvalObject]
    digest: Callable[[], str]  # hash of the source bytes: a changed input is a changed result


def to_rgba_tensor(image: Image.Image) -> torch.Tensor:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgba).permute(2, 0, 1).contiguous()


def save_rgba(tensor: torch.Tensor, path: Path) -> None:
    """``[3|4,H,W]`` in [0,1] -> PNG."""
    array = (tensor.clamp(0, 1).permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()
    Image.fromarray(array, "RGBA" if tensor.shape[0] == 4 else "RGB").save(path)


def on_background(rgba: torch.Tensor, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """``[...,4,H,W]`` straight-alpha RGBA -> ``[...,3,H,W]`` composited on ``background``."""
    alpha = rgba[..., 3:, :, :]
    return composite(torch.cat([rgba[..., :3, :, :] * alpha, alpha], dim=-3), tuple(background))


def resize_rgba(rgba: torch.Tensor, size: int) -> torch.Tensor:
    """Resize premultiplied (so edges do not bleed the hidden colour), then un-premultiply."""
    batched = rgba if rgba.dim() == 4 else rgba[None]
    premult = torch.cat([batched[:, :3] * batched[:, 3:], batched[:, 3:]], 1)
    out = F.interpolate(premult, (size, size), mode="bicubic", antialias=True).clamp(0, 1)
    alpha = out[:, 3:]
    out = torch.cat([out[:, :3] / alpha.clamp_min(1e-6) * (alpha > 0), alpha], 1).clamp(0, 1)
    return out if rgba.dim() == 4 else out[0]


def recenter(rgba: torch.Tensor, ratio: float) -> torch.Tensor:
    """Crop to the alpha bounding box and pad to a square where the object spans ``ratio``."""
    mask = rgba[3] > 0.5
    if not mask.any() or bool(mask.all()):
        return rgba
    ys, xs = torch.nonzero(mask, as_tuple=True)
    crop = rgba[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = crop.shape[1:]
    side = int(max(height, width) / ratio)
    out = torch.zeros(4, side, side, dtype=rgba.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[:, top : top + height, left : left + width] = crop
    return out


def pad_to_square(rgba: torch.Tensor) -> torch.Tensor:
    """Centre ``[4,H,W]`` on a transparent square of side ``max(H, W)`` (a square image keeps
    its field of view across its longer side)."""
    height, width = rgba.shape[1:]
    side = max(height, width)
    if height == width:
        return rgba
    out = torch.zeros(4, side, side, dtype=rgba.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[:, top : top + height, left : left + width] = rgba
    return out


def estimate_background(rgb: torch.Tensor, tolerance: float = 0.1) -> tuple[torch.Tensor, list]:
    """Alpha for an RGB image ``[3,H,W]`` without one: the background colour is the median of
    the border pixels; pixels within ``tolerance`` (max channel difference) of it are
    background. Returns RGBA and the colour. A heuristic: objects touching the border in the
    background colour lose those parts, hence the warning the caller records."""
    border = torch.cat([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], dim=1)
    colour = border.median(dim=1).values
    alpha = ((rgb - colour[:, None, None]).abs().amax(0) > tolerance).to(rgb.dtype)
    return torch.cat([rgb, alpha[None]]), [round(float(c), 3) for c in colour]


def _image_object(path: Path, inputs_cfg) -> EvalObject:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as err:  # unreadable, truncated, not an image
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from err
    warnings: list[str] = []
    rgba = to_rgba_tensor(image)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    as_given = pad_to_square(rgba)  # the image as given: what a known pose refers to
    if not has_alpha:
        rgba, colour = estimate_background(rgba[:3])
        if bool(rgba[3].all()) or not bool(rgba[3].any()):
            rgba = torch.cat([rgba[:3], torch.ones_like(rgba[3:])])
            warnings.append(
                f"{path.name}: RGB without alpha and no uniform background found; the whole "
                "image is the object (give an RGBA image with a transparent background)"
            )
        else:
            warnings.append(
                f"{path.name}: RGB without alpha; background estimated as the border colour "
                f"{colour} (give an RGBA image for an exact mask)"
            )
        log.warning(warnings[-1])
    if inputs_cfg.recenter and bool((rgba[3] < 1).any()):
        rgba = recenter(rgba, inputs_cfg.foreground_ratio)
    rgba = pad_to_square(rgba)
    pose = pose_reference = None
    if inputs_cfg.reference_pose is not None:
        from models.cameras import distance_for_fov

        pose = dict(inputs_cfg.reference_pose)
        pose["distance"] = float(distance_for_fov(pose["fov_deg"], pose.pop("relative_radius")))
        pose_reference = resize_rgba(as_given, inputs_cfg.size)
    return EvalObject(
        id=object_id(path.stem),
        reference=resize_rgba(rgba, inputs_cfg.size),
        reference_pose=pose,
        pose_reference=pose_reference,
        source={"path": str(path), "size": list(image.size), "alpha": has_alpha},
        warnings=warnings,
    )


def object_id(name: str) -> str:
    return name.replace(".", "_").replace("/", "_")


@functools.lru_cache(maxsize=256)
def _shard_digest(path: Path) -> str:
    """One sampled digest per shard (not a scan per object: shards hold thousands)."""
    from evaluation.fingerprint import file_digest

    return file_digest(path)


def _shard_object(sample: dict, shard: Path, inputs_cfg) -> EvalObject:
    meta = read_meta(sample)  # the format's checks: a bad sample is named, not guessed at

    def view(index: int) -> torch.Tensor:
        rgba = decode_view(sample, index).permute(2, 0, 1).float() / 255.0
        return resize_rgba(rgba, inputs_cfg.size)

    quad = meta.quads[0]
    ref_index = meta.refs[0] if meta.refs else quad[0]
    poses = [meta.pose(i) for i in quad]
    reference = view(ref_index)
    return EvalObject(
        id=sample["__key__"],
        reference=reference,
        reference_pose=meta.pose(ref_index),
        pose_reference=reference,  # shard views are never recentred
        gt_views=torch.stack([view(i) for i in quad]),
        gt_pose={k: [p[k] for p in poses] for k in poses[0]},
        source={
            "shard": str(shard),
            "license": meta.meta.get("license"),
            "origin": meta.meta.get("source"),
        },
    )


def _detect_kind(root: Path) -> str:
    if root.is_file():
        return "shards" if root.suffix == ".tar" else "images"
    return "shards" if any(root.rglob("*.tar")) else "images"


def list_objects(inputs_cfg) -> list[ObjectRef]:
    """Objects of ``inputs.path`` sorted by id (the order every rank partitions identically)."""
    if not inputs_cfg.path:
        raise ValueError("config key 'inputs.path': no input folder given (make eval IMAGES=...)")
    root = Path(inputs_cfg.path)
    if not root.exists():
        raise FileNotFoundError(f"inputs.path: {root} does not exist")
    kind = _detect_kind(root) if inputs_cfg.kind == "auto" else inputs_cfg.kind
    refs: list[ObjectRef] = []
    if kind == "images":
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                load = lambda p=path: _image_object(p, inputs_cfg)  # noqa: E731
                digest = lambda p=path: hashlib.sha256(p.read_bytes()).hexdigest()[:16]  # noqa: E731
                refs.append(ObjectRef(object_id(path.stem), load, digest))
    else:
        shards = [root] if root.is_file() else sorted(root.rglob("*.tar"))
        for shard in shards:
            for key in shard_keys(shard):
                load = lambda s=shard, k=key: _shard_object(read_sample(s, k), s, inputs_cfg)  # noqa: E731
                digest = lambda s=shard, k=key: f"{_shard_digest(s)}:{k}"  # noqa: E731
                refs.append(ObjectRef(key, load, digest))
    if not refs:
        what = (
            "shards (.tar) with samples"
            if kind == "shards"
            else f"images ({', '.join(IMAGE_SUFFIXES)})"
        )
        raise ValueError(f"inputs.path: no {what} found in {root}")
    ids = [r.id for r in refs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"inputs.path: duplicate object ids {dupes} (rename the files)")
    refs.sort(key=lambda r: r.id)
    return refs[: inputs_cfg.limit] if inputs_cfg.limit else refs

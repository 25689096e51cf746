"""The 2D multi-view score: views sampled by the diffusion model from the reference's CLIP
embedding, against the ground-truth renders of a held-out shard object at the same cameras."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from evaluation.inputs import EvalObject, on_background, save_rgba
from evaluation.metrics import clip_entry, image_scores
from models.cameras import orthogonal_azimuths
from models.sample import sample_views

EMPTY = {
    "mv_psnr": None,
    "mv_ssim": None,
    "mv_lpips": None,
    "mv_clip_raw": None,
    "mv_clip_x100": None,
}


def reference_frame_setting(value) -> bool | None:
    """``metrics.multiview.reference_frame``: ``auto`` (None: the model folder decides; stage-2
    models sample with their clean reference frame), or true/false."""
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    raise ValueError(
        f"config key 'metrics.multiview.reference_frame': {value!r} not auto|true|false"
    )


def multiview_scores(evaluator, obj: EvalObject, folder: Path) -> dict:
    """Sample 4 views (at the ground-truth quad's cameras for shards, else at the export
    elevation and orthogonal azimuths), save them, and score them when ground truth exists."""
    cfg = evaluator.cfg
    mv = cfg.metrics.multiview
    if not mv.enabled:
        return dict(EMPTY)
    if obj.gt_pose is not None:
        elevation, azimuths = obj.gt_pose["elevation_deg"][0], obj.gt_pose["azimuth_deg"]
    else:
        elevation, azimuths = cfg.export.elevation_deg, orthogonal_azimuths(0.0, cfg.cameras.views)
    sample = sample_views(
        evaluator.model,
        obj.reference,
        elevation_deg=float(elevation),
        azimuths_deg=torch.as_tensor(azimuths, dtype=torch.float32),
        seed=int(cfg.seed),
        guidance_scale=mv.guidance_scale,
        steps=mv.steps,
        use_reference_frame=reference_frame_setting(mv.get("reference_frame", "auto")),
        progress=False,
    )
    out = folder / "sampled"
    out.mkdir(parents=True, exist_ok=True)
    sample.grid.save(out / "grid.png")
    for index, image in enumerate(sample.images):
        save_rgba(image, out / f"view_{index:03d}.png")
    if obj.gt_views is None:
        return {**EMPTY, "mv_reference_frame": sample.used_reference_frame}
    size = sample.images.shape[-1]
    target = on_background(obj.gt_views, tuple(cfg.renderer.background))
    target = F.interpolate(target, (size, size), mode="bicubic", antialias=True).clamp(0, 1)
    scores = image_scores(sample.images, target, evaluator.lpips)
    cos = (evaluator.clip.embed(sample.images) * evaluator.clip.embed(target)).sum(-1)
    sims = {"raw": float(cos.mean()), "x100": 100.0 * float(cos.mean()), "per_view": cos.tolist()}
    return {
        "mv_psnr": scores["psnr"],  # mean of the per-view PSNRs
        "mv_ssim": scores["ssim"],
        "mv_lpips": scores["lpips"],
        "mv_psnr_per_view": scores["psnr_per_view"],
        "mv_reference_frame": sample.used_reference_frame,
        **clip_entry(evaluator.clip, sims, prefix="mv_clip"),
    }

"""Scores: CLIP similarity (reference vs rendered views), PSNR/SSIM/LPIPS (torchmetrics).

Images are float tensors ``[B,3,H,W]`` in [0,1], already composited on the chosen background.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from models.image_encoder import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}


class ClipScorer(torch.nn.Module):
    """Image embeddings of a CLIP vision tower, L2-normalised, for cosine similarities."""

    def __init__(self, visual: torch.nn.Module, image_size: int, name: str, meaningful: bool):
        super().__init__()
        self.visual, self.image_size, self.name = visual.eval(), image_size, name
        # A random-init tower (``tiny``) gives numbers that say nothing about the object (it
        # scores a blank white image ~0.99 against any reference): they are never a score.
        self.meaningful = meaningful
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> unit embeddings ``[B,D]`` (bicubic resize to the tower's
        input, CLIP mean/std)."""
        images = images.to(self.mean.device, self.mean.dtype)
        size = (self.image_size, self.image_size)
        if images.shape[-2:] != size:
            images = F.interpolate(
                images, size, mode="bicubic", antialias=True, align_corners=False
            )
        pixels = (images.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def similarity(self, reference: torch.Tensor, views: torch.Tensor) -> dict[str, float]:
        """Mean cosine between one reference ``[1,3,H,W]`` and N views ``[N,3,H,W]``: ``raw``
        (in [-1,1]), ``x100`` (the usual reporting unit) and ``per_view``."""
        cos = (self.embed(views) @ self.embed(reference).T).squeeze(-1)
        raw = float(cos.mean())
        return {"raw": raw, "x100": 100.0 * raw, "per_view": cos.tolist()}


def build_clip_scorer(clip_cfg, device: torch.device | str = "cpu", seed: int = 0) -> ClipScorer:
    """The scoring backbone of ``metrics.clip``: ``tiny`` (random init, tests only) or an open_clip
    model from ``local_path`` or its pretrained tag; offline without a local file, a clear error."""
    name = clip_cfg.backbone
    if name == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            visual = _build_vision_tower(32, CLIPVisionCfg(**TINY_VISION))
        return ClipScorer(visual, TINY_VISION["image_size"], "tiny", meaningful=False).to(device)
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"config key 'metrics.clip.backbone': unknown open_clip model {name!r}")
    source = clip_cfg.local_path or clip_cfg.pretrained
    if clip_cfg.local_path and not Path(clip_cfg.local_path).is_file():
        raise FileNotFoundError(f"metrics.clip.local_path: no file {clip_cfg.local_path}")
    try:
        model = open_clip.create_model(name, pretrained=source, device="cpu")
    except Exception as err:  # hub errors vary (offline, unknown tag); say what to do
        raise RuntimeError(
            f"could not load the scoring CLIP {name!r} with weights {source!r} ({err}). Without "
            "network, set metrics.clip.local_path=/path/to/open_clip_weights.bin, or "
            "metrics.clip.backbone=tiny for a smoke test (random weights, meaningless scores)."
        ) from err
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    weights = Path(clip_cfg.local_path).name if clip_cfg.local_path else clip_cfg.pretrained
    # No weights at all (pretrained null, no file) is a random tower too.
    scorer = ClipScorer(model.visual, int(size), f"{name}/{weights}", meaningful=bool(source))
    return scorer.to(device)


NOT_MEANINGFUL = "not meaningful: random-init CLIP tower"


def clip_entry(scorer: ClipScorer, sims: dict[str, float], prefix: str = "clip") -> dict:
    """The result keys of a CLIP similarity: ``{prefix}_raw/_x100/_per_view`` from a real
    backbone; from a random tower those are null and the numbers sit under
    ``{prefix}_random_tower`` (pipeline checks only), so no table or average can show them."""
    if scorer.meaningful:
        return {f"{prefix}_{k}": v for k, v in sims.items()}
    empty = {f"{prefix}_{k}": None for k in sims}
    return {**empty, f"{prefix}_random_tower": {**sims, "note": NOT_MEANINGFUL}}


def psnr_per_view(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    values = peak_signal_noise_ratio(
        pred.float(), target.float(), data_range=1.0, dim=(1, 2, 3), reduction="none"
    )
    return [float(v) for v in values.reshape(-1)]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of each view, averaged over views (as papers report it; not the PSNR of the pooled
    MSE, which a single bad view would dominate differently)."""
    values = psnr_per_view(pred, target)
    return sum(values) / len(values)


def ssim_per_view(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    values = structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none"
    )
    return [float(v) for v in values.reshape(-1)]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    values = ssim_per_view(pred, target)
    return sum(values) / len(values)


_LPIPS_BACKBONES = {
    "alex": "AlexNet_Weights",
    "vgg": "VGG16_Weights",
    "squeeze": "SqueezeNet1_1_Weights",
}


@contextlib.contextmanager
def _hub_dir_with(file: Path, expected_name: str):
    """A temporary torch hub folder holding ``file`` under the name torchvision looks for."""
    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        os.symlink(file.resolve(), Path(tmp) / "checkpoints" / expected_name)
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old)


def build_lpips(lpips_cfg, device: torch.device | str = "cpu"):
    """torchmetrics LPIPS, or ``(None, reason)`` when the ImageNet backbone weights are not
    available offline (torchmetrics ships the linear heads, not the torchvision backbone)."""
    import torchvision
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    net = lpips_cfg.net
    if net not in _LPIPS_BACKBONES:
        raise ValueError(
            f"config key 'metrics.lpips.net': {net!r} not in {sorted(_LPIPS_BACKBONES)}"
        )
    weights = getattr(torchvision.models, _LPIPS_BACKBONES[net]).DEFAULT
    expected = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / expected
    given = Path(lpips_cfg.backbone_weights) if lpips_cfg.backbone_weights else None
    if given is not None and not given.is_file():
        raise FileNotFoundError(f"metrics.lpips.backbone_weights: no file {given}")
    if given is None and not cached.is_file():
        reason = (
            f"LPIPS skipped: backbone weights {expected} not found in {cached.parent}; set "
            "metrics.lpips.backbone_weights=/path/to/" + expected
        )
        return None, reason
    context = _hub_dir_with(given, expected) if given is not None else contextlib.nullcontext()
    with context:
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    return metric.to(device), f"LPIPS-{net}"


def lpips(metric, pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """LPIPS of each view, averaged over views (torchmetrics' ``mean`` reduction)."""
    if metric is None:
        return None
    device = next(metric.parameters(), torch.empty(0)).device
    metric.reset()
    return float(metric(pred.float().to(device).clamp(0, 1), target.float().to(device).clamp(0, 1)))


def image_scores(pred: torch.Tensor, target: torch.Tensor, lpips_metric=None) -> dict:
    """PSNR, SSIM and LPIPS of ``pred`` against ``target`` (both ``[B,3,H,W]`` in [0,1]), each
    the mean over the ``B`` views, plus the per-view PSNR and SSIM."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
    psnrs, ssims = psnr_per_view(pred, target), ssim_per_view(pred, target)
    return {
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(ssims) / len(ssims),
        "lpips": lpips(lpips_metric, pred, target),
        "psnr_per_view": psnrs,
        "ssim_per_view": ssims,
    }

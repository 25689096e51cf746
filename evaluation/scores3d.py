"""Scores of a 3D object against an object's ground-truth renders, and the views they use.

A field (learned or analytic) is rendered by the SDS renderer (``evaluation.export.render_cameras``,
albedo, unjittered) at the cameras of chosen ground-truth views and compared with them:

* ``iou``: silhouette IoU, rendered alpha > 0.5 against the render's alpha > 0.5;
* ``fg_psnr``: PSNR (dB) over the ground truth's foreground pixels only, both on white: a white
  background cannot inflate it, as it inflates a whole-image PSNR. The foreground is the
  silhouette (alpha > 0.5) less its one-pixel border, whose antialiased, partly white pixels are
  the silhouette's business (``iou``): the true cube in its true mean face colours scores ~21 dB
  with the border and ~27 dB without it at 64 px;
* ``psnr``: the whole image on white (kept for comparison with older reports);
* for the coloured cube: per face, the mean rendered colour over the pixels where the true cube
  shows that face (``evaluation.analytic.face_map``) against the ground truth's mean there;
  ``faces_correct`` counts the faces (of those seen from the side or above, ``faces_seen``) whose
  mean colour is nearest their own true colour among all scored faces' true colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import webdataset as wds

from evaluation.analytic import FACE_NAMES, SCORED_FACES, face_map
from evaluation.export import render_cameras
from evaluation.views import CameraBatch
from models.shards.format import read_meta
from models.shards.images import BACKGROUNDS, composite, decode_rgba
from models.shards.urls import expand_shard_urls

WHITE = BACKGROUNDS["white"]


@dataclass
class GtViews:
    """Some views of one object: premultiplied RGBA ``[V,4,H,W]`` and their cameras."""

    key: str
    views: torch.Tensor
    cameras: CameraBatch
    indices: list[int]

    @property
    def rgb(self) -> torch.Tensor:
        return composite(self.views, WHITE)

    def subset(self, picks: list[int]) -> GtViews:
        cams = CameraBatch(*(getattr(self.cameras, k)[picks] for k in _CAMERA_KEYS))
        return GtViews(self.key, self.views[picks], cams, [self.indices[i] for i in picks])


_CAMERA_KEYS = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")


def read_object(shards: list[str], key: str) -> dict:
    """The raw sample of ``key`` from the shards (KeyError naming the shards when absent)."""
    for sample in wds.WebDataset(expand_shard_urls(shards), shardshuffle=False, empty_check=False):
        if sample["__key__"] == key:
            return sample
    raise KeyError(f"object {key!r} is not in {shards}")


def split_views(sample: dict) -> tuple[list[int], list[int], bool]:
    """(fit views, scored views, whether the scored views are held out). The scored views are the
    quadruples the renderer held out of training (``heldout_quads`` of meta.json); the fit views
    are every training view (quadruples and references). Shards without held-out quadruples score
    their last training quadruple (and say so: ``False``)."""
    meta = read_meta(sample)
    heldout = [i for quad in meta.meta.get("heldout_quads") or [] for i in quad]
    fit = [i for quad in meta.quads for i in quad] + list(meta.refs)
    if heldout:
        return fit, heldout, True
    return fit, list(meta.quads[-1]), False


def load_views(sample: dict, indices: list[int], resolution: int) -> GtViews:
    """Views ``indices`` of a raw sample at ``resolution`` with their cameras."""
    meta = read_meta(sample)
    poses = [meta.pose(i) for i in indices]
    cams = CameraBatch(*(torch.tensor([p[k] for p in poses]) for k in _CAMERA_KEYS))
    views = torch.stack([decode_rgba(sample, i, resolution) for i in indices])
    return GtViews(sample["__key__"], views, cams, list(indices))


def interior(mask: torch.Tensor) -> torch.Tensor:
    """``[V,H,W]`` bool mask less its one-pixel border (a 3x3 erosion)."""
    outside = (~mask).float()[:, None]
    return F.max_pool2d(outside, 3, stride=1, padding=1)[:, 0] == 0


def view_metrics(rgb: torch.Tensor, alpha: torch.Tensor, truth: GtViews) -> dict[str, list]:
    """Per-view ``iou``, ``fg_psnr`` and ``psnr`` of renders ``rgb [V,3,H,W]`` on white with
    ``alpha [V,H,W]`` against ``truth``."""
    target = truth.rgb
    fg = truth.views[:, 3] > 0.5
    err = (rgb.clamp(0, 1) - target).pow(2).mean(1)  # [V,H,W]
    full = err.flatten(1).mean(1).clamp_min(1e-10)
    mine = alpha > 0.5
    iou = (mine & fg).flatten(1).sum(1) / (mine | fg).flatten(1).sum(1).clamp_min(1)
    return {
        "iou": iou.float().tolist(),
        "fg_psnr": fg_psnr(rgb, target, fg).tolist(),
        "psnr": (10 * torch.log10(1 / full)).tolist(),
    }


def fg_psnr(rgb: torch.Tensor, target: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Per-view PSNR ``[V]`` of ``rgb`` against ``target`` (both ``[V,3,H,W]``) over the
    foreground ``fg [V,H,W]`` less its one-pixel border (module doc)."""
    err = (rgb.clamp(0, 1) - target).pow(2).mean(1)
    inner = interior(fg)
    masked = (err * inner).flatten(1).sum(1) / inner.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(1 / masked.clamp_min(1e-10))


def face_scores(rgb: torch.Tensor, truth: GtViews) -> dict:
    """Per-face mean colours of ``rgb [V,3,H,W]`` against the ground truth's (the cube only)."""
    faces = face_map(truth.cameras, truth.views.shape[-1])
    target = truth.rgb
    seen, pred_means, true_means = [], [], []
    for face in SCORED_FACES:
        mask = (faces == face) & (truth.views[:, 3] > 0.5)
        if int(mask.sum()) < 4:  # a face seen edge-on (or not at all) is not scored
            continue
        count = int(mask.sum())
        seen.append(face)
        pred_means.append((rgb.clamp(0, 1) * mask[:, None]).sum((0, 2, 3)) / count)
        true_means.append((target * mask[:, None]).sum((0, 2, 3)) / count)
    if not seen:
        return {"faces_seen": 0, "faces_correct": 0, "faces": {}}
    pred, true = torch.stack(pred_means), torch.stack(true_means)
    dist = torch.cdist(pred, true)  # [seen, seen]: each face's colour to every true colour
    correct = dist.argmin(1) == torch.arange(len(seen))
    return {
        "faces_seen": len(seen),
        "faces_correct": int(correct.sum()),
        "face_colour_error": float(dist.diagonal().mean()),
        "faces": {
            FACE_NAMES[face]: {
                "rendered": [round(float(v), 4) for v in pred[i]],
                "truth": [round(float(v), 4) for v in true[i]],
                "error": round(float(dist[i, i]), 4),
                "correct": bool(correct[i]),
            }
            for i, face in enumerate(seen)
        },
    }


def score_field(
    field, occupancy, cfg, truth: GtViews, cube: bool = False
) -> tuple[dict, torch.Tensor]:
    """Scores of a field rendered at ``truth``'s cameras (means and per view), and its renders
    ``[V,3,H,W]`` on white."""
    size = truth.views.shape[-1]
    out = render_cameras(field.eval(), occupancy, truth.cameras, size, cfg, WHITE)
    rgb = out["rgb"].permute(0, 3, 1, 2).clamp(0, 1)
    per_view = view_metrics(rgb, out["alpha"].reshape(-1, size, size), truth)
    scores = {f"mean_{k}": sum(v) / len(v) for k, v in per_view.items()}
    scores["per_view"] = per_view
    if cube:
        scores.update(face_scores(rgb, truth))
    return scores, rgb

"""Evaluate one object: SDS from its CLIP embedding, exports, scores, ``result.json``.

The :class:`Evaluator` holds what every object shares (the frozen model, the guidance, the scoring
CLIP, LPIPS) so a worker builds them once. An object is done when its ``result.json`` exists; an
interrupted object resumes from its field checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from evaluation import export
from evaluation.guidance import MultiViewGuidance
from evaluation.inputs import EvalObject, ObjectRef, on_background, save_rgba
from evaluation.metrics import build_clip_scorer, build_lpips, image_scores
from evaluation.multiview import multiview_scores
from evaluation.sds import optimise
from evaluation.views import CameraBatch, orbit_cameras
from models.bundle import MultiViewDiffusion, build_model, load_model

log = logging.getLogger(__name__)
RESULT = "result.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in table:
        raise ValueError(f"config key 'precision': {precision!r} not in auto|bf16|fp16|fp32")
    return table[precision]


def load_frozen_model(cfg, device: torch.device) -> MultiViewDiffusion:
    """Our model folder (``model.path``) or a random-init preset (``model.size``), frozen."""
    if cfg.model.path:
        model = load_model(
            cfg.model.path,
            device=device,
            image_encoder_checkpoint=cfg.model.image_encoder_checkpoint,
        )
    else:
        model = build_model(cfg.model.size, seed=int(cfg.seed), device=device)
    if model.image_encoder is None:
        raise ValueError(f"{cfg.model.path}: the model has no image encoder to embed references")
    model.requires_grad_(False)
    return model.eval()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class Evaluator:
    def __init__(self, cfg, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.device = resolve_device(cfg.device)
        self.model = load_frozen_model(cfg, self.device)
        self.guidance = MultiViewGuidance(
            self.model,
            cfg.sds,
            cfg.cameras.views,
            self.device,
            autocast_dtype(cfg.precision, self.device),
        )
        self.clip = build_clip_scorer(cfg.metrics.clip, self.device, seed=int(cfg.seed))
        self.lpips, self.lpips_note = build_lpips(cfg.metrics.lpips, self.device)
        if self.lpips is None:
            log.warning(self.lpips_note)

    def camera_input(self, cameras: CameraBatch) -> torch.Tensor:
        """The model's camera vectors, in its own convention (legacy flag of Isotropic3D)."""
        return self.model.cameras(cameras.elevation_deg, cameras.azimuth_deg, cameras.distance)

    def __call__(self, ref: ObjectRef, folder: Path) -> dict:
        cfg, start = self.cfg, time.time()
        folder.mkdir(parents=True, exist_ok=True)
        obj = ref.load()
        save_rgba(obj.reference, folder / "reference.png")
        with torch.no_grad():
            cond = self.model.image_encoder.encode(obj.reference[None].to(self.device))
        state = optimise(
            self.guidance,
            cond,
            cfg,
            folder / "field.pt",
            self.camera_input,
            self.progress,
            description=obj.id,
        )
        files = self.export(state, folder)
        scores = self.score(obj, state, folder)
        notes = [] if self.lpips is not None else [self.lpips_note]
        result = {
            "id": obj.id,
            "source": obj.source,
            "steps": state.step,
            "seconds": round(time.time() - start, 2),
            "model": cfg.model.path or f"random:{cfg.model.size}",
            "clip_backbone": self.clip.name,
            **scores,
            "files": {k: [str(p.relative_to(folder)) for p in v] for k, v in files.items()},
            "notes": notes,
        }
        write_json_atomic(folder / RESULT, result)  # written last: marks the object done
        return result

    def export(self, state, folder: Path) -> dict[str, list[Path]]:
        cfg = self.cfg
        return {
            "views": export.save_views(state.field, state.occupancy, cfg, folder / "views"),
            "video": [
                export.save_turntable(state.field, state.occupancy, cfg, folder / "turntable.mp4")
            ],
            "mesh": export.save_mesh(state.field, cfg, folder / "mesh"),
        }

    def score(self, obj: EvalObject, state, folder: Path) -> dict:
        cfg = self.cfg
        clip_cfg = cfg.metrics.clip
        background = tuple(clip_cfg.background)
        cams = orbit_cameras(
            clip_cfg.num_views, clip_cfg.elevation_deg, clip_cfg.fov_deg, clip_cfg.relative_radius
        )
        renders = export.render_cameras(
            state.field, state.occupancy, cams, clip_cfg.resolution, cfg, background
        )["rgb"].permute(0, 3, 1, 2)
        reference = on_background(obj.reference, background)[None]
        scores: dict = dict(self.clip.similarity(reference, renders))
        scores.update({"psnr": None, "ssim": None, "lpips": None})
        if obj.reference_pose is not None:
            pose = obj.reference_pose
            cam = CameraBatch(*(torch.tensor([float(pose[k])]) for k in _POSE_KEYS))
            size = obj.reference.shape[-1]
            pred = export.render_cameras(state.field, state.occupancy, cam, size, cfg)["rgb"]
            target = on_background(obj.reference, tuple(cfg.renderer.background))[None]
            scores.update(image_scores(pred.permute(0, 3, 1, 2), target, self.lpips))
        scores.update(self.multiview_score(obj, folder))
        return scores

    def multiview_score(self, obj: EvalObject, folder: Path) -> dict:
        """Views sampled by the diffusion model (the 2D prior SDS distils), scored against
        ground-truth renders when the object comes from shards."""
        return multiview_scores(self, obj, folder)


_POSE_KEYS = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")


def is_done(folder: Path) -> bool:
    return (folder / RESULT).is_file()

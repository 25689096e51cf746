"""Evaluate one object: SDS from its CLIP embedding, exports, scores, ``result.json``.

The :class:`Evaluator` holds what every object shares (the frozen model, the guidance, the scoring
CLIP, LPIPS) so a worker builds them once. An object is done when its ``result.json`` exists
(with the fingerprint of the model, config and scorer that made it, ``evaluation/fingerprint.py``);
an interrupted object resumes from its field checkpoint; ``fingerprint.json`` says what an
unfinished object was started with.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
import yaml

from evaluation import export
from evaluation.config import Cfg
from evaluation.guidance import MultiViewGuidance
from evaluation.inputs import EvalObject, ObjectRef, on_background, save_rgba
from evaluation.metrics import (
    NOT_MEANINGFUL,
    build_clip_scorer,
    build_lpips,
    clip_entry,
    image_scores,
)
from evaluation.multiview import multiview_scores
from evaluation.report_views import save_geometry_views
from evaluation.sds import optimise
from evaluation.views import CameraBatch, orbit_cameras
from models.bundle import MultiViewDiffusion, build_model, load_model

log = logging.getLogger(__name__)
RESULT = "result.json"
FAILED = "failed.json"
STARTED = "fingerprint.json"


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


# the model folder's training record (model.json source) -> the SDS camera range it sets
FRAMING_KEYS = {
    "camera_distance_range": "relative_radius",
    "fov_range": "fov_deg",
    "elevation_range": "elevation_deg",
}


def with_model_framing(cfg, model: MultiViewDiffusion):
    """``cameras.framing: model``: the SDS cameras drawn from the ranges the model was trained
    on (recorded in its folder), so SDS asks the prior about the framing it knows; models
    without a record (and ``framing: config``) keep the configured ranges."""
    if cfg.cameras.get("framing", "config") != "model":
        return cfg
    recorded = {key: model.source.get(key) for key in FRAMING_KEYS}
    if not any(recorded.values()):
        return cfg
    out = Cfg(cfg.to_dict())
    for key, value in recorded.items():
        if value:
            out.cameras[FRAMING_KEYS[key]] = [float(v) for v in value]
    log.info(
        "SDS cameras from the model's training record: %s", {k: v for k, v in recorded.items() if v}
    )
    return out


class Evaluator:
    def __init__(self, cfg, progress: bool = True):
        self.device = resolve_device(cfg.device)
        self.model = load_frozen_model(cfg, self.device)
        cfg = with_model_framing(cfg, self.model)
        self.cfg, self.progress = cfg, progress
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

    def provenance(self) -> dict:
        """What made the results: the model (folder and its recorded origin) and the scorer."""
        return {
            "model": self.cfg.model.path or f"random:{self.cfg.model.size}",
            "model_source": self.model.source,
            "legacy_double_radians": self.model.legacy_double_radians,
            "clip_backbone": self.clip.name,
            "clip_meaningful": self.clip.meaningful,
            "lpips": self.lpips_note if self.lpips is not None else None,
        }

    def __call__(self, ref: ObjectRef, folder: Path, fingerprint: dict | None = None) -> dict:
        cfg, start = self.cfg, time.time()
        folder.mkdir(parents=True, exist_ok=True)
        if fingerprint is not None:  # what this (maybe interrupted) object was started with
            write_json_atomic(folder / STARTED, fingerprint)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        obj = ref.load()
        save_rgba(obj.reference, folder / "reference.png")
        with torch.no_grad():
            # the reference as the model's training made it (its recorded reference_resolution:
            # the loader's resize and white background, models.shards.images.reference_on_white)
            cond = self.model.encode_reference(obj.reference[None].to(self.device))
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
        mesh_file = folder / "mesh" / "mesh.json"
        mesh = json.loads(mesh_file.read_text()) if mesh_file.is_file() else None
        scores = self.score(obj, state, folder)
        files["sampled"] = sorted((folder / "sampled").glob("view_*.png"))
        notes = list(obj.warnings)
        if self.lpips is None:
            notes.append(self.lpips_note)
        if not self.clip.meaningful:
            notes.append(f"CLIP {self.clip.name}: {NOT_MEANINGFUL}; no CLIP score recorded")
        if mesh and mesh.get("iso_fallback"):
            notes.append(
                f"mesh: export.mesh_threshold {mesh['configured_level']:g} misses the density "
                f"range; fell back to the mean density {mesh['iso_level']:.4g} (likely a blob)"
            )
        provenance = self.provenance()
        result = {
            "id": obj.id,
            "source": obj.source,
            "steps": state.step,
            "seconds": round(time.time() - start, 2),
            "model": provenance["model"],
            "clip_backbone": self.clip.name,
            "provenance": provenance,
            "mesh": mesh,
            **scores,
            "files": {k: [str(p.relative_to(folder)) for p in v] for k, v in files.items()},
            "notes": notes,
            "fingerprint": fingerprint,
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
            **save_geometry_views(state.field, state.occupancy, cfg, folder),
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
        scores: dict = clip_entry(self.clip, self.clip.similarity(reference, renders))
        scores.update({"psnr": None, "ssim": None, "lpips": None})
        if obj.reference_pose is not None:
            # The pose refers to the image as given (not the recentred conditioning image).
            pose, given = obj.reference_pose, obj.pose_reference
            cam = CameraBatch(*(torch.tensor([float(pose[k])]) for k in _POSE_KEYS))
            size = given.shape[-1]
            pred = export.render_cameras(state.field, state.occupancy, cam, size, cfg)["rgb"]
            target = on_background(given, tuple(cfg.renderer.background))[None]
            pose_scores = image_scores(pred.permute(0, 3, 1, 2), target, self.lpips)
            scores.update({k: pose_scores[k] for k in ("psnr", "ssim", "lpips")})
        scores.update(self.multiview_score(obj, folder))
        return scores

    def multiview_score(self, obj: EvalObject, folder: Path) -> dict:
        """Views sampled by the diffusion model (the 2D prior SDS distils), scored against
        ground-truth renders when the object comes from shards."""
        return multiview_scores(self, obj, folder)


_POSE_KEYS = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")


def is_done(folder: Path) -> bool:
    return (folder / RESULT).is_file()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

"""Evaluation config: the YAML defaults, a user YAML on top and ``key.sub=value`` overrides.

Every key a user may set exists in ``configs/eval.yaml`` (the documented defaults, which are the
schema of the shared config system, models/config.py); anything else is an error that names the
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from models.config import (
    COMMAND_LINE,
    ConfigError,
    Resolved,
    compose,
    label,
    overrides_layer,
    read_yaml,
    schema_from_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "eval.yaml"


class Cfg(dict):
    """A dict with attribute access (``cfg.sds.steps``), nested dicts converted on creation."""

    def __init__(self, data: dict[str, Any] | None = None):
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = Cfg(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(f"config has no key {name!r}") from err

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, Cfg) else copy.deepcopy(v) for k, v in self.items()}


def resolve_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Cfg, Resolved]:
    """Defaults (configs/eval.yaml) <- YAML file at ``path`` <- ``overrides`` <- ``extra``
    (explicit CLI flags such as ``--steps``, which win). Also returns where each value came from."""
    layers = [
        (label(path) if path else "", read_yaml(path) if path is not None else None),
        (COMMAND_LINE, overrides_layer(overrides or [])),
        ("command-line flag", extra),
    ]
    resolved = compose(schema_from_yaml(DEFAULT_CONFIG), layers, label(DEFAULT_CONFIG))
    cfg = Cfg(resolved.to_container())
    validate(cfg)
    return cfg, resolved


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Cfg:
    """Defaults <- YAML file at ``path`` <- ``overrides`` <- ``extra`` (explicit CLI flags such
    as ``--steps``, which win)."""
    return resolve_config(path, overrides, extra)[0]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {message}")


def validate(cfg: Cfg) -> None:
    """Value checks that types alone cannot express."""
    sds = cfg.sds
    _check(sds.steps >= 1, "sds.steps", "must be >= 1")
    _check(sds.loss in ("x0_recon", "sds"), "sds.loss", "must be x0_recon or sds")
    _check(sds.target_space in ("latent", "image"), "sds.target_space", "must be latent or image")
    _check(
        len(sds.resolution) == len(sds.batch_views) == len(sds.milestones) + 1,
        "sds.milestones",
        "needs one entry fewer than sds.resolution and sds.batch_views",
    )
    for views in sds.batch_views:
        _check(views % cfg.cameras.views == 0, "sds.batch_views", "multiple of cameras.views")
    _check(0.0 <= sds.recon_std_rescale <= 1.0, "sds.recon_std_rescale", "must be in [0, 1]")
    _check(len(sds.t_end) == 2, "sds.t_end", "must be [min, max]")
    _check(sds.guidance_scale >= 0, "sds.guidance_scale", "must be >= 0")
    end = sds.guidance_scale_end
    _check(end is None or end >= 0, "sds.guidance_scale_end", "must be >= 0 or null (constant)")
    _check(cfg.material.mode in ("albedo", "diffuse"), "material.mode", "albedo or diffuse")
    start = cfg.optim.decay_start
    _check(start is None or start >= 0, "optim.decay_start", "must be >= 0 or null (constant)")
    _check(0.0 < cfg.optim.decay_to <= 1.0, "optim.decay_to", "must be in (0, 1]")
    for key in ("diffuse_prob", "textureless_prob"):
        _check(0.0 <= cfg.material[key] <= 1.0, f"material.{key}", "must be in [0, 1]")
    rnd = cfg.renderer
    for key in ("samples_per_ray", "proposal_samples", "surface_samples"):
        _check(rnd[key] >= 1, f"renderer.{key}", "must be >= 1")
    _check(rnd.grad_chunk_rays >= 0, "renderer.grad_chunk_rays", "must be >= 0")
    for key in ("proposal_fill", "surface_fill"):
        _check(0.0 < rnd[key] <= 1.0, f"renderer.{key}", "must be in (0, 1]")
    _check(
        cfg.cameras.elevation_sampling in ("threestudio", "uniform"),
        "cameras.elevation_sampling",
        "threestudio or uniform",
    )
    _check(cfg.speed.compile in ("auto", True, False), "speed.compile", "auto, true or false")
    _check(cfg.speed.log_every >= 1, "speed.log_every", "must be >= 1")
    _check(sds.unet_compile in ("auto", True, False), "sds.unet_compile", "auto, on or off")
    _check(
        cfg.field.normal in ("finite_difference", "analytic"),
        "field.normal",
        "finite_difference or analytic",
    )
    for key in ("elevation_deg", "fov_deg", "relative_radius", "azimuth_deg"):
        low, high = cfg.cameras[key]
        _check(low <= high, f"cameras.{key}", "must be [low, high] with low <= high")
    _check(cfg.cameras.framing in ("model", "config"), "cameras.framing", "model or config")
    _check(sds.vae_latent in ("auto", "sample", "mean"), "sds.vae_latent", "auto, sample or mean")
    _check(sds.preview_every >= 0, "sds.preview_every", "must be >= 0 (0: no previews)")
    _check(cfg.report.clip_unit in ("raw", "x100"), "report.clip_unit", "raw or x100")
    _check(cfg.inputs.kind in ("auto", "images", "shards"), "inputs.kind", "auto|images|shards")
    _check(
        cfg.metrics.multiview.reference_frame in ("auto", True, False),
        "metrics.multiview.reference_frame",
        "auto, true or false",
    )


__all__ = ["Cfg", "ConfigError", "load_config", "resolve_config"]

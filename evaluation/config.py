"""Evaluation config: the YAML defaults, a user YAML on top and ``key.sub=value`` overrides.

Every key a user may set exists in ``configs/eval.yaml`` (the documented defaults); anything else is
an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "eval.yaml"


class ConfigError(ValueError):
    """A bad key or value in an evaluation config; the message names the key."""


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


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True  # optional keys: null means "not set"
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool) or isinstance(default, str)
    if isinstance(default, int | float) and isinstance(value, int | float):
        return isinstance(default, float) or isinstance(value, int)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple)
    if isinstance(default, str):
        return isinstance(value, str | bool | int | float)  # e.g. "auto" or a concrete value
    return isinstance(value, type(default))


def merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys and wrong types raise."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in out:
            known = ", ".join(sorted(out)) or "(none)"
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section; got {value!r}")
            out[key] = merge(out[key], value, prefix=f"{name}.")
            continue
        if not _compatible(out[key], value):
            raise ConfigError(
                f"config key {name!r} expects a {type(out[key]).__name__}, got {value!r}"
            )
        if isinstance(out[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Cfg:
    """Defaults <- YAML file at ``path`` <- ``overrides`` <- ``extra`` (explicit CLI flags such
    as ``--steps``, which win)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = merge(data, user)
    for text in overrides or []:
        data = merge(data, parse_override(text))
    if extra:
        data = merge(data, extra)
    cfg = Cfg(data)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r}: {message}")


def validate(cfg: Cfg) -> None:
    """Value checks that types alone cannot express."""
    sds = cfg.sds
    _check(sds.steps >= 1, "sds.steps", "must be >= 1")
    _check(sds.loss in ("x0_recon", "sds"), "sds.loss", "must be x0_recon or sds")
    _check(
        len(sds.resolution) == len(sds.batch_views) == len(sds.milestones) + 1,
        "sds.milestones",
        "needs one entry fewer than sds.resolution and sds.batch_views",
    )
    for views in sds.batch_views:
        _check(views % cfg.cameras.views == 0, "sds.batch_views", "multiple of cameras.views")
    _check(0.0 <= sds.recon_std_rescale <= 1.0, "sds.recon_std_rescale", "must be in [0, 1]")
    _check(len(sds.t_end) == 2, "sds.t_end", "must be [min, max]")
    _check(cfg.material.mode in ("albedo", "diffuse"), "material.mode", "albedo or diffuse")
    for key in ("diffuse_prob", "textureless_prob"):
        _check(0.0 <= cfg.material[key] <= 1.0, f"material.{key}", "must be in [0, 1]")
    rnd = cfg.renderer
    for key in ("samples_per_ray", "proposal_samples", "surface_samples"):
        _check(rnd[key] >= 1, f"renderer.{key}", "must be >= 1")
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
    _check(cfg.report.clip_unit in ("raw", "x100"), "report.clip_unit", "raw or x100")
    _check(cfg.inputs.kind in ("auto", "images", "shards"), "inputs.kind", "auto|images|shards")
    _check(
        cfg.metrics.multiview.reference_frame in ("auto", True, False),
        "metrics.multiview.reference_frame",
        "auto, true or false",
    )

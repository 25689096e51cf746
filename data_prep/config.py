"""Render run settings: one dataclass (the schema of the shared config system, models/config.py),
loaded from ``configs/render*.yaml`` and overridden by CLI flags generated from the same fields and
by ``key.sub=value`` overrides (so the YAML, the flags and the API never drift apart). Every key is
documented in ``configs/render.yaml``; the flags' help is read from those comments."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from models.config import (
    COMMAND_LINE,
    ConfigError,
    Resolved,
    comments,
    compose,
    label,
    overrides_layer,
    read_yaml,
)

OBJAVERSE_HUB = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"
OBJAVERSE_XL_HUB = "https://huggingface.co/datasets/allenai/objaverse-xl/resolve/main"
# Bump when the worker's scene code changes the pixels (lighting, framing, materials), so a
# resume refuses to mix renders of two code versions in one folder.
RENDER_VERSION = 2
# The object's bounding sphere may span at most this fraction of the half-image in any view
# (models/cameras.py: worst_case_fraction); the rest is the margin to the image border.
MAX_FRAME_FRACTION = 0.92
# Pixel settings added after RENDER_VERSION 2, with the values that reproduce the pixels from
# before they existed: a manifest that lacks them was rendered with these (see upgrade_settings).
ADDED_SETTINGS = {
    "untextured_color": [0.906, 0.906, 0.906],
    "light_randomization": False,
    "hdri_folder": None,
    "albedo": False,
    "heldout_quads": 0,
}


def upgrade_settings(settings: dict) -> dict:
    """A manifest's recorded pixel settings with the keys added since filled in, so runs
    written before a new key existed still resume (their pixels equal the key's old value)."""
    return {key: value for key, value in ADDED_SETTINGS.items() if key not in settings} | settings


@dataclass
class ObjaverseOptions:
    uids: list[str] = field(default_factory=list)
    uid_file: str | None = None
    lvis_categories: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    exclude_licenses: list[str] = field(default_factory=list)
    download_workers: int = 8
    download_timeout_s: float = 60.0
    download_retries: int = 3
    connect_timeout_s: float = 5.0
    download_deadline_s: float = 600.0
    base_url: str = OBJAVERSE_HUB
    cache_dir: str | None = None
    delete_after_shard: bool = False
    xl_sources: list[str] = field(default_factory=list)
    file_types: list[str] = field(default_factory=list)
    deduplicate: bool = True
    xl_base_url: str = OBJAVERSE_XL_HUB
    github_raw_url: str = "https://raw.githubusercontent.com"
    thingiverse_url: str = "https://www.thingiverse.com"


@dataclass
class RenderConfig:
    source: str = "objaverse"
    out: str = "outputs/render"
    count: int | None = None
    seed: int = 0
    res: int = 256
    num_quads: int = 2
    num_refs: int = 2
    heldout_quads: int = 0
    elevation_deg: tuple[float, float] = (0.0, 30.0)
    fov_deg: tuple[float, float] = (15.0, 60.0)
    relative_radius: tuple[float, float] = (0.9, 1.1)
    ref_elevation_deg: tuple[float, float] = (-10.0, 40.0)
    azimuth_start_deg: float | None = None
    samples: int = 32
    adaptive_threshold: float = 0.01
    denoise: bool = True
    max_bounces: int = 4
    device: str = "auto"
    threads: int = 0
    ambient: float = 0.75
    key_light: float = 1.0
    missing_metallic_as: float | None = 0.0
    keep_imported_lights: bool = False
    untextured_color: tuple[float, float, float] = (0.906, 0.906, 0.906)
    light_randomization: bool = False
    hdri_folder: str | None = None
    albedo: bool = False
    draco_library: str | None = None
    min_coverage: float = 0.002
    depth: bool = False
    normal: bool = False
    workers: int = 1
    timeout_s: float = 300.0
    crash_retries: int = 1
    timeout_retries: int = 1
    max_attempts: int = 3
    recycle_after: int = 200
    prefetch: int = 64
    shard_size: int = 64
    retry_failed: bool = False
    part_index: int | None = None
    part_count: int | None = None
    progress: bool = True
    objaverse: ObjaverseOptions = field(default_factory=ObjaverseOptions)

    def validate(self) -> RenderConfig:
        checks = {
            "res": self.res >= 8,
            "num_quads": self.num_quads >= 0,
            "num_refs": self.num_refs >= 0,
            "heldout_quads": self.heldout_quads >= 0,
            "samples": self.samples >= 1,
            "workers": self.workers >= 1,
            "timeout_s": self.timeout_s > 0,
            "shard_size": self.shard_size >= 1,
            "device": self.device in ("auto", "cpu", "cuda", "optix"),
            "count": self.count is None or self.count >= 0,
            "crash_retries": self.crash_retries >= 0,
            "timeout_retries": self.timeout_retries >= 0,
            "max_attempts": self.max_attempts >= 1,
            "recycle_after": self.recycle_after >= 0,
            "prefetch": self.prefetch >= 1,
            "untextured_color": len(self.untextured_color) == 3
            and all(0.0 <= c <= 1.0 for c in self.untextured_color),
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"render config: bad value for {key!r}: {getattr(self, key)!r}")
        if self.num_quads + self.num_refs == 0:
            raise ValueError("render config: num_quads + num_refs must be at least 1")
        for key in ("elevation_deg", "fov_deg", "relative_radius", "ref_elevation_deg"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"render config: {key!r} range is reversed: {[low, high]}")
        if not (0 < self.fov_deg[0] and self.fov_deg[1] < 180):
            raise ValueError(f"render config: 'fov_deg' must lie in (0, 180): {self.fov_deg}")
        if self.relative_radius[0] <= 0:
            raise ValueError(
                f"render config: 'relative_radius' must be > 0: {self.relative_radius}"
            )
        from models.cameras import worst_case_fraction  # the one framing definition

        worst = worst_case_fraction(self.fov_deg, self.relative_radius)
        if worst > MAX_FRAME_FRACTION:
            raise ValueError(
                f"render config: 'relative_radius' {list(self.relative_radius)} with 'fov_deg' "
                f"{list(self.fov_deg)} crops objects: at fov {max(self.fov_deg)} and relative "
                f"radius {min(self.relative_radius)} the object's bounding sphere spans "
                f"{worst:.2f} of the half-image (at most {MAX_FRAME_FRACTION}); raise the low "
                "relative_radius or lower the high fov_deg"
            )
        return self

    def worker_settings(self) -> dict:
        """The subset the Blender worker needs (also stored as ``renderer`` in meta.json)."""
        from models.cameras import OBJECT_RADIUS

        keys = ("res", "samples", "adaptive_threshold", "denoise", "max_bounces", "device")
        keys += ("threads", "ambient", "key_light", "missing_metallic_as", "keep_imported_lights")
        keys += ("depth", "normal", "albedo", "untextured_color", "light_randomization")
        keys += ("hdri_folder", "draco_library")
        settings = {key: getattr(self, key) for key in keys}
        settings["untextured_color"] = list(self.untextured_color)
        return settings | {"object_radius": OBJECT_RADIUS}

    def pixel_settings(self) -> dict:
        """Every setting that changes the rendered data (a resume must not mix them): all of the
        config except how the run is executed (workers, device, threads, timeouts, partitions,
        selection of objects, progress). Includes the framing radius and RENDER_VERSION."""
        execution = {"out", "count", "device", "threads", "workers", "timeout_s", "progress"}
        execution |= {"crash_retries", "shard_size", "retry_failed", "part_index", "part_count"}
        execution |= {"objaverse", "min_coverage", "timeout_retries", "max_attempts"}
        execution |= {"recycle_after", "draco_library", "prefetch"}
        settings = {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
            if f.name not in execution
        }
        from models.cameras import OBJECT_RADIUS

        return settings | {"object_radius": OBJECT_RADIUS, "render_version": RENDER_VERSION}


CONFIG_DOCS = Path(__file__).resolve().parents[1] / "configs" / "render.yaml"
_OBJAVERSE_KEYS = {f.name for f in dataclasses.fields(ObjaverseOptions)}


def _is_tuple(annotation) -> bool:
    return str(annotation).startswith("tuple")


def _dotted(key: str) -> str:
    """A flat keyword / flag name (``lvis_categories``) -> its dotted key (``objaverse.…``)."""
    return f"objaverse.{key}" if key in _OBJAVERSE_KEYS else key


def _to_config(resolved: Resolved) -> RenderConfig:
    config = OmegaConf.to_object(resolved.config)
    for f in dataclasses.fields(RenderConfig):  # ranges: OmegaConf hands back lists
        if _is_tuple(f.type):
            value = getattr(config, f.name)
            size = str(f.type).count("float")
            if len(value) != size:
                what = "[low, high]" if size == 2 else f"{size} numbers"
                raise ConfigError(f"config key {f.name!r}: expected {what}, got {value}")
            setattr(config, f.name, tuple(value))
    return config.validate()


def resolve_config(
    path: str | Path | None = None,
    flags: dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[RenderConfig, Resolved]:
    """Defaults <- YAML ``path`` <- ``flags`` (flat names, None = not given) <- ``key=value``
    overrides; validated. Also returns where each value came from."""
    given = [
        (_dotted(k), list(v) if isinstance(v, tuple) else v)
        for k, v in (flags or {}).items()
        if v is not None
    ]
    layers = [
        (label(path) if path else "", read_yaml(path) if path else None),
        ("command-line flag", given),
        (COMMAND_LINE, overrides_layer(overrides)),
    ]
    resolved = compose(OmegaConf.structured(RenderConfig), layers, "default (data_prep/config.py)")
    return _to_config(resolved), resolved


def load_config(path: str | Path | None = None, **overrides) -> RenderConfig:
    """The config at ``path`` (or the defaults) with keyword overrides applied."""
    return resolve_config(path, overrides)[0]


def _argument(parser: argparse.ArgumentParser, f: dataclasses.Field, key: str) -> None:
    flag = "--" + f.name.replace("_", "-")
    annotation = str(f.type)
    help_text = _HELP.get(key, "") + f" (config key {key})"
    if annotation == "bool":
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    elif annotation.startswith("tuple"):
        count = annotation.count("float")
        names = ("LOW", "HIGH") if count == 2 else tuple("RGB"[:count])
        parser.add_argument(
            flag, type=float, nargs=count, default=None, metavar=names, help=help_text
        )
    elif annotation.startswith("list"):
        parser.add_argument(flag, nargs="+", default=None, help=help_text)
    else:
        kind = int if "int" in annotation else float if "float" in annotation else str
        parser.add_argument(flag, type=kind, default=None, help=help_text)


_HELP = comments(CONFIG_DOCS)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (``--num-quads``, ``--lvis-categories``...), ``--config``,
    ``--print-config`` and ``key.sub=value`` overrides (the syntax every job shares)."""
    parser.add_argument(
        "--config", default=None, help="YAML file under configs/ (flags override it)"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (and where each value came from), render nothing",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides (e.g. objaverse.licenses=[by])"
    )
    for f in dataclasses.fields(RenderConfig):
        if f.name != "objaverse":
            _argument(parser, f, f.name)
    group = parser.add_argument_group("objaverse source")
    for f in dataclasses.fields(ObjaverseOptions):
        _argument(group, f, f"objaverse.{f.name}")


def resolve_from_args(args: argparse.Namespace) -> tuple[RenderConfig, Resolved]:
    names = {f.name for f in dataclasses.fields(RenderConfig)} | _OBJAVERSE_KEYS
    flags = {k: v for k, v in vars(args).items() if k in names and k != "objaverse"}
    return resolve_config(args.config, flags, getattr(args, "overrides", None) or ())


def config_from_args(args: argparse.Namespace) -> RenderConfig:
    return resolve_from_args(args)[0]

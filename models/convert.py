"""Convert the published checkpoints into our model format, once and for all (and back).

    python -m models.convert --format mvdream --checkpoint sd-v2.1-base-4view.pt --out DIR
    python -m models.convert --format isotropic3d --checkpoint isotropic3d.ckpt --out DIR
    python -m models.convert --format mvdream --export DIR --out FILE.pt   # back to LDM keys

What a file is comes from its tensors, not its name: ``published_format`` (LDM keys; an image
tower makes it Isotropic3D) and ``preset_for_shapes`` (the preset with exactly these shapes).
MVDream gives the UNet (with its camera MLP) and the VAE; its text tower is deliberately ignored
and the image encoder is recorded as open_clip ViT-H-14 / laion2b_s32b_b79k. Isotropic3D also
gives the image encoder (vision tower); its text-tower leftovers are ignored, and the saved config
records its legacy camera encoding (``cameras.legacy_double_radians``). Every key of a checkpoint
is either mapped or in an explicit ignore list; anything else is an error. Files are read with
``weights_only=True`` and memory-mapped.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.bundle import MultiViewDiffusion, build_model, load_model, save_model
from models.checkpoint_io import CheckpointError, load_state_dict_file
from models.detect import preset_names
from models.image_encoder import ImageEncoder
from models.ldm_keys import (
    UNET_PREFIX,
    VAE_PREFIX,
    reshape_like,
    unet_export_name,
    unet_import_map,
    vae_export_name,
    vae_import_map,
)

FORMATS = ("mvdream", "isotropic3d")
VISUAL_PREFIX = "cond_stage_model.model.visual."
# LatentDiffusionInterface.register_schedule: recomputable from the schedule, not weights.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
# Isotropic3D deletes only the text transformer; these text-tower tensors remain in its file.
ISOTROPIC3D_TEXT_LEFTOVERS = tuple(
    f"cond_stage_model.model.{k}"
    for k in (
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "text_projection",
        "logit_scale",
    )
)


def ignore_reason(key: str, fmt: str) -> str | None:
    """Why ``key`` is deliberately not imported, or None if it must be mapped."""
    if key in SCHEDULE_BUFFERS:
        return "schedule_buffers"
    if fmt == "mvdream" and key.startswith("cond_stage_model.model."):
        return "text_encoder"  # MVDream's open_clip text tower: replaced by the image encoder
    if fmt == "isotropic3d" and key in ISOTROPIC3D_TEXT_LEFTOVERS:
        return "text_tower_leftovers"
    return None


@dataclass
class Imported:
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    image_encoder: dict[str, torch.Tensor] | None
    ignored: dict[str, list[str]] = field(default_factory=dict)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def import_checkpoint(
    state: dict[str, torch.Tensor], fmt: str, target: MultiViewDiffusion
) -> Imported:
    """Map an original state dict onto ``target``'s modules (shapes checked, no copies)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    ignored: dict[str, list[str]] = {}
    for key in state:
        reason = ignore_reason(key, fmt)
        if reason:
            ignored.setdefault(reason, []).append(key)
    wants_visual = fmt == "isotropic3d"
    known = (UNET_PREFIX, VAE_PREFIX, *((VISUAL_PREFIX,) if wants_visual else ()))
    unexpected = [k for k in state if not k.startswith(known) and not ignore_reason(k, fmt)]
    if unexpected:
        raise KeyError(f"{len(unexpected)} keys neither mapped nor ignored: {unexpected[:8]}")

    def mapped(prefix, mapper, module):
        part = _strip(state, prefix)
        shapes = {k: tuple(v.shape) for k, v in part.items()}
        key_map = mapper(shapes, module.config) if mapper else {k: k for k in part}
        model_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        missing = sorted(set(model_shapes) - set(key_map.values()))
        if missing:
            raise KeyError(f"{prefix}: model keys missing from the checkpoint: {missing[:8]}")
        extra = sorted(k for k, v in key_map.items() if v not in model_shapes)
        if extra:
            raise KeyError(f"{prefix}: checkpoint keys with no model counterpart: {extra[:8]}")
        return {d: reshape_like(part[k], model_shapes[d], prefix + k) for k, d in key_map.items()}

    visual = None
    if wants_visual:
        if target.image_encoder is None:
            raise ValueError("isotropic3d import needs a target with an image encoder")
        visual = mapped(VISUAL_PREFIX, None, target.image_encoder.visual)
    return Imported(
        unet=mapped(UNET_PREFIX, unet_import_map, target.unet),
        vae=mapped(VAE_PREFIX, vae_import_map, target.vae.model),
        image_encoder=visual,
        ignored=ignored,
    )


_VAE_CONV_ATTN = re.compile(r".*\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def export_checkpoint(model: MultiViewDiffusion, fmt: str) -> dict[str, torch.Tensor]:
    """Our weights in the original key layout (ignored groups are not recreated)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    out = {
        UNET_PREFIX + unet_export_name(k, model.unet.config): v
        for k, v in model.unet.state_dict().items()
    }
    for key, value in model.vae.model.state_dict().items():
        name = vae_export_name(key, model.vae.model.config)
        if _VAE_CONV_ATTN.fullmatch(name) and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores these as 1x1 convs
        out[VAE_PREFIX + name] = value
    if fmt == "isotropic3d":
        if model.image_encoder is None:
            raise ValueError("isotropic3d export needs the image encoder")
        for key, value in model.image_encoder.visual.state_dict().items():
            out[VISUAL_PREFIX + key] = value
    return out


def published_format(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """``isotropic3d``, ``mvdream`` or None for a state dict's ``{key: shape}``."""
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        return None
    if not any(k.startswith(VAE_PREFIX) for k in shapes):
        return None
    return "isotropic3d" if any(k.startswith(VISUAL_PREFIX) for k in shapes) else "mvdream"


@functools.cache
def _expected_shapes(preset: str, fmt: str) -> dict[str, tuple[int, ...]]:
    model = build_model(preset, device="meta", with_image_encoder=fmt == "isotropic3d")
    return {k: tuple(v.shape) for k, v in export_checkpoint(model, fmt).items()}


def preset_for_shapes(shapes: dict[str, tuple[int, ...]], fmt: str, where: str) -> str:
    """The preset whose UNet, VAE (and, for Isotropic3D, image tower) have exactly the file's
    tensor shapes; a :class:`CheckpointError` naming the closest one's first difference."""
    prefixes = (UNET_PREFIX, VAE_PREFIX, *((VISUAL_PREFIX,) if fmt == "isotropic3d" else ()))
    found = {k: v for k, v in shapes.items() if k.startswith(prefixes)}
    misses = {}
    for name in preset_names():
        expected = _expected_shapes(name, fmt)
        differ = sorted(
            k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k)
        )
        if not differ:
            return name
        misses[name] = differ
    closest = min(misses, key=lambda n: len(misses[n]))
    key = misses[closest][0]
    expected = _expected_shapes(closest, fmt).get(key)
    raise CheckpointError(
        f"{where}: the {fmt} weights fit no model preset ({', '.join(misses)}); closest "
        f"{closest}, {len(misses[closest])} tensors differ, e.g. {key}: file "
        f"{shapes.get(key, 'absent')}, preset {expected or 'absent'}. Add a "
        "configs/model_<name>.yaml with this architecture"
    )


def convert(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    preset: str | None = None,
    legacy_double_radians: bool | None = None,
) -> Path:
    """Read ``checkpoint``, write our format to ``out`` plus ``conversion_report.json``.
    ``preset`` None: the preset whose shapes the weights have (models.detect)."""
    state = load_state_dict_file(checkpoint)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = published_format(shapes)
    if found != fmt:
        what = f"an {found} checkpoint" if found else "no MVDream/Isotropic3D checkpoint"
        raise CheckpointError(
            f"{checkpoint} holds {what} (read from its tensors), not {fmt}"
            + (f": pass --format {found} (FORMAT={found})" if found else "")
        )
    preset = preset or preset_for_shapes(shapes, fmt, str(checkpoint))
    target = build_model(preset, device="meta", with_image_encoder=fmt == "isotropic3d")
    imported = import_checkpoint(state, fmt, target)
    target.unet.load_state_dict(imported.unet, strict=True, assign=True)
    target.vae.model.load_state_dict(imported.vae, strict=True, assign=True)
    if imported.image_encoder is not None:
        target.image_encoder.visual.load_state_dict(
            imported.image_encoder, strict=True, assign=True
        )
        target.preset["image_encoder"]["pretrained"] = None  # weights travel with the model
    elif not target.preset["image_encoder"].get("pretrained"):
        # An MVDream file has no image encoder; a preset that names no pretrained one (tiny)
        # gets a seeded random tower saved with the model, as a preset init does.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            target.image_encoder = ImageEncoder(target.preset["image_encoder"])
    if legacy_double_radians is None:
        legacy_double_radians = fmt == "isotropic3d"
    target.preset["cameras"]["legacy_double_radians"] = bool(legacy_double_radians)
    source = {
        "init": "converted",
        "format": fmt,
        "checkpoint": Path(checkpoint).name,
        "preset": preset,
    }
    folder = save_model(target, out, source=source)
    report = {
        "format": fmt,
        "preset": preset,
        "checkpoint": str(checkpoint),
        "keys": len(state),
        "mapped": {
            "unet": len(imported.unet),
            "vae": len(imported.vae),
            "image_encoder": len(imported.image_encoder or {}),
        },
        "ignored": imported.ignored,
        "legacy_double_radians": bool(legacy_double_radians),
    }
    (folder / "conversion_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return folder


def write_checkpoint(state: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)  # a bare state dict, like the published files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="published checkpoint (.pt/.ckpt/.safetensors)")
    source.add_argument("--export", metavar="MODEL_DIR", help="export our model to the LDM layout")
    parser.add_argument("--out", required=True, help="model folder (import) or file (export)")
    parser.add_argument(
        "--preset", default=None, help="architecture preset (default: the one the shapes fit)"
    )
    legacy = parser.add_mutually_exclusive_group()
    legacy.add_argument("--legacy-double-radians", dest="legacy", action="store_true", default=None)
    legacy.add_argument("--no-legacy-double-radians", dest="legacy", action="store_false")
    args = parser.parse_args(argv)
    if args.export:
        model = load_model(args.export, load_image_encoder=args.format == "isotropic3d")
        write_checkpoint(export_checkpoint(model, args.format), args.out)
        print(f"wrote {args.out}")
        return
    try:
        folder = convert(args.checkpoint, args.format, args.out, args.preset, args.legacy)
    except (CheckpointError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    report = json.loads((folder / "conversion_report.json").read_text())
    ignored = {k: len(v) for k, v in report["ignored"].items()}
    print(f"wrote {folder}: mapped {report['mapped']}, ignored {ignored}")


if __name__ == "__main__":
    main()

"""The model bundle (UNet + camera MLP, VAE, image encoder, schedules) and our on-disk format.

Format (version 2): a folder with ``model.json`` (format tag, the preset sections that rebuild
every module, the camera flag, provenance) and one folder per component in its ecosystem's format
(models/layout.py): ``unet/`` and ``vae/`` for diffusers' ``from_pretrained``, ``scheduler/``, and
``image_encoder/`` for open_clip (weights there when they are ours; otherwise ``model.json`` names
the open_clip model and pretrained tag and :func:`load_model` fetches them, local file or hub).
Version 1 folders (flat ``unet/vae/image_encoder.safetensors``) still load.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import DDIMScheduler
from safetensors.torch import load_file
from torch import nn

from models import layout
from models.cameras import camera_embedding, camera_to_world
from models.image_encoder import ImageEncoder, load_pretrained_weights
from models.keys import check_keys
from models.schedule import ddim_scheduler, noise_scheduler
from models.shards.images import reference_on_white
from models.unet import MultiViewUNet, build_unet
from models.vae import LatentVAE, latent_channels

FORMAT = "isotropic3d-multiview"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESET_SECTIONS = ("unet", "vae", "image_encoder", "schedule", "sampling", "cameras")
IMAGE_ENCODER_FILE = "image_encoder.safetensors"  # version 1


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """A preset by name (``configs/model_<name>.yaml``) or YAML path, checked for its sections."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"model_{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("model_") for p in CONFIG_DIR.glob("model_*.yaml"))
        raise FileNotFoundError(f"model preset {name_or_path!r} not found (known: {known})")
    return check_preset(yaml.safe_load(path.read_text()), str(path))


# Keys of the sections not checked by their module builders (unet, vae, schedule are).
SECTION_KEYS = {
    "image_encoder": ("model_name", "pretrained", "embed_dim", "vision"),
    "sampling": ("image_size", "num_views", "steps", "guidance_scale"),
    "cameras": ("legacy_double_radians",),
}


def check_preset(preset: dict[str, Any], where: str = "preset") -> dict[str, Any]:
    check_keys(preset, PRESET_SECTIONS, where, noun="sections")
    for section, keys in SECTION_KEYS.items():
        check_keys(preset[section], keys, where, prefix=f"{section}.")
    encoder, unet = preset["image_encoder"], preset["unet"]
    if not encoder.get("model_name") and encoder.get("embed_dim") != unet["cross_attention_dim"]:
        raise ValueError(f"{where}: image_encoder.embed_dim must equal unet.cross_attention_dim")
    return copy.deepcopy(preset)


class MultiViewDiffusion(nn.Module):
    """``unet``, ``vae``, ``image_encoder`` (may be None), ``noise_scheduler``, ``ddim_scheduler()``."""

    def __init__(
        self,
        preset: dict[str, Any],
        unet: MultiViewUNet,
        vae: LatentVAE,
        image_encoder: ImageEncoder | None,
        source: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.preset = check_preset(preset)
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.noise_scheduler = noise_scheduler(self.preset["schedule"])
        self.source = dict(source or {})
        vae.requires_grad_(False)

    @property
    def legacy_double_radians(self) -> bool:
        return bool(self.preset["cameras"].get("legacy_double_radians", False))

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_downsample(self) -> int:
        return self.vae.downsample

    def ddim_scheduler(self) -> DDIMScheduler:
        return ddim_scheduler(self.preset["schedule"])

    def encode_reference(self, images: torch.Tensor) -> torch.Tensor:
        """The condition ``[B,1,D]`` of reference images ``[B,3|4,H,W]`` in [0,1], made as
        training made it: at the ``reference_resolution`` its run recorded (``model.json``
        ``source``, training.data_record), resized and composited on white as the loader does;
        a model without the record gets the image encoder's own preprocessing."""
        resolution = self.source.get("reference_resolution")
        if resolution:
            images = reference_on_white(images, int(resolution))
        return self.image_encoder.encode(images)

    def cameras(
        self,
        elevation_deg: torch.Tensor | float,
        azimuth_deg: torch.Tensor | float,
        distance: torch.Tensor | float = 1.0,
    ) -> torch.Tensor:
        """Camera inputs [..., 16] with this checkpoint's camera convention (legacy flag)."""
        c2w = camera_to_world(elevation_deg, azimuth_deg, distance, self.legacy_double_radians)
        return camera_embedding(c2w)


def _build(preset: dict[str, Any], image_encoder: bool = True) -> dict[str, nn.Module | None]:
    return {
        "unet": build_unet(preset["unet"], latent_channels(preset["vae"])),
        "vae": LatentVAE.from_section(preset["vae"]),
        "image_encoder": ImageEncoder(preset["image_encoder"]) if image_encoder else None,
    }


def build_model(
    name_or_path: str | Path = "tiny",
    seed: int = 0,
    device: str | torch.device = "cpu",
    with_image_encoder: bool = True,
) -> MultiViewDiffusion:
    """Random-init fp32 model of a preset (``device="meta"`` builds shapes only)."""
    preset = load_preset(name_or_path)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        parts = _build(preset, with_image_encoder)
    return MultiViewDiffusion(preset, **parts, source={"init": "random", "seed": seed})


def save_model(
    model: MultiViewDiffusion,
    folder: str | Path,
    unet_state_dict: dict[str, torch.Tensor] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write our format; ``unet_state_dict`` (e.g. EMA weights) replaces the UNet's own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet_state = unet_state_dict if unet_state_dict is not None else model.unet.state_dict()
    expected = set(model.unet.state_dict())
    if set(unet_state) != expected:
        bad = sorted(set(unet_state) ^ expected)[:5]
        raise ValueError(f"unet_state_dict keys do not match the UNet (e.g. {bad})")
    layout.write_diffusers(model.unet, unet_state, folder / "unet")
    layout.write_diffusers(model.vae.model, model.vae.model.state_dict(), folder / "vae")
    model.noise_scheduler.save_config(folder / "scheduler")
    encoder = model.image_encoder
    has_encoder_weights = encoder is not None and not encoder.section.get("pretrained")
    if encoder is not None:
        layout.write_open_clip(encoder, folder / "image_encoder", has_encoder_weights)
    for stale in ("unet.safetensors", "vae.safetensors", IMAGE_ENCODER_FILE):  # version 1
        (folder / stale).unlink(missing_ok=True)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "preset": model.preset,
        "image_encoder_weights": "image_encoder" if has_encoder_weights else None,
        "source": {**model.source, **(source or {})},
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_model_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder (no model.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} v{meta.get('version')} unsupported"
        )
    return meta


def load_model(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    load_image_encoder: bool = True,
    image_encoder_checkpoint: str | Path | None = None,
) -> MultiViewDiffusion:
    """Load our format. Without saved encoder weights, the open_clip weights come from
    ``image_encoder_checkpoint``, $ISOTROPIC3D_OPENCLIP_CHECKPOINT or the hub (clear error offline)."""
    folder = Path(folder)
    meta = read_model_meta(folder)
    preset = check_preset(meta["preset"], str(folder / "model.json"))
    encoder_weights = meta.get("image_encoder_weights")
    model = load_components(
        folder,
        preset,
        folder / encoder_weights if encoder_weights else None,
        source=meta.get("source"),
        load_image_encoder=load_image_encoder,
        image_encoder_checkpoint=image_encoder_checkpoint,
        v1=meta["version"] == 1,
    )
    return model.to(device=device, dtype=dtype)


def load_components(
    folder: Path,
    preset: dict[str, Any],
    encoder_weights: Path | None,
    source: dict[str, Any] | None = None,
    load_image_encoder: bool = True,
    image_encoder_checkpoint: str | Path | None = None,
    v1: bool = False,
) -> MultiViewDiffusion:
    """The component folders of ``folder`` (``unet/``, ``vae/``, ``image_encoder/``: version 2;
    flat safetensors: version 1) into the modules ``preset`` describes; the encoder from
    ``encoder_weights`` or, without them, the preset's open_clip tag."""
    with torch.device("meta"):  # no random init of weights that are overwritten anyway
        parts = _build(preset, load_image_encoder)
    _assign(parts["unet"], _weights(folder, "unet", v1), "unet")
    _assign(parts["vae"].model, _weights(folder, "vae", v1), "vae")
    encoder = parts["image_encoder"]
    if encoder is not None:
        if encoder_weights is not None:
            state = (
                load_file(str(encoder_weights))
                if v1
                else layout.read_open_clip_visual(encoder_weights)
            )
            _assign(encoder.visual, state, "image_encoder")
        else:
            section = preset["image_encoder"]
            pretrained = str(image_encoder_checkpoint or section["pretrained"])
            load_pretrained_weights(encoder, section["model_name"], pretrained)
        encoder.requires_grad_(False)
    return MultiViewDiffusion(preset, **parts, source=source)


def empty_model(folder: str | Path, load_image_encoder: bool = True) -> MultiViewDiffusion:
    """The model of a folder with uninitialised fp32 weights: its ``model.json`` is the only file
    read. For ranks that receive the weights from the one rank that read them (a broadcast)."""
    folder = Path(folder)
    meta = read_model_meta(folder)
    preset = check_preset(meta["preset"], str(folder / "model.json"))
    with torch.device("meta"):
        parts = _build(preset, load_image_encoder)
    for part in parts.values():
        if part is not None:
            part.to_empty(device="cpu")
    if parts["image_encoder"] is not None:
        parts["image_encoder"].requires_grad_(False)
    return MultiViewDiffusion(preset, **parts, source=meta.get("source"))


def _weights(folder: Path, name: str, v1: bool) -> dict[str, torch.Tensor]:
    return (
        load_file(str(folder / f"{name}.safetensors")) if v1 else layout.read_weights(folder / name)
    )


def _assign(module: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{name}: weights do not match the config (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"{name}: tensors left uninitialised: {leftover[:5]}")

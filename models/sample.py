"""Multi-view sampler: image -> CLIP embedding -> V views at given cameras (DDIM, CFG, seeded).

``python -m models.sample --image IMG --model DIR --out GRID.png`` writes a grid (reference image
first, then the views); ``--views-dir`` also writes each view. A model folder that says it was
trained in stage 2 (``model.json`` ``source.stage == 2``) samples with its clean reference latent
as an extra frame, as it was trained; ``--no-reference-frame`` turns that off and
``--reference-frame`` forces it on for any model. With the legacy Isotropic3D camera flag the
cameras are the released sampler's own (``models.cameras.legacy_sampling_cameras``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.bundle import MultiViewDiffusion, build_model, load_model
from models.cameras import legacy_sampling_cameras, orthogonal_azimuths
from models.checkpoint_io import CheckpointError
from models.detect import DIFFUSERS_FOLDER, MODEL_FOLDER, folder_kind, load_diffusers_folder
from models.ema_frames import EMAFramePolicy, assemble_ema_frames
from models.hub import HUB_PREFIX, resolve_hub
from models.shards.images import WHITE, composite

RANDOM_PREFIX = "random:"  # --model random:tiny: a random-init model, asked for explicitly


@dataclass
class SampleResult:
    images: torch.Tensor  # [V,3,H,W] in [0,1]
    grid: Image.Image  # reference image, then the views, in one row
    cameras: torch.Tensor  # [V,16] camera inputs used
    used_reference_frame: bool = False  # the clean reference latent joined the views


def default_reference_frame(model: MultiViewDiffusion) -> bool:
    """Stage-2 models were trained with the clean reference frame: they sample with it."""
    return int((model.source or {}).get("stage") or 0) == 2


def load_image(image: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
    """[3|4,H,W] float tensor in [0,1] from a path, a PIL image or a tensor (alpha kept)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (3, 4):
            raise ValueError(f"image tensor must be [3|4,H,W], got {tuple(image.shape)}")
        return image.float()
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def on_white(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0,1] with any (straight) alpha composited on white, by the shards' compositing."""
    if image.shape[-3] == 4:
        alpha = image[..., 3:, :, :]
        return composite(torch.cat([image[..., :3, :, :] * alpha, alpha], dim=-3), WHITE)
    return image


def make_grid(images: list[torch.Tensor], size: int) -> Image.Image:
    """One row of square tiles from [3,H,W] tensors in [0,1]."""
    tiles = [F.interpolate(img[None].float().cpu(), size=(size, size), mode="bilinear",
                           antialias=True)[0] for img in images]  # fmt: skip
    row = torch.cat(tiles, dim=-1).clamp(0, 1)
    return Image.fromarray((row.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@torch.no_grad()
def sample_views(
    model: MultiViewDiffusion,
    image: str | Path | Image.Image | torch.Tensor,
    elevation_deg: float = 0.0,
    azimuths_deg: list[float] | torch.Tensor | None = None,
    image_size: int | None = None,
    seed: int = 0,
    guidance_scale: float | None = None,
    steps: int | None = None,
    use_reference_frame: bool | None = None,
    policy: EMAFramePolicy = EMAFramePolicy(),
    progress: bool = True,
) -> SampleResult:
    """Sample views of the object in ``image``; defaults come from the preset's ``sampling``.
    ``use_reference_frame=None`` follows the model folder (on for stage-2 models)."""
    if model.image_encoder is None:
        raise ValueError("sample_views needs a model loaded with its image encoder")
    settings = model.preset["sampling"]
    size = int(image_size or settings["image_size"])
    steps = int(steps or settings["steps"])
    scale = float(settings["guidance_scale"] if guidance_scale is None else guidance_scale)
    if azimuths_deg is None:
        azimuths_deg = orthogonal_azimuths(0.0, int(settings["num_views"]))
    azimuths = torch.as_tensor(azimuths_deg, dtype=torch.float32).reshape(-1)
    views = azimuths.numel()
    if size % model.latent_downsample:
        raise ValueError(f"image_size {size} is not a multiple of {model.latent_downsample}")
    param = next(model.unet.parameters())
    device, dtype = param.device, param.dtype

    if use_reference_frame is None:
        use_reference_frame = default_reference_frame(model)
    reference = load_image(image).to(device)
    cond = model.encode_reference(reference[None]).to(dtype)  # [1,1,D], as in training
    context = torch.cat([cond, model.image_encoder.unconditional(1).to(dtype)])  # cond, uncond
    if model.legacy_double_radians:  # the released sampler's cameras, quirks included
        cameras = legacy_sampling_cameras(float(elevation_deg), azimuths)
    else:
        cameras = model.cameras(torch.full_like(azimuths, float(elevation_deg)), azimuths)
    cameras = cameras.to(device, dtype)
    reference_latent = reference_camera = None
    if use_reference_frame:
        pixels = F.interpolate(on_white(reference)[None], size=(size, size), mode="bicubic",
                               antialias=True).clamp(0, 1)  # fmt: skip
        reference_latent = model.vae.encode(pixels * 2 - 1, sample=False).to(dtype)
        # The reference image defines the front: azimuth 0 at the sampling elevation.
        reference_camera = model.cameras(float(elevation_deg), 0.0).to(device, dtype).repeat(2, 1)

    scheduler = model.ddim_scheduler()
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    latent_side = size // model.latent_downsample
    # The DDIM update runs in fp32 whatever the UNet's dtype.
    shape = (views, model.latent_channels, latent_side, latent_side)
    latents = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma

    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        x = scheduler.scale_model_input(latents, t).to(dtype).repeat(2, 1, 1, 1)  # cond, uncond
        ts = t.reshape(1).expand(2 * views).to(device)
        cams = cameras.repeat(2, 1)
        ctx = context.repeat_interleave(views, dim=0)
        frames_per_object = views
        if reference_latent is not None:
            frames = assemble_ema_frames(
                x, ts, cams, reference_latent.repeat(2, 1, 1, 1), context, views, policy,
                reference_camera=reference_camera,
            )  # fmt: skip
            x, ts, cams, ctx = frames.latents, frames.timesteps, frames.cameras, frames.context
            frames_per_object = frames.num_views
        eps = model.unet(x, ts, ctx, cams, num_views=frames_per_object)
        eps = eps.reshape(2, frames_per_object, *eps.shape[1:])[:, :views]  # drop the reference
        eps = eps[1].float() + scale * (eps[0].float() - eps[1].float())
        latents = scheduler.step(eps, t, latents).prev_sample

    images = ((model.vae.decode(latents.to(dtype)).float() + 1) / 2).clamp(0, 1).cpu()
    grid = make_grid([on_white(reference).cpu(), *images], size)
    return SampleResult(images, grid, cameras.float().cpu(), bool(use_reference_frame))


NO_MODEL_HELP = (
    "pass MODEL=<model folder> (written by make export or make convert-model; a diffusers folder "
    "or hf:org/name also work), or MODEL=random:tiny for a pipeline check on a random model"
)


def check_image(path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IMAGE (--image) {path} does not exist: pass a reference image")
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for a file that is no image
        raise ValueError(f"IMAGE (--image) {path} is not an image PIL can read ({error})") from None


def load_model_arg(spec: str, image_encoder: str | None = None) -> MultiViewDiffusion:
    """``--model``: our model folder, a diffusers folder, ``hf:org/name`` or ``random:<preset>``."""
    if spec.startswith(RANDOM_PREFIX):
        return build_model(spec.removeprefix(RANDOM_PREFIX))
    path = resolve_hub(spec) if spec.startswith(HUB_PREFIX) else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"MODEL (--model) {spec} does not exist: {NO_MODEL_HELP}")
    kind = folder_kind(path) if path.is_dir() else None
    if kind == MODEL_FOLDER:
        return load_model(path, image_encoder_checkpoint=image_encoder)
    if kind == DIFFUSERS_FOLDER:
        return load_diffusers_folder(path)
    what = (
        "a file (a published .pt/.ckpt: make convert-model; a training checkpoint: make export)"
        if path.is_file()
        else "a folder with no model.json and no unet/ + vae/"
    )
    raise CheckpointError(f"MODEL (--model) {spec} is {what}, not a model: {NO_MODEL_HELP}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="reference image (RGBA or RGB)")
    parser.add_argument(
        "--model",
        required=True,
        help="model folder (ours or diffusers), hf:org/name, or random:<preset> (a pipeline check)",
    )
    parser.add_argument("--out", required=True, help="output grid PNG")
    parser.add_argument("--views-dir", help="also write each view as view_<i>.png here")
    parser.add_argument("--elevation", type=float, default=0.0, help="elevation in degrees")
    parser.add_argument("--azimuths", help="comma-separated azimuths in degrees (default: 0,90,..)")
    parser.add_argument("--image-size", type=int, help="output side (default: the preset's)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the preset's)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-frame",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the clean reference latent as an extra frame (default: on for stage-2 models)",
    )
    parser.add_argument("--reference-timestep", default="same", choices=["same", "zero"])
    parser.add_argument("--reference-camera", default="zeros", choices=["zeros", "true"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-encoder", help="local open_clip checkpoint if the model has none")
    args = parser.parse_args(argv)

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    try:  # bad inputs are one line each, checked before anything is written
        check_image(args.image)
        model = load_model_arg(args.model, args.image_encoder).to(args.device, dtype)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    azimuths = [float(a) for a in args.azimuths.split(",")] if args.azimuths else None
    result = sample_views(
        model,
        args.image,
        elevation_deg=args.elevation,
        azimuths_deg=azimuths,
        image_size=args.image_size,
        seed=args.seed,
        guidance_scale=args.guidance_scale,
        steps=args.steps,
        use_reference_frame=args.reference_frame,
        policy=EMAFramePolicy(args.reference_timestep, args.reference_camera),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.grid.save(out)
    if args.views_dir:
        views_dir = Path(args.views_dir)
        views_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(result.images):
            make_grid([img], img.shape[-1]).save(views_dir / f"view_{i}.png")
    frame = "with" if result.used_reference_frame else "without"
    print(f"wrote {out} ({len(result.images)} views, {frame} the reference frame)")


if __name__ == "__main__":
    main()

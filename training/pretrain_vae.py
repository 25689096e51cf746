"""Pretrain a preset's VAE on the project's own renders (``make pretrain-vae``).

``python -m training.pretrain_vae --data SHARDS --heldout SHARDS --out outputs/models/tiny-vae``

The ``tiny`` preset's VAE starts from random weights, whose decoder turns any latent into coloured
noise, so nothing the tiny diffusion model generates could be looked at. This trains it (a plain
loop: one process, small enough for a laptop CPU) as an autoencoder on every view of the rendered
shards, composited on white or on a random colour, with random flips and shifts, under the usual
KL-regularised reconstruction loss (MSE + a small KL weight, as the LDM VAE). Then it calibrates
the preset's ``vae.scaling_factor`` to unit-variance latents on the training views (how SD chose
0.18215), and saves a whole model folder in our format (``models.bundle.save_model``: the trained
VAE and image encoder, with the preset's random UNet) that ``load_model`` reads and that training
takes as ``model.init``. Reconstruction PSNR on the held-out views (objects the VAE never saw) is
printed and saved in ``vae_metrics.json``.

A random image-encoder tower (the tiny preset's) is then trained too, contrastively, so that its
embedding tells objects apart as CLIP's does (training.pretrain_image_encoder;
``--image-encoder-steps 0`` leaves it random); a pretrained open_clip encoder is never touched.

Rerunning resumes from ``vae_checkpoint.pt`` (weights-only) or, when the folder is complete,
does nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import webdataset as wds

from models.bundle import MultiViewDiffusion, build_model, load_model, save_model
from models.shards.format import CorruptSample, read_meta
from models.shards.images import BACKGROUNDS, composite, decode_rgba
from models.shards.urls import expand_shard_urls
from training.pretrain_image_encoder import pretrain_image_encoder

CHECKPOINT = "vae_checkpoint.pt"
METRICS = "vae_metrics.json"


def load_views(sources: list[str], resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Every training view of every object in the shards (held-out quadruples excluded):
    premultiplied RGBA ``[N,4,H,W]`` and the object key of each view. Corrupt samples are
    skipped (and named)."""
    stream = wds.WebDataset(expand_shard_urls(sources), shardshuffle=False, empty_check=False)
    views, keys = [], []
    for sample in stream:
        try:
            meta = read_meta(sample)
            rgba = [decode_rgba(sample, i, resolution) for i in meta.training_views]
        except CorruptSample as error:
            print(f"skipping a corrupt sample: {error}")
            continue
        views.extend(rgba)
        keys.extend([sample["__key__"]] * len(rgba))
    if not views:
        raise ValueError(f"no usable views in {sources}")
    return torch.stack(views), keys


def augment(rgba: torch.Tensor, generator: torch.Generator, white: float = 0.75) -> torch.Tensor:
    """Premultiplied RGBA -> RGB in [-1,1] on white (probability ``white``) or a random colour,
    randomly mirrored and shifted by up to 1/8 of the side (the renders' framing varies)."""
    n, _, size, _ = rgba.shape
    colour = torch.rand(n, 3, 1, 1, generator=generator)
    colour = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < white, 1.0, colour)
    rgb = (rgba[:, :3] + (1 - rgba[:, 3:]) * colour).clamp(0, 1)
    flip = torch.rand(n, generator=generator) < 0.5
    rgb = torch.where(flip.view(n, 1, 1, 1), rgb.flip(-1), rgb)
    shift = size // 8
    padded = F.pad(rgb, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).tolist()
    rgb = torch.stack(
        [padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(dy, dx))]
    )
    return rgb * 2 - 1


def quiet_posterior(vae) -> None:
    """Set the posterior's log-variance to about -8 whatever the input (std 0.02): a random init
    leaves it near 0, so the sampled latents are noise of std 1 that the decoder first has to
    learn to ignore; LDM VAEs end with small variances anyway, and this gets there at step 0."""
    half = vae.quant_conv.out_channels // 2
    vae.quant_conv.weight[half:].zero_()
    vae.quant_conv.bias[half:].fill_(-8.0)


def vae_loss(vae, images: torch.Tensor, kl_weight: float, generator: torch.Generator):
    """KL-regularised reconstruction loss of diffusers' ``AutoencoderKL`` (unscaled latents)."""
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    mse = F.mse_loss(recon, images)
    kl = posterior.kl().mean() / images[0].numel()
    return mse + kl_weight * kl, mse


@torch.no_grad()
def reconstruction_psnr(model: MultiViewDiffusion, rgba: torch.Tensor, batch: int = 64) -> float:
    """Mean per-image PSNR (dB) of decode(encode(x)) on white, images in [0,1]."""
    values = []
    for chunk in rgba.split(batch):
        images = composite(chunk, BACKGROUNDS["white"])
        recon = (model.vae.decode(model.vae.encode(images * 2 - 1, sample=False)) + 1) / 2
        mse = (recon.clamp(0, 1) - images).pow(2).flatten(1).mean(1)
        values.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    return float(torch.cat(values).mean())


@torch.no_grad()
def calibrate_scale(model: MultiViewDiffusion, rgba: torch.Tensor) -> float:
    """Scaling factor giving unit-variance latents (posterior means on white), set in place."""
    model.vae.scaling_factor = 1.0
    images = composite(rgba, BACKGROUNDS["white"]) * 2 - 1
    latents = torch.cat([model.vae.encode(chunk, sample=False) for chunk in images.split(64)])
    scale = float(1 / latents.std())
    model.vae.scaling_factor = scale
    model.preset["vae"]["scaling_factor"] = scale
    return scale


def pretrain_vae(
    data: list[str],
    out: str | Path,
    heldout: list[str] | None = None,
    preset: str = "tiny",
    resolution: int = 32,
    steps: int = 1500,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-3,
    seed: int = 0,
    checkpoint_every: int = 100,
    progress: bool = True,
    image_encoder_steps: int = 1000,
) -> dict:
    """Train, calibrate and save; returns the metrics (also in ``out/vae_metrics.json``)."""
    out = Path(out)
    if (out / METRICS).is_file() and (out / "model.json").is_file():
        metrics = json.loads((out / METRICS).read_text())
        print(f"{out}: VAE already pretrained ({metrics['steps']} steps), nothing to do")
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    train_views, keys = load_views(data, resolution)
    test_views = load_views(heldout, resolution)[0] if heldout else None
    model = build_model(preset, seed=seed)
    vae = model.vae.model.train().requires_grad_(True)
    with torch.no_grad():  # start with a near-deterministic posterior (see quiet_posterior)
        quiet_posterior(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * s / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    step = 0
    if (out / CHECKPOINT).is_file():
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        step = int(state["step"])
        print(f"resuming VAE pretraining at step {step}/{steps}")
    start, last = time.perf_counter(), time.perf_counter()
    while step < steps:
        index = torch.randint(0, len(train_views), (batch_size,), generator=generator)
        loss, mse = vae_loss(vae, augment(train_views[index], generator), kl_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        if progress and (step % 50 == 0 or step == steps or time.perf_counter() - last > 30):
            last = time.perf_counter()
            value = float(mse.detach())
            psnr = -10 * math.log10(max(value / 4, 1e-10))  # images in [-1,1]: range 2
            print(f"vae step {step}/{steps}  mse {value:.4f}  ~{psnr:.1f} dB", flush=True)
        if step % checkpoint_every == 0 and step < steps:
            state = {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "generator": generator.get_state(),
                     "step": step}  # fmt: skip
            torch.save(state, out / f"{CHECKPOINT}.tmp")
            (out / f"{CHECKPOINT}.tmp").replace(out / CHECKPOINT)
    vae.eval().requires_grad_(False)
    scale = calibrate_scale(model, train_views)
    encoder = model.image_encoder
    encoder_metrics = None
    if image_encoder_steps and encoder is not None and not encoder.section.get("pretrained"):
        encoder_metrics = pretrain_image_encoder(
            encoder, train_views, keys, augment, image_encoder_steps, seed=seed, progress=progress
        )
    metrics = {
        "preset": preset,
        "steps": steps,
        "resolution": resolution,
        "train_views": len(train_views),
        "train_objects": len(set(keys)),
        "scaling_factor": scale,
        "train_psnr": reconstruction_psnr(model, train_views),
        "heldout_views": 0 if test_views is None else len(test_views),
        "heldout_psnr": None if test_views is None else reconstruction_psnr(model, test_views),
        "image_encoder": encoder_metrics,
        "seconds": round(time.perf_counter() - start, 1),
    }
    source = {"vae": f"pretrained on {data} ({steps} steps)"}
    if encoder_metrics:
        source["image_encoder"] = f"contrastive on {data} ({image_encoder_steps} steps)"
    save_model(model, out, source=source)
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")  # written last: done
    (out / CHECKPOINT).unlink(missing_ok=True)
    load_model(out)  # the folder must load as a model
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True, help="training shards (folders, globs)")
    parser.add_argument("--heldout", nargs="*", help="shards of objects kept out, for the PSNR")
    parser.add_argument("--out", default="outputs/models/tiny-vae", help="model folder to write")
    parser.add_argument("--preset", default="tiny", help="model preset whose VAE is trained")
    parser.add_argument("--resolution", type=int, default=32, help="image side (px)")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--kl-weight", type=float, default=1e-3, help="KL term weight (per pixel)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-encoder-steps", type=int, default=1000,
        help="contrastive steps of a random (tiny) image encoder (0: leave it random)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for flag, sources in (("DATA (--data)", args.data), ("--heldout", args.heldout)):
        try:  # a missing or empty shard folder: one line before any model is built
            if sources:
                expand_shard_urls(sources)
        except FileNotFoundError as error:
            raise SystemExit(f"error: {flag}: {error}") from None
    metrics = pretrain_vae(
        args.data, args.out, args.heldout, args.preset, args.resolution, args.steps,
        args.batch_size, args.lr, args.kl_weight, args.seed,
        image_encoder_steps=args.image_encoder_steps,
    )  # fmt: skip
    held = metrics["heldout_psnr"]
    print(
        f"VAE reconstruction PSNR: {metrics['train_psnr']:.2f} dB on the {metrics['train_views']} "
        f"training views"
        + (f", {held:.2f} dB on the {metrics['heldout_views']} held-out views" if held else "")
        + f"; scaling_factor {metrics['scaling_factor']:.3f}; model folder {args.out}"
    )
    encoder = metrics.get("image_encoder")
    if encoder:
        before, after = encoder["before"], encoder["after"]
        print(
            "image encoder: cosine between objects' views "
            f"{before['cosine_between_objects']:.3f} -> {after['cosine_between_objects']:.3f}, "
            f"within an object {before['cosine_within_object']:.3f} -> "
            f"{after['cosine_within_object']:.3f}, nearest-view object accuracy "
            f"{before['nearest_object_accuracy']:.2f} -> {after['nearest_object_accuracy']:.2f}"
        )


if __name__ == "__main__":
    main()

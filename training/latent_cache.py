"""Precompute VAE latents and CLIP embeddings of every view into shards (``make cache-latents``).

The VAE encoder costs about as much as the UNet step, so training from the cache (``data.cached:
true``, ``data.train: <cache folder>``) is much faster. Each cached sample keeps the original
``cameras.npy`` and ``meta.json`` and adds ``latents.npy`` (float16 ``[V,4,h,w]``, the posterior
mean, scaled) and ``clip.npy`` (float16 ``[V,D]``, each view on white). The background is fixed at
cache time (``--background``; ``random`` draws one colour per object, seeded by its key).
Under torchrun each rank caches every WORLD_SIZE-th shard.

Every cached ``meta.json`` records what made it (``latent_cache``: the SHA-256 of the VAE's and
the image encoder's weights, the resolution, the VAE scaling factor, the model preset's hash and
the ``--init``), and training refuses a cache that another VAE, encoder or resolution made
(``check_cache_matches``), naming both. The images are made by the training data path itself
(models.shards.images decodes, premultiplies, resizes and composites).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import zlib
from pathlib import Path

import torch
import webdataset as wds
from torch import nn
from tqdm import tqdm

from models.bundle import MultiViewDiffusion
from models.checkpoint_io import CheckpointError
from models.shards.format import CorruptSample, cache_sample, read_meta
from models.shards.images import BACKGROUNDS, WHITE, composite, decode_views, premultiplied
from models.shards.urls import expand_shard_urls
from training.model_init import resolve_init
from training.samples import background_colour
from training.shard_check import DataError


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, fp32 values): the same weights give the
    same hash whatever device or dtype they were loaded to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def provenance(model: MultiViewDiffusion, init: str, resolution: int) -> dict:
    """What a cache depends on, recorded in every cached meta.json (``latent_cache``)."""
    preset = json.dumps(model.preset, sort_keys=True).encode()
    return {
        "vae_sha256": weights_sha256(model.vae),
        "image_encoder_sha256": weights_sha256(model.image_encoder),
        "resolution": resolution,
        "scaling_factor": float(model.vae.scaling_factor),
        "preset_sha256": hashlib.sha256(preset).hexdigest(),
        "init": init,
    }


def check_cache_matches(first_samples: list[dict], model: MultiViewDiffusion, resolution: int):
    """Refuse a latent cache that this run's model did not make: another VAE (weights or scaling
    factor), another image encoder, or another resolution. ``first_samples``: the first good
    sample of each checked cache shard (ShardDataModule.check)."""
    ours: dict | None = None
    for sample in first_samples:
        stored = sample["meta"].get("latent_cache", {})
        where = sample.get("key")
        if "vae_sha256" not in stored:
            raise DataError(
                f"latent cache sample {where}: records no VAE (made before caches recorded their "
                "provenance): rebuild it with make cache-latents"
            )
        ours = ours or provenance(model, "this run", resolution)
        for key, what in (
            ("vae_sha256", "VAE"),
            ("scaling_factor", "VAE scaling factor"),
            ("image_encoder_sha256", "image encoder"),
            ("resolution", "resolution"),
        ):
            if stored.get(key) != ours[key]:
                made, here = stored.get(key), ours[key]
                if key.endswith("sha256"):
                    made, here = f"weights sha256 {made[:12]}", f"weights sha256 {here[:12]}"
                raise DataError(
                    f"latent cache sample {where} was made by another {what}: {made} (cache "
                    f"--init {stored.get('init')!r}, preset {str(stored.get('preset_sha256'))[:12]})"
                    f"; this run's model.init has {here} (preset {ours['preset_sha256'][:12]}"
                    f"{', data.resolution' if key == 'resolution' else ''}). Rebuild the cache "
                    "with this run's model.init (make cache-latents INIT=...)"
                )


@torch.no_grad()
def encode_sample(
    model, sample: dict, resolution: int, background: str, device: torch.device, record: dict
) -> dict:
    meta = read_meta(sample)
    views = meta.views
    rgba = torch.stack(decode_views(sample, list(range(views)))).to(device)
    colour = background_colour(background, random.Random(zlib.crc32(sample["__key__"].encode())))
    dtype = next(model.vae.parameters()).dtype
    premult = premultiplied(rgba, resolution)  # on the device, as in training
    images = (composite(premult, colour) * 2 - 1).to(dtype)
    latents = model.vae.encode(images, sample=False).float().cpu()
    clip = model.image_encoder.encode(composite(premult, WHITE).to(dtype))
    stored = {**meta.meta, "latent_cache": {**record, "background": background, "vae": "mean"}}
    return cache_sample(
        sample, stored, latents.numpy(), clip.reshape(views, -1).float().cpu().numpy()
    )


def cache_latents(
    sources: list[str],
    init: str,
    out: str | Path,
    resolution: int,
    background: str,
    shard_size: int,
) -> dict:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = resolve_init(init, seed=0)
    record = provenance(model, init, resolution)  # before the cast: the fp32 weights' hash
    model.vae.to(device, dtype)
    model.image_encoder.to(device, dtype)
    urls = expand_shard_urls(sources)[rank::world]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / f"cache-{rank:03d}.json"
    if summary_file.is_file():  # written last: a finished cache of the same inputs is kept
        done = json.loads(summary_file.read_text())
        same = (done.get("sources"), done.get("background"), done.get("latent_cache"))
        if same == (urls, background, record):
            print(f"{out}: already cached from these shards and this model, nothing to do")
            return {"written": done["written"], "skipped": done["skipped"]}
    counts = {"written": 0, "skipped": 0}

    def skip(error: Exception) -> bool:
        counts["skipped"] += 1
        return True

    pattern = str(out / f"cache-{rank:03d}-%06d.tar")
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=skip))
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as writer:
        for sample in tqdm(stream, desc=f"caching (rank {rank})", disable=rank != 0):
            try:
                writer.write(encode_sample(model, sample, resolution, background, device, record))
                counts["written"] += 1
            except CorruptSample:
                counts["skipped"] += 1
    summary = {**counts, "sources": urls, "background": background, "latent_cache": record}
    summary_file.write_text(json.dumps(summary, indent=2))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", nargs="+", required=True, help="rendered shards (folder, pattern, URL)"
    )
    parser.add_argument(
        "--init", default="tiny", help="model whose VAE/encoder to use (as model.init)"
    )
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument(
        "--resolution", type=int, default=None, help="default: the model's sampling size"
    )
    parser.add_argument("--background", default="white", choices=["random", *BACKGROUNDS])
    parser.add_argument("--shard-size", type=int, default=1000, help="objects per cache shard")
    args = parser.parse_args(argv)
    resolution = args.resolution
    try:
        if resolution is None:
            resolution = int(resolve_init(args.init, 0).preset["sampling"]["image_size"])
        counts = cache_latents(
            args.data, args.init, args.out, resolution, args.background, args.shard_size
        )
    except CheckpointError as error:  # a bad INIT: one line naming the file and the problem
        raise SystemExit(f"error: {error}") from None
    print(f"cached {counts['written']} objects, skipped {counts['skipped']} -> {args.out}")


if __name__ == "__main__":
    main()

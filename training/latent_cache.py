"""Precompute VAE latents and CLIP embeddings of every view into shards (``make cache-latents``).

The VAE encoder costs about as much as the UNet step, so training from the cache (``data.cached:
true``, ``data.train: <cache folder>``) is much faster. Each cached sample keeps the original
``cameras.npy`` and ``meta.json`` and adds ``latents.npy`` (float16 ``[V,4,h,w]``, the posterior
mean, scaled) and ``clip.npy`` (float16 ``[V,D]``, each view on white). The background is fixed at
cache time (``--background``; ``random`` draws one colour per object, seeded by its key).
Under torchrun each rank caches every WORLD_SIZE-th shard.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import zlib
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from training.checkpoints import resolve_init
from training.datamodule import expand_shard_urls
from training.samples import (
    BACKGROUNDS,
    CorruptSample,
    background_colour,
    composite,
    decode_rgba,
    read_meta,
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@torch.no_grad()
def encode_sample(
    model, sample: dict, resolution: int, background: str, device: torch.device
) -> dict:
    meta = read_meta(sample)
    views = len(meta["_cameras"])
    rgba = torch.stack([decode_rgba(sample, i, resolution) for i in range(views)])
    colour = background_colour(background, random.Random(zlib.crc32(sample["__key__"].encode())))
    dtype = next(model.vae.parameters()).dtype
    images = (composite(rgba, colour) * 2 - 1).to(device, dtype)
    latents = model.vae.encode(images, sample=False).float().cpu()
    clip = model.image_encoder.encode(composite(rgba, BACKGROUNDS["white"]).to(device, dtype))
    stored = json.loads(sample["meta.json"])
    stored["latent_cache"] = {"resolution": resolution, "background": background, "vae": "mean"}
    return {
        "__key__": sample["__key__"],
        "cameras.npy": sample["cameras.npy"],
        "meta.json": json.dumps(stored).encode(),
        "latents.npy": _npy(latents.numpy().astype(np.float16)),
        "clip.npy": _npy(clip.reshape(views, -1).float().cpu().numpy().astype(np.float16)),
    }


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
    model.vae.to(device, dtype)
    model.image_encoder.to(device, dtype)
    urls = expand_shard_urls(sources)[rank::world]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "skipped": 0}

    def skip(error: Exception) -> bool:
        counts["skipped"] += 1
        return True

    pattern = str(out / f"cache-{rank:03d}-%06d.tar")
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=skip))
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as writer:
        for sample in tqdm(stream, desc=f"caching (rank {rank})", disable=rank != 0):
            try:
                writer.write(encode_sample(model, sample, resolution, background, device))
                counts["written"] += 1
            except CorruptSample:
                counts["skipped"] += 1
    (out / f"cache-{rank:03d}.json").write_text(json.dumps({**counts, "sources": urls}, indent=2))
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
    if resolution is None:
        resolution = int(resolve_init(args.init, 0).preset["sampling"]["image_size"])
    counts = cache_latents(
        args.data, args.init, args.out, resolution, args.background, args.shard_size
    )
    print(f"cached {counts['written']} objects, skipped {counts['skipped']} -> {args.out}")


if __name__ == "__main__":
    main()

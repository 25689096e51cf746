"""Precompute VAE latents and CLIP embeddings of every view into shards (``make cache-latents``).

The VAE encoder costs about as much as the UNet step, so training from the cache (``data.cached:
true``, ``data.train: <cache folder>``) is much faster. Each cached sample keeps the original
``cameras.npy`` and ``meta.json`` and adds ``latents.npy`` (float16 ``[V,C,h,w]``, the posterior
mean, scaled) and ``clip.npy`` (float16 ``[V,D]``, each view on white). The background is fixed at
cache time (``--background``; ``random`` draws one colour per object, seeded by its key).
Over ranks and nodes (torchrun's ``RANK``/``WORLD_SIZE``, srun's ``SLURM_PROCID``/``SLURM_NTASKS``)
each rank caches every world-th input shard; input shard I becomes ``cache-IIIIII-JJJJ.tar`` (at
most ``--shard-size`` objects each) and ``cache-IIIIII.json``, with fixed tar headers, so the cache
is the same bytes for any number of ranks. The ranks need no process group: they share nothing
but the model, which rank 0 alone converts when it must be (the others wait for its folder).

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
    rgba = decode_views(sample, list(range(views))).to(device)
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


def rank_and_world(env: dict | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank): torchrun's ``RANK``/``WORLD_SIZE``, else srun's
    ``SLURM_PROCID``/``SLURM_NTASKS``, else one process."""
    env = os.environ if env is None else env
    for rank, world, local in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if env.get(rank, "").isdigit() and env.get(world, "").isdigit():
            return int(env[rank]), int(env[world]), int(env.get(local, 0) or 0)
    return 0, 1, 0


def _record_name(index: int) -> str:
    return f"cache-{index:06d}.json"


def _is_done(out: Path, index: int, url: str, background: str, record: dict) -> bool:
    """Input shard ``index`` was cached from ``url`` by this model (its record is written last)."""
    path = out / _record_name(index)
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    same = (done.get("source"), done.get("background"), done.get("latent_cache"))
    shards = done.get("shards", [])
    return same == (url, background, record) and all((out / n).is_file() for n in shards)


class _ChunkWriter:
    """Cache shards ``cache-IIIIII-JJJJ.tar`` of input shard I, ``shard_size`` objects each,
    written under a temporary name and renamed, with fixed tar headers (mtime 0): the same input
    gives the same bytes whichever process writes it."""

    def __init__(self, out: Path, index: int, shard_size: int) -> None:
        self.out, self.index, self.size = out, index, max(shard_size, 1)
        self.names: list[str] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0

    def write(self, sample: dict) -> None:
        if self._writer is None or self._count == self.size:
            self.close()
            name = f"cache-{self.index:06d}-{len(self.names):04d}.tar"
            self.names.append(name)
            self._writer = wds.TarWriter(str(self.out / f"{name}.partial"), mtime=0)
            self._count = 0
        self._writer.write(sample)
        self._count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            name = self.names[-1]
            os.replace(self.out / f"{name}.partial", self.out / name)
            self._writer = None


def cache_latents(
    sources: list[str],
    init: str,
    out: str | Path,
    resolution: int,
    background: str,
    shard_size: int,
) -> dict:
    """Cache the input shards this rank owns (input shard I: rank I % world). Each input shard
    becomes its own cache shards and a record (``cache-IIIIII.json``, written last: a finished
    shard is skipped on a rerun), so the folder is the same for any number of ranks and nodes."""
    rank, world, local = rank_and_world()
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # A published checkpoint or ZeRO folder is converted once, by rank 0; the others wait for it.
    model = resolve_init(init, seed=0, rank=rank)
    record = provenance(model, init, resolution)  # before the cast: the fp32 weights' hash
    model.vae.to(device, dtype)
    model.image_encoder.to(device, dtype)
    urls = expand_shard_urls(sources)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = [(i, url) for i, url in enumerate(urls) if i % world == rank]
    counts = {"written": 0, "skipped": 0, "kept": 0}
    for index, url in tqdm(mine, desc=f"caching shards (rank {rank})", disable=rank != 0):
        if _is_done(out, index, url, background, record):
            counts["kept"] += 1
            continue
        shard = {"written": 0, "skipped": 0}

        def skip(error: Exception, shard=shard) -> bool:
            shard["skipped"] += 1
            return True

        writer = _ChunkWriter(out, index, shard_size)
        stream = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=skip))
        for sample in stream:
            try:
                writer.write(encode_sample(model, sample, resolution, background, device, record))
                shard["written"] += 1
            except CorruptSample:
                shard["skipped"] += 1
        writer.close()
        done = {"source": url, "background": background, "latent_cache": record, **shard}
        target = out / _record_name(index)
        target.with_suffix(".partial").write_text(json.dumps({**done, "shards": writer.names}))
        os.replace(target.with_suffix(".partial"), target)
        counts["written"] += shard["written"]
        counts["skipped"] += shard["skipped"]
    if counts["kept"]:
        print(f"rank {rank}: {counts['kept']} shard(s) already cached by this model, kept")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    resolution = args.resolution
    try:
        if resolution is None:
            model = resolve_init(args.init, 0, rank=rank_and_world()[0])  # rank 0 converts, once
            resolution = int(model.preset["sampling"]["image_size"])
        counts = cache_latents(
            args.data, args.init, args.out, resolution, args.background, args.shard_size
        )
    except CheckpointError as error:  # a bad INIT: one line naming the file and the problem
        raise SystemExit(f"error: {error}") from None
    rank = rank_and_world()[0]
    print(
        f"rank {rank}: cached {counts['written']} objects, skipped {counts['skipped']} -> {args.out}"
    )


if __name__ == "__main__":
    main()

"""`make bench-data`: the training data path per CPU core, beside the PNG-decode floor.

Each training sample is one object: 5 RGBA PNG views (4 targets + the reference). Loader workers
read the tar, decode the 5 views to uint8 and collate; compositing, resizing and scaling run
batched on the training device (training.batch_transforms), timed here on the CPU for reference.
In one run on the same shards this prints: bare decoding (PIL and torchvision.io.decode_png, and
PIL's reduced decoding for a half-resolution run), the data path's ms/view and objects/s per core,
its ratio to the faster bare decoder (goal <= 1.25x), what the data path spends beyond decoding
(and on which parts), and the latent-cache path (objects/s per core). Times are this process's CPU time (one thread): a per-core cost that other jobs on a shared
machine disturb far less than wall time. The anchor is one GPU's appetite: the 4-view training step of docs/design.md (421 img/s on
an H200, ~105 objects/s); the script prints how many cores feed 10x that.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import record  # noqa: E402  (scripts/ is on sys.path when run)

GPU_OBJECTS_PER_S = 421 / 4  # docs/design.md: joint 4-view step, one H200, bf16, eager
VIEWS_PER_OBJECT = 5


def render_shards(folder: Path, res: int) -> Path:
    """Built-in samples at ``res`` px; quality does not matter for decoding, so 1 Cycles sample."""
    from data_prep.config import load_config
    from data_prep.render import render

    config = load_config(
        source="samples",
        out=str(folder),
        res=res,
        samples=1,
        denoise=False,
        workers=2,
        num_quads=2,
        num_refs=2,
        progress=False,
    )
    summary = render(config)
    if summary.failed:
        raise RuntimeError(f"rendering the benchmark shards failed: {summary.failed}")
    return folder


def shard_pngs(shards: Path) -> list[bytes]:
    from models.shards.format import split_member, view_index

    pngs = []
    for path in sorted(shards.glob("**/*.tar")):
        with tarfile.open(path) as tar:
            views = [m for m in tar.getmembers() if view_index(split_member(m.name)[1]) is not None]
            pngs += [tar.extractfile(m).read() for m in views]
    if not pngs:
        raise SystemExit(f"no PNG views in the shards under {shards}")
    return pngs


def decoders() -> dict[str, Callable[[bytes], object]]:
    from PIL import Image

    from models.shards.format import view_name
    from models.shards.images import decode_view

    def pil(data: bytes):
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGBA"))

    def pil_reduced(data: bytes):  # PNG has no reduced decoding: full decode, then a 2x2 box
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGBA").reduce(2))

    return {
        "PIL": pil,
        "torchvision decode_png": lambda data: decode_view({view_name(0): data}, 0),
        "PIL + reduce(2)": pil_reduced,
    }


def ms_per_view(decode: Callable[[bytes], object], pngs: list[bytes]) -> float:
    start = time.process_time()
    for data in pngs:
        decode(data)
    return (time.process_time() - start) / len(pngs) * 1e3


def stream(shards: Path, res: int, batch_size: int, cached: bool):
    from models.shards.urls import expand_shard_urls
    from training.config import DataConfig
    from training.datamodule import ShardStream

    config = DataConfig(
        train=[str(shards)],
        cached=cached,
        resolution=res,
        batch_size=batch_size,
        num_workers=0,
        shuffle_buffer=8,
        background="random",
    )
    batches = iter(ShardStream(expand_shard_urls(config.train), config, ref_in_targets=False))
    next(batches)  # warm-up: opens the first shard, fills the shuffle buffer
    return batches


def objects_per_s(batches, count: int, batch_size: int) -> float:
    """Objects per second through the loader-worker side (one core, in this process). Each batch
    is dropped once made, as the training step drops it: keeping them all would make every new
    batch's memory fresh pages from the kernel (page faults a real loader does not pay)."""
    start = time.process_time()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.process_time() - start)


def device_ms_per_view(batches: list[dict], res: int) -> float:
    """What the training device does with those batches (training.batch_transforms), timed on
    this CPU core: on a GPU it is a few kernels."""
    from training.batch_transforms import image_batch

    start = time.process_time()
    for batch in batches:
        image_batch(batch, res, ref_image=True)
    views = sum(len(b["key"]) for b in batches) * VIEWS_PER_OBJECT
    return (time.process_time() - start) / views * 1e3


def parts_ms_per_object(shards: Path, rounds: int = 3) -> dict[str, float]:
    """What the data path does per object beside decoding its 5 views, each part timed alone
    (best of ``rounds``): reading the tar, checking meta.json and the cameras (with the camera
    input made), and stacking a batch's views."""
    import random

    from models.cameras import camera_embedding
    from models.shards.format import list_shards, read_meta
    from models.shards.tar_stream import tar_samples
    from training.samples import collate, image_sample

    urls = [{"url": str(p)} for p in list_shards(shards)] or [
        {"url": str(p)} for p in sorted(shards.glob("**/*.tar"))
    ]
    samples = list(tar_samples(urls))
    made = [image_sample(s, random.Random(0), "random", False) for s in samples[:4]]

    def tar() -> None:
        list(tar_samples(urls))

    def meta() -> None:
        for sample in samples:
            camera_embedding(torch.from_numpy(read_meta(sample).cameras[:VIEWS_PER_OBJECT]))

    def stack() -> None:
        for _ in range(len(samples) // len(made) or 1):
            collate(made)

    per = {"tar": (tar, len(samples)), "meta": (meta, len(samples))}
    per["collate"] = (stack, (len(samples) // len(made) or 1) * len(made))
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (fn, objects) in per.items():
            start = time.process_time()
            fn()
            ms = (time.process_time() - start) / objects * 1e3
            best[name] = min(best.get(name, ms), ms)
    return best


def make_cache(shards: Path, folder: Path, res: int) -> Path:
    from training.latent_cache import cache_latents

    cache_latents([str(shards)], "tiny", folder, res, "random", 1000)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="shard folder (default: render samples)")
    parser.add_argument("--res", type=int, default=256, help="render and training resolution")
    parser.add_argument("--batches", type=int, default=20, help="batches to time per round")
    parser.add_argument("--batch-size", type=int, default=4, help="objects per batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best counts)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: the per-core figures
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.data) if args.data else render_shards(Path(tmp) / "shards", args.res)
        pngs = shard_pngs(shards)
        cache = make_cache(shards, Path(tmp) / "cache", args.res)
        decode = decoders()
        raw = stream(shards, args.res, args.batch_size, cached=False)
        cached = stream(cache, args.res, args.batch_size, cached=True)
        for fn in decode.values():  # warm-up
            ms_per_view(fn, pngs[:4])
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):  # interleaved: a noisy neighbour slows every figure alike
            for name, fn in decode.items():
                times.setdefault(name, []).append(ms_per_view(fn, pngs))
            rate = objects_per_s(raw, args.batches, args.batch_size)
            times.setdefault("data", []).append(rate)
            kept = [next(raw) for _ in range(min(args.batches, 5))]  # untimed: for the device
            times.setdefault("device", []).append(device_ms_per_view(kept, args.res))
            times.setdefault("cache", []).append(
                objects_per_s(cached, args.batches, args.batch_size)
            )
        parts = parts_ms_per_object(shards)  # inside: the rendered shards go with the folder
    best = {k: (min(v) if k in (*decode, "device") else max(v)) for k, v in times.items()}
    spread = {k: statistics.pstdev(v) / statistics.mean(v) for k, v in times.items()}
    px = f"{args.res} px"
    for name in decode:
        record("data", f"bare decode {name} ({px})", best[name], "ms/view")
    floor = min(best["PIL"], best["torchvision decode_png"])
    data_ms = 1e3 / (best["data"] * VIEWS_PER_OBJECT)
    record("data", f"data path ({px}, 5 views/object)", data_ms, "ms/view")
    record("data", f"data path objects/s per core ({px})", best["data"], "obj/s")
    record(
        "data",
        "data path / bare decode (faster decoder)",
        data_ms / floor,
        "x",
        "(goal <= 1.25x)",
    )
    record(
        "data",
        f"device transforms on this CPU ({px})",
        best["device"],
        "ms/view",
        "(batched on the training device; here on one CPU core)",
    )
    remains = data_ms - floor
    record(
        "data",
        "data path beyond decoding",
        remains,
        "ms/view",
        "(of it, per view: tar reading {tar:.3f}, meta.json + cameras {meta:.3f}, stacking the "
        "batch {collate:.3f}; the rest: shuffling, batching, the sample's own tensors)".format(
            **{k: v / VIEWS_PER_OBJECT for k, v in parts.items()}
        ),
    )
    record("data", f"latent-cache path objects/s per core ({px})", best["cache"], "obj/s")
    record(
        "data",
        "cores for 10x one GPU's 4-view step",
        10 * GPU_OBJECTS_PER_S / best["data"],
        "cores",
        f"(GPU anchor {GPU_OBJECTS_PER_S:.0f} obj/s; one core = "
        f"{best['data'] / GPU_OBJECTS_PER_S:.2f}x; round-to-round spread up to "
        f"{100 * max(spread.values()):.0f}%)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

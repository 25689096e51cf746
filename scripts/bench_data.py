"""`make bench-data`: how fast one CPU core decodes training samples from shards.

Each training sample is one object: 5 RGBA PNG views (4 targets + the reference) decoded,
composited on a random background, resized, plus the CLIP preprocessing input. The figure to
compare is one GPU's appetite: the 4-view training step of DESIGN.md (421 img/s on an H200, i.e.
~105 objects/s); the data path should deliver 10x that with the node's cores, so the script prints
how many cores that takes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import record  # noqa: E402  (scripts/ is on sys.path when run)

GPU_OBJECTS_PER_S = 421 / 4  # DESIGN.md section 5: joint 4-view step, one H200, bf16, eager


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


def measure(shards: Path, res: int, batches: int, batch_size: int) -> float:
    """Objects per second decoded by the training data path in this process (one core)."""
    from training.config import DataConfig
    from training.datamodule import ShardStream, expand_shard_urls

    config = DataConfig(
        train=[str(shards)],
        resolution=res,
        batch_size=batch_size,
        num_workers=0,
        shuffle_buffer=8,
        background="random",
    )
    stream = iter(ShardStream(expand_shard_urls(config.train), config, ref_in_targets=False))
    next(stream)  # warm-up: opens the first shard, fills the shuffle buffer
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="shard folder (default: render samples)")
    parser.add_argument("--res", type=int, default=256, help="render and training resolution")
    parser.add_argument("--batches", type=int, default=20, help="batches to time")
    parser.add_argument("--batch-size", type=int, default=4, help="objects per batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core: the per-core figure
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.data) if args.data else render_shards(Path(tmp) / "shards", args.res)
        rate = measure(shards, args.res, args.batches, args.batch_size)
    record("data", f"objects/s per core ({args.res} px, 5 views each)", rate, "obj/s")
    record("data", f"views/s per core ({args.res} px)", rate * 5, "img/s")
    cores = 10 * GPU_OBJECTS_PER_S / rate
    record(
        "data",
        "cores for 10x one GPU's 4-view step",
        cores,
        "cores",
        f"(GPU anchor {GPU_OBJECTS_PER_S:.0f} obj/s; one core = {rate / GPU_OBJECTS_PER_S:.2f}x)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

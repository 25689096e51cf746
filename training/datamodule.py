"""WebDataset data module for multi-node training.

Each rank and loader worker draws shards with replacement (``resampled``) from a seed made of
(data seed, epoch, rank, worker), then ``split_by_node``/``split_by_worker`` as webdataset expects.
``with_epoch`` on the loader gives every rank the same number of steps, so uneven shards never hang
DDP. Corrupt samples (bad tar member, undecodable PNG, bad metadata) are skipped and counted; the
count rides along in each batch (``batch["skipped"]``) so the module can log it across workers.
The loader is resumable: Lightning saves its ``state_dict`` (epoch, batches consumed) and, with
``exact_resume``, the restarted stream replays to the same position.
"""

from __future__ import annotations

import glob
import os
import random
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.utils import make_seed, pytorch_worker_info

from training.config import DataConfig
from training.samples import CorruptSample, cached_sample, collate, image_sample


def expand_shard_urls(sources: list[str]) -> list[str]:
    """Local folders (all ``*.tar`` inside), globs, brace patterns, ``pipe:`` and http(s) URLs."""
    urls: list[str] = []
    for source in sources:
        if source.startswith(("pipe:", "http://", "https://", "gs://")):
            urls.extend(wds.shardlists.expand_urls(source))
        elif os.path.isdir(source):
            found = sorted(glob.glob(os.path.join(source, "**", "*.tar"), recursive=True))
            urls.extend(found)
        elif any(c in source for c in "*?["):
            urls.extend(sorted(glob.glob(source)))
        else:
            urls.extend(wds.shardlists.expand_urls(source))
    if not urls:
        raise FileNotFoundError(f"no shards found in {sources}")
    missing = [
        u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).exists()
    ]
    if missing:
        raise FileNotFoundError(f"shard(s) not found: {missing[:3]}")
    return urls


class SkipCounter:
    """Counts skipped samples in one worker; each emitted sample carries the count since the last."""

    def __init__(self) -> None:
        self.pending = 0

    def handler(self, error: Exception) -> bool:  # webdataset handler: True = continue
        self.pending += 1
        return True

    def take(self) -> int:
        count, self.pending = self.pending, 0
        return count


class ShardStream(IterableDataset):
    """Infinite, deterministic-per-seed stream of collated batches from resampled shards."""

    def __init__(self, urls: list[str], config: DataConfig, ref_in_targets: bool) -> None:
        super().__init__()
        self.urls = urls
        self.config = config
        self.ref_in_targets = ref_in_targets
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already consumed before a restart
        self.exact_skip = False

    def _decode(self, samples: Iterator[dict], counter: SkipCounter, seed: int) -> Iterator[dict]:
        cfg = self.config
        for index, sample in enumerate(samples):
            rng = random.Random(make_seed(seed, index))  # per-sample: same draw on a replay
            try:
                if cfg.cached:
                    out = cached_sample(sample, rng, self.ref_in_targets)
                else:
                    out = image_sample(
                        sample, rng, cfg.resolution, cfg.background, self.ref_in_targets
                    )
            except CorruptSample:
                counter.pending += 1
                continue
            out["skipped"] = counter.take()
            yield out

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = pytorch_worker_info()
        restart = 0 if self.exact_skip else self.skip_batches  # a fresh stream after a restart
        seed = make_seed(self.config.seed, self.epoch, rank, worker, restart)
        counter = SkipCounter()
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=counter.handler),
            wds.shuffle(
                self.config.shuffle_buffer,
                initial=self.config.shuffle_buffer // 2,
                rng=random.Random(seed),
            ),
            partial(self._decode, counter=counter, seed=seed),
            wds.batched(self.config.batch_size, collation_fn=collate, partial=False),
        )
        batches = iter(pipeline)
        if self.exact_skip and self.skip_batches:
            # DataLoader takes batches round-robin from workers: worker w made batches w, w+W, ...
            for _ in range(len(range(worker, self.skip_batches, max(workers, 1)))):
                next(batches)
        yield from batches


class ResumableLoader(wds.WebLoader):
    """WebLoader that knows its epoch and, through Lightning, how far into it training got."""

    def __init__(self, stream: ShardStream, steps: int, progress: Callable[[], int], **kw) -> None:
        super().__init__(stream, batch_size=None, **kw)
        self.stream, self.steps, self.progress = stream, steps, progress
        self.with_epoch(steps)
        self._epoch = -1
        self._resume: dict | None = None

    def __iter__(self):
        if self._resume is not None:  # first epoch after a restart: continue mid-epoch
            self._epoch, done = self._resume["epoch"], self._resume["batches"]
            self._resume = None
        else:
            self._epoch, done = self._epoch + 1, 0
        self.stream.epoch, self.stream.skip_batches = self._epoch, done
        self.nsamples = self.steps - done
        return super().__iter__()

    def state_dict(self) -> dict:
        return {"epoch": max(self._epoch, 0), "batches": self.progress()}

    def load_state_dict(self, state: dict) -> None:
        done = int(state["batches"]) % self.steps
        epoch = int(state["epoch"]) + int(state["batches"]) // self.steps
        self._resume = {"epoch": epoch, "batches": done}


class ShardDataModule(pl.LightningDataModule):
    def __init__(
        self, config: DataConfig, ref_in_targets: bool = False, exact_resume: bool = False
    ):
        super().__init__()
        self.config = config
        self.ref_in_targets = ref_in_targets
        self.exact_resume = exact_resume

    def _progress(self) -> int:
        # Batches of the current epoch that the trainer has fully processed (prefetch excluded).
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def make_loader(
        self, urls: list[str], progress: Callable[[], int] | None = None
    ) -> ResumableLoader:
        stream = ShardStream(expand_shard_urls(urls), self.config, self.ref_in_targets)
        stream.exact_skip = self.exact_resume
        workers = self.config.num_workers
        extra = {"prefetch_factor": self.config.prefetch_factor} if workers > 0 else {}
        return ResumableLoader(
            stream,
            self.config.steps_per_epoch,
            progress or self._progress,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            **extra,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self.make_loader(self.config.train)

    def fixed_batch(self, count: int) -> dict:
        """A fixed batch of ``count`` objects (validation URLs, else training ones) for sample grids."""
        import dataclasses

        config = dataclasses.replace(
            self.config, batch_size=count, num_workers=0, shuffle_buffer=1, background="white"
        )
        stream = ShardStream(expand_shard_urls(self.config.val or self.config.train), config, False)
        stream.exact_skip = True
        return next(iter(stream))

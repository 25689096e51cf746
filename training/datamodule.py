"""WebDataset data module for multi-node training.

Each rank and loader worker draws shards with replacement (``resampled``) from a seed made of
(data seed, epoch, rank, worker), then ``split_by_node``/``split_by_worker`` as webdataset expects.
``with_epoch`` on the loader gives every rank the same number of steps, so uneven shards never hang
DDP. Corrupt samples (bad tar member, undecodable PNG, bad metadata, a shard that breaks off) are
skipped, counted and named: the count (``batch["skipped"]``) and one record per skip
(``batch["skips"]``: shard, key, reason) ride along in each batch, so the module logs the count
across workers and training.skipped_data names each one in the log and the run folder; a run of
``data.max_consecutive_skips`` failures in a row stops the run (bad shards, not bad luck).
The loader is resumable: Lightning saves its ``state_dict`` (epoch, batches consumed) and, with
``exact_resume``, the restarted stream replays to the same position.

Workers only read and decode: uint8 RGBA views and the camera/meta arrays cross the worker
boundary, and the images are made on the training device (training.batch_transforms). Workers are
persistent; each new epoch's stream reads its (epoch, position) from memory shared with them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.utils import make_seed, pytorch_worker_info

from models.shards.format import CorruptSample
from models.shards.tar_stream import tar_samples
from models.shards.urls import expand_shard_urls
from training.batch_transforms import image_batch
from training.config import DataConfig
from training.samples import ViewSlots, cached_sample, collate, image_sample
from training.shard_check import DataError, check_shards


def _split_where(message: str, shard: str, key: str) -> str:
    """A CorruptSample message without its ``shard:key: `` prefix (the record names both)."""
    prefix = f"{shard}:{key}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class SkipCounter:
    """Counts skipped samples in one worker and names them: each emitted sample carries the count
    since the last (``skipped``) and one record per skip (``skips``: shard, key, reason; the key
    is None when a shard broke off before naming one). ``limit`` failures in a row (no good
    sample between them) raise DataError."""

    def __init__(self, limit: int) -> None:
        self.pending: list[dict] = []
        self.in_a_row = 0
        self.limit = limit

    def failed(self, shard: str | None, key: str | None, reason: str) -> None:
        self.pending.append({"shard": shard, "key": key, "reason": reason})
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise DataError(
                f"{self.in_a_row} samples in a row failed (data.max_consecutive_skips="
                f"{self.limit}): the shards are bad, not a few samples; the last: "
                + (f"{shard}:{key}: {reason}" if key else f"shard {shard}: {reason}")
            )

    def handler(self, error: Exception) -> bool:  # webdataset handler: True = continue
        # tar_samples appends the shard URL to a reading error's args; a tar that breaks off
        # names the first sample it lost (``.key``: it and the rest of the shard).
        args = [a for a in error.args if isinstance(a, str)]
        url = args[-1] if len(args) > 1 else None
        key = getattr(error, "key", None)
        reason = f"{type(error).__name__}: {args[0] if args else error}"
        self.failed(url, key, reason)
        return True

    def take(self) -> tuple[int, list[dict]]:
        records, self.pending, self.in_a_row = self.pending, [], 0
        return len(records), records


class ShardStream(IterableDataset):
    """Infinite, deterministic-per-seed stream of collated batches from resampled shards."""

    def __init__(self, urls: list[str], config: DataConfig, ref_in_targets: bool) -> None:
        super().__init__()
        self.urls = urls
        self.config = config
        self.ref_in_targets = ref_in_targets
        # (epoch, batches of it consumed before a restart), written by the loader in the main
        # process and read by persistent workers each time they start a new epoch's stream.
        self._position = multiprocessing.RawArray("q", 2)
        self.exact_skip = False

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._position[0] = value

    @property
    def skip_batches(self) -> int:
        return int(self._position[1])

    @skip_batches.setter
    def skip_batches(self, value: int) -> None:
        self._position[1] = value

    def _batches(self, samples: Iterator[dict], counter: SkipCounter, seed: int) -> Iterator[dict]:
        """Decode samples and batch them. Raw-image views decode straight into their slot of the
        batch's buffer (training.samples.ViewSlots); a sample that fails is recorded and the
        next one takes its place in the batch."""
        cfg = self.config
        made: list[dict] = []
        slots = ViewSlots(cfg.batch_size)
        for index, sample in enumerate(samples):
            rng = random.Random(make_seed(seed, index))  # per-sample: same draw on a replay
            try:
                if cfg.cached:
                    out = cached_sample(sample, rng, self.ref_in_targets)
                else:
                    out = image_sample(
                        sample, rng, cfg.background, self.ref_in_targets, slots.slot()
                    )
                    slots.put(out["rgba"])
            except CorruptSample as error:
                url, key = sample.get("__url__"), sample.get("__key__")
                counter.failed(url, key, _split_where(str(error), url, key))
                continue
            out["skipped"], out["skips"] = counter.take()
            made.append(out)
            if len(made) == cfg.batch_size:
                yield collate(made, None if cfg.cached else slots.take())
                made = []

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = pytorch_worker_info()
        epoch, skip_batches = self.epoch, self.skip_batches
        restart = 0 if self.exact_skip else skip_batches  # a fresh stream after a restart
        seed = make_seed(self.config.seed, epoch, rank, worker, restart)
        counter = SkipCounter(self.config.max_consecutive_skips)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            wds.split_by_node,
            wds.split_by_worker,
            partial(tar_samples, handler=counter.handler),
            wds.shuffle(
                self.config.shuffle_buffer,
                initial=self.config.shuffle_buffer // 2,
                rng=random.Random(seed),
            ),
            partial(self._batches, counter=counter, seed=seed),
        )
        batches = iter(pipeline)
        if self.exact_skip and skip_batches:
            # DataLoader takes batches round-robin from workers: worker w made batches w, w+W, ...
            for _ in range(len(range(worker, skip_batches, max(workers, 1)))):
                next(batches)
        yield from batches


class ResumableLoader(wds.WebLoader):
    """WebLoader that knows its epoch and, through Lightning, how far into it training got.
    ``same_batches``: every iteration is the start of epoch 0 (the held-out batches)."""

    def __init__(
        self,
        stream: ShardStream,
        steps: int,
        progress: Callable[[], int],
        same_batches: bool = False,
        **kw,
    ) -> None:
        super().__init__(stream, batch_size=None, **kw)
        self.stream, self.steps, self.progress = stream, steps, progress
        self.same_batches = same_batches
        self.with_epoch(steps)
        self._epoch = -1
        self._resume: dict | None = None

    def __iter__(self):
        if self.same_batches:
            self._epoch, self._resume = -1, None
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
    """``ref_image``: make the reference on its background for the VAE (stage 2's reference
    frame); stage 1 never uses that latent, so it neither makes nor encodes the image."""

    def __init__(
        self,
        config: DataConfig,
        ref_in_targets: bool = False,
        exact_resume: bool = False,
        ref_image: bool = True,
    ):
        super().__init__()
        self.config = config
        self.ref_in_targets = ref_in_targets
        self.exact_resume = exact_resume
        self.ref_image = ref_image

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Loader workers only decode: the images are made here, batched on the training device.
        if isinstance(batch, dict):
            return image_batch(batch, self.config.resolution, self.ref_image)
        return batch

    def check(self) -> list[dict]:
        """Fail fast (before any model is built) on missing paths, empty folders, shards that are
        no tar or whose samples miss the schema's members (training.shard_check). Returns the
        first good sample of each checked training shard."""
        first = []
        for key, sources in (("data.train", self.config.train), ("data.val", self.config.val)):
            if not sources and key == "data.val":
                continue
            try:
                urls = expand_shard_urls(sources)
                found = check_shards(urls, self.config.cached, self.config.max_consecutive_skips)
            except (FileNotFoundError, DataError) as error:
                raise DataError(f"{key}: {error}") from error
            first = first or found
        return first

    def _progress(self) -> int:
        # Batches of the current epoch that the trainer has fully processed (prefetch excluded).
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def make_loader(
        self,
        urls: list[str],
        progress: Callable[[], int] | None = None,
        steps: int | None = None,
        config: DataConfig | None = None,
        same_batches: bool = False,
    ) -> ResumableLoader:
        config = config or self.config
        stream = ShardStream(expand_shard_urls(urls), config, self.ref_in_targets)
        stream.exact_skip = self.exact_resume
        workers = config.num_workers
        extra = (
            {"prefetch_factor": config.prefetch_factor, "persistent_workers": True}
            if workers > 0
            else {}
        )
        return ResumableLoader(
            stream,
            steps or config.steps_per_epoch,
            progress or self._progress,
            same_batches=same_batches,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            **extra,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self.make_loader(self.config.train)

    def val_dataloader(self) -> ResumableLoader | list:
        """``data.val_batches`` held-out batches per rank, the same ones at every validation (a
        fixed seed and position); none without ``data.val``."""
        if not self.config.val:
            return []
        config = dataclasses.replace(self.config, num_workers=min(self.config.num_workers, 1))
        return self.make_loader(
            self.config.val,
            progress=lambda: 0,
            steps=self.config.val_batches,
            config=config,
            same_batches=True,
        )

    def fixed_batch(self, count: int) -> dict:
        """A fixed batch of ``count`` objects (validation URLs, else training ones) for sample
        grids, in the training layout (images made on the CPU, white background)."""
        if self.config.cached:  # the cache holds latents, not the images a grid shows
            raise DataError(
                "log.sample_every_n_steps: sample grids need rendered shards, but data.cached is "
                "true (data.train and data.val are latent caches): set log.sample_every_n_steps=0"
            )
        config = dataclasses.replace(
            self.config,
            batch_size=count,
            num_workers=0,
            shuffle_buffer=1,
            background="white",
        )
        stream = ShardStream(expand_shard_urls(self.config.val or self.config.train), config, False)
        stream.exact_skip = True
        return image_batch(next(iter(stream)), self.config.resolution, ref_image=True)

"""Fail fast on bad data, before any model is built.

``check_shards`` runs once at start-up (training.train.run, before ``resolve_init``): every data
path must exist and hold shards, and each checked shard must be a readable tar whose samples follow
the format (models/shards/format.py; latent-cache samples when ``cached``), decoded by the very code
the loader workers run. Isolated corrupt samples pass (the stream skips and counts them); a shard
that yields no usable sample within ``max_consecutive_skips`` samples stops the run, naming the
shard and the reason. Remote shards (``pipe:``, http) are checked by the first one's first
samples only; local ones up to ``MAX_CHECKED`` spread over the list (each costs a few ms: only the
first good sample is read).
"""

from __future__ import annotations

import random
from pathlib import Path

from models.shards.format import CorruptSample, NewerFormat, members_needed, read_meta
from models.shards.tar_stream import tar_samples
from training.samples import cached_sample, image_sample

MAX_CHECKED = 64  # local shards read at start-up, spread evenly over the list


class DataError(ValueError):
    """Unusable training data; the message names the path or shard and the reason."""


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def first_good_sample(url: str, cached: bool, limit: int) -> dict:
    """The first usable sample of shard ``url`` as the loader would make it (its ``meta`` too).
    Raises DataError when the shard is no tar, or ``limit`` samples in a row (or all) fail."""
    errors: list[str] = []
    stream = tar_samples([{"url": url}])  # the loader's own reader: no handler, errors raise
    rng = random.Random(0)
    try:
        for sample in stream:
            try:
                if cached:
                    out = cached_sample(sample, rng, False)
                else:
                    out = image_sample(sample, rng, "white", False)
                out["meta"] = read_meta(sample).meta
                return out
            except CorruptSample as error:
                errors.append(str(error))
                if len(errors) >= limit:
                    break
    except NewerFormat as error:
        raise DataError(str(error)) from error
    except Exception as error:  # tarfile / IO errors come in many types
        reason = str(error.args[0]) if error.args else type(error).__name__
        raise DataError(
            f"shard {url}: not a readable tar file ({type(error).__name__}: {reason})"
        ) from error
    if not errors:
        raise DataError(f"shard {url}: holds no samples (expected {members_needed(cached)})")
    raise DataError(
        f"shard {url}: no usable sample in its first {len(errors)}; the first: {errors[0]} "
        f"(each sample needs {members_needed(cached)})"
    )


def chosen(urls: list[str]) -> list[str]:
    local = [u for u in urls if not _is_remote(u)]
    remote = [u for u in urls if _is_remote(u)]
    if len(local) > MAX_CHECKED:
        step = len(local) / MAX_CHECKED
        local = [local[int(i * step)] for i in range(MAX_CHECKED)]
    return local + remote[:1]


def check_shards(urls: list[str], cached: bool, limit: int) -> list[dict]:
    """Check the shards ``urls`` (already expanded); returns the first good sample of each
    checked shard (the latent-cache check reads the cache's provenance from them)."""
    for url in urls:
        if not _is_remote(url) and not Path(url).is_file():
            raise DataError(f"shard {url}: does not exist or is not a file")
    return [first_good_sample(url, cached, limit) for url in chosen(urls)]

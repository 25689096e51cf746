"""A records-only render run at any scale (no Blender, no shards): the partitions' records as a
real run of ``objects`` objects would leave them, for the manifest scaling test and
``make bench-manifest``."""

from __future__ import annotations

from pathlib import Path

from data_prep.layout import hash_bucket
from data_prep.manifest import Manifest


def simulate_records(
    folder: str | Path,
    objects: int,
    partitions: int,
    settings: dict,
    shard_size: int = 64,
    failed_every: int = 100,
    views: int = 10,
) -> int:
    """Write every partition's records for ids ``obj-0000000``...: hash-assigned as in a run,
    every ``failed_every``-th object failed (timeout), the rest in shards of ``shard_size``.
    One pass over the ids with every partition's file open (memory: one open shard's ids per
    partition). Returns the number of objects done."""
    width = max(7, len(str(objects)))
    manifests = [
        Manifest(folder, part, partitions, settings, reconcile=False) for part in range(partitions)
    ]
    open_ids: list[list[str]] = [[] for _ in range(partitions)]
    next_index = [0] * partitions
    done = 0

    def flush(part: int) -> None:
        name = f"shard-{part:03d}-{next_index[part]:06d}.tar"
        ids = open_ids[part]
        manifests[part].add_shard(name, ids, {str(views): len(ids)}, sync=False, size=1 << 20)
        open_ids[part], next_index[part] = [], next_index[part] + 1

    for number in range(objects):
        object_id = f"obj-{number:0{width}d}"
        part = hash_bucket(object_id, partitions)
        if number % failed_every == failed_every - 1:
            manifests[part].add_failure(object_id, "timeout", "simulated", 1)
            continue
        open_ids[part].append(object_id)
        done += 1
        if len(open_ids[part]) == shard_size:
            flush(part)
    for part, manifest in enumerate(manifests):
        if open_ids[part]:
            flush(part)
        manifest.close()
    return done

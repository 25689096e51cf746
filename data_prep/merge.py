"""Merge the partitions' records of a render folder, streaming (``make merge-manifests``).

One partition is replayed at a time (memory: the largest partition), its shards are checked
against the files on disk, and its shards and failures are written as lines of
``OUT/manifest.jsonl``; objects done in two partitions are found from 8-byte hashes of every done
id (80 MB at 10M objects, not a dictionary of all ids), and named in a second pass over only the
partitions that hold a colliding hash. ``OUT/manifest.json`` gets the totals and problems.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from data_prep.layout import legacy_manifests, migrate_partition, partition_records
from data_prep.manifest import (
    VERSION,
    PartitionState,
    drop_from_shard,
    records_path,
)
from models.shards.format import list_shards, shard_ids, views_per_object


def migrate_folder(folder: Path) -> list[str]:
    """Migrate every partition of the earlier layout (``manifest-PPP.json`` + flat shards) in
    place, each under its partition lock, keeping its own settings; returns notes."""
    from data_prep.runfiles import lock_partition

    notes = []
    for path in legacy_manifests(folder):
        part = int(path.name[len("manifest-") : -len(".json")])
        with lock_partition(folder, part):
            if not path.exists():
                continue  # its partition's run migrated it meanwhile
            old = json.loads(path.read_text())
            header = {k: old.get(k) for k in ("part_count", "settings", "fingerprint")}
            header |= {"version": VERSION, "part_index": part, "assignment": "round-robin"}
            if header["fingerprint"] is None:
                header.pop("fingerprint")
            notes += migrate_partition(folder, part, header)
    return notes


def _id_hashes(ids) -> np.ndarray:
    import hashlib

    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
            for i in ids
        ),
        dtype=np.uint64,
    )


def duplicate_ids(folder: Path) -> dict[str, list[int]]:
    """Object id -> partitions holding it done, for ids done in more than one partition."""
    paths = partition_records(folder)
    hashes, owners = [], []
    for index, path in enumerate(paths):
        done = PartitionState.read(path).done
        hashes.append(_id_hashes(done))
        owners.append(np.full(len(done), index, dtype=np.int32))
    if not hashes:
        return {}
    flat, owner = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(flat, kind="stable")
    flat, owner = flat[order], owner[order]
    repeated = flat[1:] == flat[:-1]
    colliding = set(flat[1:][repeated].tolist())
    if not colliding:
        return {}
    suspects = sorted({int(o) for o, h in zip(owner, flat) if int(h) in colliding})
    holders: dict[str, list[int]] = {}
    for index in suspects:
        state = PartitionState.read(paths[index])
        for object_id, value in zip(state.done, _id_hashes(state.done)):
            if int(value) in colliding:
                holders.setdefault(object_id, []).append(state.header["part_index"])
    return {i: parts for i, parts in holders.items() if len(parts) > 1}


def drop_duplicates(folder: Path) -> list[str]:
    """Objects done in more than one partition keep their first copy (lowest partition); the
    others are removed from their shards, and a ``rewritten`` (or ``gone``) record is appended
    to that partition's records. Returns what was dropped."""
    from data_prep.manifest import Manifest
    from data_prep.runfiles import lock_partition

    notes = []
    by_part: dict[int, set[str]] = {}
    for object_id, parts in duplicate_ids(folder).items():
        for part in sorted(parts)[1:]:
            by_part.setdefault(part, set()).add(object_id)
    for part, ids in sorted(by_part.items()):
        with lock_partition(folder, part):
            header = PartitionState.read(records_path(folder, part)).header
            manifest = Manifest(
                folder, part, header["part_count"], header["settings"], reconcile=False
            )
            for object_id in sorted(ids):
                shard = manifest.done[object_id]
                size = drop_from_shard(manifest.dir, shard, {object_id})
                if size:
                    kept = [i for i in manifest.shards[shard]["ids"] if i != object_id]
                    views = views_per_object(manifest.dir / shard)
                    manifest._append(
                        {"rewritten": shard, "ids": kept, "bytes": size} | {"views": views}
                    )
                else:
                    manifest._append({"gone": shard})
                notes.append(f"dropped duplicate {object_id} from part-{part:03d}/{shard}")
            manifest.close()
    return notes


def merge(
    folder: str | Path,
    deep: bool = False,
    drop_duplicate_objects: bool = False,
    check_files: bool = True,
) -> tuple[dict, list[str]]:
    """Stream every partition's records into ``manifest.jsonl`` and totals into
    ``manifest.json``; returns (totals, problems). ``deep`` also opens every shard;
    ``check_files=False`` skips the file checks (records-only simulations)."""
    folder = Path(folder)
    migrated = migrate_folder(folder)
    dropped = drop_duplicates(folder) if drop_duplicate_objects else []
    problems: list[str] = []
    paths = partition_records(folder)
    if not paths and not problems:
        problems.append(f"no part-PPP/records.jsonl in {folder}")
    totals = Counter()
    reasons: Counter = Counter()
    views: Counter = Counter()
    parts, counts = [], set()
    tmp = folder / "manifest.jsonl.tmp"
    with open(tmp, "w") as out:
        for path in paths:
            state = PartitionState.read(path)
            part = state.header["part_index"]
            parts.append(part)
            counts.add(state.header["part_count"])
            on_disk = {p.name: p for p in list_shards(path.parent)} if check_files else {}
            for name, info in sorted(state.shards.items()):
                relative = f"{path.parent.name}/{name}"
                out.write(json.dumps({"shard": relative, "part": part} | info) + "\n")
                totals["shards"] += 1
                totals["bytes"] += info.get("bytes", 0)
                views.update({int(k): n for k, n in info.get("views", {}).items()})
                if not check_files:
                    continue
                if name not in on_disk:
                    problems.append(f"shard {relative} is listed but missing")
                elif on_disk[name].stat().st_size != info.get("bytes"):
                    problems.append(f"shard {relative} has changed size since it was written")
                elif deep and sorted(shard_ids(on_disk[name])) != sorted(info["ids"]):
                    problems.append(f"shard {relative} holds other objects than its records list")
            for name in sorted(set(on_disk) - set(state.shards)):
                problems.append(
                    f"shard {path.parent.name}/{name} is in no record (rerun its partition "
                    "to adopt it)"
                )
            for object_id, info in sorted(state.failed.items()):
                if object_id not in state.done:
                    out.write(json.dumps({"failed": object_id, "part": part} | info) + "\n")
                    reasons[info.get("reason", "unknown")] += 1
            totals["done"] += len(state.done)
            totals["objects_with_warnings"] += len(state.warnings)
            totals["listed"] += state.listed
    os.replace(tmp, folder / "manifest.jsonl")
    for object_id, holders in sorted(duplicate_ids(folder).items()):
        problems.append(f"{object_id} is done twice (partitions {holders})")
    if len(counts) > 1:
        problems.append(f"partitions disagree on the partition count: {sorted(counts)}")
    elif counts:
        missing = sorted(set(range(counts.pop())) - set(parts))
        if missing:
            problems.append(f"no records yet for partitions {missing}")
    merged = {
        "version": VERSION,
        "parts": parts,
        **{key: totals[key] for key in ("listed", "done", "shards", "bytes")},
        "objects_with_warnings": totals["objects_with_warnings"],
        "failed": sum(reasons.values()),
        "failures_by_reason": dict(reasons.most_common()),
        "views": sum(v * n for v, n in views.items()),
        "views_per_object": dict(sorted(views.items())),
        "dropped": dropped,
        "migrated": migrated,
        "problems": problems,
        "records": "manifest.jsonl",
    }
    tmp_json = folder / "manifest.json.tmp"
    tmp_json.write_text(json.dumps(merged, indent=1, sort_keys=True))
    os.replace(tmp_json, folder / "manifest.json")
    return merged, problems


def merged_done(folder: str | Path) -> dict[str, str]:
    """Object id -> ``part-PPP/shard`` from a merged ``manifest.jsonl`` (small folders, tests:
    at scale, stream the file instead)."""
    done = {}
    with open(Path(folder) / "manifest.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            for object_id in record.get("ids", []):
                done[object_id] = record["shard"]
    return done

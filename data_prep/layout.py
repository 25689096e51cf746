"""Where a render run keeps its files, and how a folder of the earlier layout is migrated.

Layout (version 3), one folder per partition, so no directory holds every shard of a 10M-object
run and a partition's start-up reads only its own files::

    OUT/part-PPP/records.jsonl        append-only records of partition PPP (data_prep.manifest)
    OUT/part-PPP/shard-PPP-NNNNNN.tar complete shards
    OUT/manifest.jsonl, manifest.json the streamed merge (data_prep.merge)

Objects are assigned to partitions by a stable hash of their id (``assignment: hash`` in each
partition's header), so a grown ``count`` never moves an object to another partition and no
partition needs to read the others' records. A folder of the earlier layout (``manifest-PPP.json``
beside flat ``shard-PPP-*.tar``) is migrated when its partition next starts: records are written
from the old manifest, its shards moved into ``part-PPP/``, and the old manifest kept as
``manifest-PPP.json.migrated``; such a folder keeps round-robin assignment (``assignment:
round-robin``), so its objects stay where they were rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
LEGACY_RE = re.compile(r"^manifest-(\d{3})\.json$")
PART_RE = re.compile(r"^part-(\d{3})$")


def part_dir(folder: str | Path, part: int) -> Path:
    return Path(folder) / f"part-{part:03d}"


def records_path(folder: str | Path, part: int) -> Path:
    return part_dir(folder, part) / "records.jsonl"


def legacy_manifests(folder: str | Path) -> list[Path]:
    """``manifest-PPP.json`` files of the earlier layout not migrated yet."""
    return sorted(p for p in Path(folder).glob("manifest-[0-9][0-9][0-9].json"))


def partition_records(folder: str | Path) -> list[Path]:
    """Every partition's records file in ``folder``, sorted by partition."""
    found = [p / "records.jsonl" for p in Path(folder).glob("part-[0-9][0-9][0-9]")]
    return sorted(p for p in found if p.is_file())


def read_header(path: Path) -> dict:
    """The first record (the partition's header) without reading the rest of the file."""
    with open(path, "rb") as handle:
        return json.loads(handle.readline())["header"]


def hash_bucket(object_id: str, count: int) -> int:
    digest = hashlib.sha256(object_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


def assign(items: list[T], index: int, count: int, assignment: str, key=lambda r: r.id) -> list[T]:
    """This partition's share of ``items``: by hash of the id, or round-robin (earlier runs)."""
    if assignment == "round-robin":
        from data_prep.partition import take_partition

        return take_partition(items, index, count)
    return [item for item in items if hash_bucket(key(item), count) == index]


def folder_assignment(folder: str | Path) -> str:
    """How this folder splits objects: ``round-robin`` when it holds (or held) the earlier
    layout, else ``hash``. Reads one header at most."""
    folder = Path(folder)
    if legacy_manifests(folder):
        return "round-robin"
    for path in partition_records(folder):
        return read_header(path).get("assignment", "hash")
    return "hash"


def migrate_partition(folder: Path, part: int, header: dict) -> list[str]:
    """Turn partition ``part`` of the earlier layout into the current one (see the module
    docstring); safe to repeat after a kill at any point. Returns notes."""
    legacy = folder / f"manifest-{part:03d}.json"
    if not legacy.exists():
        return []
    old = json.loads(legacy.read_text())
    target = part_dir(folder, part)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "records.jsonl.migrating"
    with open(tmp, "w") as handle:
        handle.write(json.dumps({"header": header}) + "\n")
        warnings = old.get("warnings", {})
        for name, info in sorted(old.get("shards", {}).items()):
            record = {"shard": name, "ids": info["ids"], "bytes": info["bytes"]}
            record |= {"views": info.get("views", {})}
            record["warnings"] = {i: warnings[i] for i in info["ids"] if i in warnings}
            handle.write(json.dumps(record) + "\n")
        for object_id, info in sorted(old.get("failed", {}).items()):
            handle.write(json.dumps({"failed": object_id} | info) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    moved = 0
    for shard in folder.glob(f"shard-{part:03d}-*.tar"):
        os.replace(shard, target / shard.name)
        moved += 1
    for partial in folder.glob(f"shard-{part:03d}-*.tar.tmp"):
        partial.unlink()
    os.replace(tmp, target / "records.jsonl")
    os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))
    return [f"migrated {legacy.name} and {moved} shards into {target.name}/"]

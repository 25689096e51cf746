"""The run manifest: which objects are done (and in which shard), which failed and why.

One file per partition, ``manifest-PPP.json``, rewritten atomically after every completed shard
(failures are saved with it, or every 30 s), so several machines can share one output folder.
On start-up the manifest is reconciled with the folder: a complete shard the manifest does not
list yet (the run was killed between rename and manifest write) is adopted, stale ``.tmp``
shards are deleted. ``merge`` combines the partitions' manifests into ``manifest.json`` and
checks them against the shards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from data_prep.shards import SHARD_RE, list_shards, shard_ids

VERSION = 1


def manifest_path(folder: str | Path, part: int) -> Path:
    return Path(folder) / f"manifest-{part:03d}.json"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Manifest:
    def __init__(self, folder: str | Path, part: int, part_count: int, settings: dict):
        self.folder, self.part = Path(folder), part
        self.path = manifest_path(folder, part)
        self._saved_at = 0.0
        self.data = {
            "version": VERSION,
            "part_index": part,
            "part_count": part_count,
            "settings": settings,
            "listed": 0,
            "done": {},
            "failed": {},
            "warnings": {},
            "shards": {},
        }
        if self.path.exists():
            old = json.loads(self.path.read_text())
            for key, value in settings.items():
                if key in old.get("settings", {}) and old["settings"][key] != value:
                    raise ValueError(
                        f"{self.path} was written with {key}={old['settings'][key]!r}, this run "
                        f"has {key}={value!r}: use another --out or the same settings to resume"
                    )
            self.data.update({k: old[k] for k in ("done", "failed", "warnings", "shards")})
        self.reconcile()

    @property
    def done(self) -> dict[str, str]:
        return self.data["done"]

    @property
    def failed(self) -> dict[str, dict]:
        return self.data["failed"]

    def next_shard_index(self) -> int:
        indices = [
            int(SHARD_RE.match(p.name).group(2)) for p in list_shards(self.folder, self.part)
        ]
        return max(indices, default=-1) + 1

    def reconcile(self) -> list[str]:
        """Bring the manifest in line with the shard files on disk; returns what was changed."""
        notes = []
        for tmp in self.folder.glob(f"shard-{self.part:03d}-*.tar.tmp"):
            tmp.unlink()
            notes.append(f"removed partial shard {tmp.name}")
        on_disk = {p.name: p for p in list_shards(self.folder, self.part)}
        for name in list(self.data["shards"]):
            if name not in on_disk:
                ids = self.data["shards"].pop(name)["ids"]
                for object_id in ids:
                    self.done.pop(object_id, None)
                notes.append(f"shard {name} is gone: its {len(ids)} objects will render again")
        for name, path in on_disk.items():
            if name not in self.data["shards"]:
                self.add_shard(name, shard_ids(path), save=False)
                notes.append(f"adopted complete shard {name} missing from the manifest")
        if notes:
            self.save()
        return notes

    def add_shard(self, name: str, ids: list[str], save: bool = True) -> None:
        size = (self.folder / name).stat().st_size
        self.data["shards"][name] = {"ids": ids, "bytes": size}
        for object_id in ids:
            self.done[object_id] = name
            self.failed.pop(object_id, None)
        if save:
            self.save()

    def add_failure(self, object_id: str, reason: str, detail: str) -> None:
        """Record a failure; saved with the next shard or :meth:`save_if_due` (a failure lost to
        a kill only means the object is tried again)."""
        attempts = self.failed.get(object_id, {}).get("attempts", 0) + 1
        self.failed[object_id] = {"reason": reason, "detail": detail, "attempts": attempts}

    def save_if_due(self, every_s: float = 30.0) -> None:
        if time.monotonic() - self._saved_at > every_s:
            self.save()

    def add_warnings(self, object_id: str, warnings: list[str]) -> None:
        if warnings:
            self.data["warnings"][object_id] = warnings

    def save(self, listed: int | None = None) -> None:
        if listed is not None:
            self.data["listed"] = listed
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.path, self.data)
        self._saved_at = time.monotonic()


def merge(folder: str | Path, deep: bool = False) -> tuple[dict, list[str]]:
    """Merge every ``manifest-PPP.json`` in ``folder`` into ``manifest.json``; returns the merged
    manifest and a list of problems (empty when the folder is consistent). ``deep`` also opens
    each shard and compares its objects with the manifest."""
    folder = Path(folder)
    merged = {
        "version": VERSION,
        "parts": [],
        "done": {},
        "failed": {},
        "warnings": {},
        "shards": {},
    }
    problems = []
    parts = sorted(folder.glob("manifest-[0-9][0-9][0-9].json"))
    if not parts:
        problems.append(f"no manifest-PPP.json in {folder}")
    counts = set()
    for path in parts:
        data = json.loads(path.read_text())
        merged["parts"].append(data["part_index"])
        counts.add(data["part_count"])
        for object_id, shard in data["done"].items():
            if object_id in merged["done"]:
                problems.append(f"{object_id} is done twice ({merged['done'][object_id]}, {shard})")
            merged["done"][object_id] = shard
        merged["failed"].update(data["failed"])
        merged["warnings"].update(data.get("warnings", {}))
        merged["shards"].update(data["shards"])
    if len(counts) > 1:
        problems.append(f"partitions disagree on the partition count: {sorted(counts)}")
    elif counts:
        missing = sorted(set(range(counts.pop())) - set(merged["parts"]))
        if missing:
            problems.append(f"no manifest yet for partitions {missing}")
    on_disk = {p.name for p in list_shards(folder)}
    for name, info in merged["shards"].items():
        if name not in on_disk:
            problems.append(f"shard {name} is listed but missing")
        elif (folder / name).stat().st_size != info["bytes"]:
            problems.append(f"shard {name} has changed size since it was written")
        elif deep and sorted(shard_ids(folder / name)) != sorted(info["ids"]):
            problems.append(f"shard {name} holds other objects than the manifest lists")
    for name in sorted(on_disk - set(merged["shards"])):
        problems.append(f"shard {name} is not in any manifest (rerun its partition to adopt it)")
    merged["problems"] = problems
    write_json_atomic(folder / "manifest.json", merged)
    return merged, problems

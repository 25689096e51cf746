"""The run manifest: which objects are done (and in which shard), which failed and why.

One file per partition, ``manifest-PPP.json``, rewritten atomically after every completed shard
(failures are saved with it, or every 30 s), so several machines can share one output folder.
On start-up the manifest is reconciled with the folder: a complete shard the manifest does not
list yet (the run was killed between rename and manifest write) is adopted, stale ``.tmp``
shards are deleted. ``merge`` combines the partitions' manifests into ``manifest.json`` and
checks them against the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections import Counter
from pathlib import Path

from data_prep.config import upgrade_settings
from data_prep.shards import SHARD_RE, list_shards, shard_ids

VERSION = 2
# Failure reasons a rerun with --retry-failed tries again (each at most max_attempts times in
# all): the machine, the network or a busy node may have caused them. Every other reason
# (corrupt_file, no_mesh, draco, degenerate_bounds, unsupported_format, empty_view) comes from
# the file itself and would fail the same way again.
RETRYABLE = ("timeout", "worker_crashed", "download_failed", "render_error")


def retryable(failure: dict, max_attempts: int) -> bool:
    """Whether a recorded failure ``{reason, attempts}`` is worth another try."""
    return failure.get("reason") in RETRYABLE and failure.get("attempts", 1) < max_attempts


def fingerprint(settings: dict) -> str:
    """One hash of every pixel-changing setting (``RenderConfig.pixel_settings``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _differences(path: Path, old: dict, new: dict) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            return (
                f"{path} was written with {key}={old.get(key, '<unset>')!r}, this run has "
                f"{key}={new.get(key, '<unset>')!r}: use another --out or the same settings to "
                "resume (every setting that changes the pixels must match)"
            )
    return None


def _same_settings(old: dict, settings: dict) -> bool:
    """Whether a manifest ``old`` was written with ``settings`` (keys added since then count
    with their old values: :func:`data_prep.config.upgrade_settings`)."""
    if "fingerprint" not in old:
        return False
    if old["fingerprint"] == fingerprint(settings):
        return True
    upgraded = upgrade_settings(old.get("settings", {}))
    return fingerprint(upgraded) == fingerprint(upgrade_settings(settings))


def _refusal(path: Path, old: dict, settings: dict) -> str:
    if "fingerprint" not in old:
        return (
            f"{path} was written by an older renderer (no settings fingerprint): "
            "render into another --out"
        )
    upgraded = upgrade_settings(old.get("settings", {}))
    return _differences(path, upgraded, upgrade_settings(settings)) or f"{path}: other settings"


def check_folder(folder: Path, part_count: int, settings: dict) -> None:
    """Refuse to add to a folder whose partitions were rendered with another partition layout
    or other pixel settings (each partition's manifest records both)."""
    for path in sorted(folder.glob("manifest-[0-9][0-9][0-9].json")):
        old = json.loads(path.read_text())
        if old.get("part_count", part_count) != part_count:
            raise ValueError(
                f"{folder} is split into {old['part_count']} partitions ({path.name}), this run "
                f"into {part_count}: a different layout would render objects twice; use the same "
                "--part-count (SLURM array size, WORLD_SIZE) or another --out"
            )
        if "fingerprint" not in old:
            raise ValueError(
                f"{path} was written by an older renderer that recorded no settings fingerprint "
                "(other framing and pixel settings): render into another --out"
            )
        if not _same_settings(old, settings):
            raise ValueError(_refusal(path, old, settings))


def tar_views(path: Path) -> dict[str, int]:
    """``{views per object: objects}`` of one shard, from its member names (nothing decoded)."""
    with tarfile.open(path) as tar:
        names = [m.name for m in tar if m.name.endswith(".png")]
    per_key = Counter(name.rsplit("/", 1)[-1].split(".", 1)[0] for name in names)
    return {str(k): v for k, v in sorted(Counter(per_key.values()).items())}


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
            "fingerprint": fingerprint(settings),
            "listed": 0,
            "done": {},
            "failed": {},
            "warnings": {},
            "shards": {},
        }
        if self.path.exists():
            old = json.loads(self.path.read_text())
            if not _same_settings(old, settings):
                raise ValueError(_refusal(self.path, old, settings))
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
                self.add_shard(name, shard_ids(path), tar_views(path), save=False)
                notes.append(f"adopted complete shard {name} missing from the manifest")
        if notes:
            self.save()
        return notes

    def add_shard(
        self, name: str, ids: list[str], views: dict[str, int] | None = None, save: bool = True
    ) -> None:
        """``views``: ``{views per object: objects}`` (lets summaries count without decoding)."""
        size = (self.folder / name).stat().st_size
        views = views if views is not None else tar_views(self.folder / name)
        self.data["shards"][name] = {"ids": ids, "bytes": size, "views": views}
        for object_id in ids:
            self.done[object_id] = name
            self.failed.pop(object_id, None)
        if save:
            self.save()

    def add_failure(self, object_id: str, reason: str, detail: str, tries: int = 1) -> None:
        """Record a failure after ``tries`` attempts in this run (the pool's own retries); saved
        with the next shard or :meth:`save_if_due` (a failure lost to a kill only means the
        object is tried again)."""
        attempts = self.failed.get(object_id, {}).get("attempts", 0) + tries
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


def drop_from_shard(folder: Path, name: str, object_ids: set[str]) -> int:
    """Rewrite shard ``name`` without the samples of ``object_ids`` (atomically: ``.tmp`` then
    rename); deletes the shard when nothing is left. Returns its new size in bytes (0 if gone)."""
    path = folder / name
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        keys = {
            m.name.split(".", 1)[0]
            for m in members
            if m.name.endswith(".meta.json") and json.load(tar.extractfile(m))["id"] in object_ids
        }
        kept = [m for m in members if m.name.split(".", 1)[0] not in keys]
        if not any(m.name.endswith(".meta.json") for m in kept):
            path.unlink()
            return 0
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as out:
            for member in kept:
                out.addfile(member, tar.extractfile(member))
    os.replace(tmp, path)
    return path.stat().st_size


def drop_duplicates(folder: Path) -> list[str]:
    """Objects done in more than one partition keep their first copy (lowest partition, then
    shard); the others are removed from their shards and manifests. Returns what was dropped."""
    from data_prep.runfiles import lock_partition

    seen, notes = {}, []
    for path in sorted(folder.glob("manifest-[0-9][0-9][0-9].json")):
        data = json.loads(path.read_text())
        extra = {}
        for object_id, shard in sorted(data["done"].items(), key=lambda item: item[1]):
            if object_id in seen:
                extra.setdefault(shard, set()).add(object_id)
            else:
                seen[object_id] = shard
        if not extra:
            continue
        with lock_partition(folder, data["part_index"]):
            data = json.loads(path.read_text())
            for shard, ids in sorted(extra.items()):
                size = drop_from_shard(folder, shard, ids)
                info = data["shards"].pop(shard)
                if size:
                    info["ids"] = [i for i in info["ids"] if i not in ids]
                    info["bytes"], info["views"] = size, tar_views(folder / shard)
                    data["shards"][shard] = info
                for object_id in sorted(ids):
                    data["done"].pop(object_id, None)
                    notes.append(
                        f"dropped duplicate {object_id} from {shard} (kept {seen[object_id]})"
                    )
            write_json_atomic(path, data)
    return notes


def merge(
    folder: str | Path, deep: bool = False, drop_duplicate_objects: bool = False
) -> tuple[dict, list[str]]:
    """Merge every ``manifest-PPP.json`` in ``folder`` into ``manifest.json``; returns the merged
    manifest and a list of problems (empty when the folder is consistent). ``deep`` also opens
    each shard and compares its objects with the manifest; ``drop_duplicate_objects`` first
    removes second copies of objects done twice (see :func:`drop_duplicates`)."""
    folder = Path(folder)
    dropped = drop_duplicates(folder) if drop_duplicate_objects else []
    merged = {
        "version": VERSION,
        "parts": [],
        "done": {},
        "failed": {},
        "warnings": {},
        "shards": {},
        "dropped": dropped,
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

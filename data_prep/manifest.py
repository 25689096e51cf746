"""The run manifest: which objects are done (and in which shard), which failed and why.

One append-only file per partition, ``OUT/part-PPP/records.jsonl`` (layout: data_prep.layout):
its first line is the header (partition, partition count, settings and their fingerprint, how
objects are assigned), then one JSON line per event, never rewritten:

    {"shard": NAME, "ids": [...], "bytes": N, "views": {views per object: objects},
     "warnings": {id: [...]}}                      a complete shard (its ids are done)
    {"failed": ID, "reason": R, "detail": D, "attempts": N}
    {"listed": N}                                  objects in this partition's list
    {"gone": NAME}                                 a listed shard vanished: its ids render again
    {"rewritten": NAME, "ids": [...], "bytes": N, "views": {...}}   after --drop-duplicates

A shard's record is appended and fsynced when the shard is renamed into place (about 1 KB per
64 objects, instead of rewriting the whole manifest: ~90 MB 12,500 times at 800K objects);
failures are flushed at once and fsynced with the next shard or every 30 s. Start-up replays
only this partition's file (a line cut short by a kill is dropped) and reconciles it with the
partition's folder: a complete shard without a record (killed between rename and append) is
adopted, stale ``.tmp`` shards are deleted. ``data_prep.merge`` streams all partitions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from data_prep.config import upgrade_settings
from data_prep.layout import (
    legacy_manifests,
    migrate_partition,
    part_dir,
    partition_records,
    read_header,
    records_path,
)
from models.shards.format import (
    META,
    SHARD_RE,
    list_shards,
    shard_ids,
    split_member,
    views_per_object,
)

VERSION = 3
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


def recorded_part_count(folder: Path) -> int | None:
    """The partition count the folder's partitions record (None for a new folder)."""
    headers = [json.loads(path.read_text()) for path in legacy_manifests(folder)]
    headers += [read_header(path) for path in partition_records(folder)]
    counts = [int(h["part_count"]) for h in headers if h.get("part_count")]
    return counts[0] if counts else None


def check_folder(folder: Path, part_count: int, settings: dict) -> None:
    """Refuse to add to a folder whose partitions were rendered with another partition layout
    or other pixel settings (each partition's header, or old manifest, records both). Reads
    only the first line of each partition's records."""
    headers = [(path, json.loads(path.read_text())) for path in legacy_manifests(folder)]
    headers += [(path, read_header(path)) for path in partition_records(folder)]
    for path, old in headers:
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


def read_records(path: Path) -> Iterator[dict]:
    """The records of one partition file, header first; a last line cut short by a kill (no
    newline, or not JSON) is skipped."""
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a torn write from a killed process: its event is lost, not the file


class PartitionState:
    """A partition's records replayed into dictionaries (memory in proportion to the partition,
    never to the whole run)."""

    def __init__(self) -> None:
        self.header: dict = {}
        self.listed = 0
        self.shards: dict[str, dict] = {}
        self.done: dict[str, str] = {}
        self.failed: dict[str, dict] = {}
        self.warnings: dict[str, list[str]] = {}

    def apply(self, record: dict) -> None:
        if "shard" in record or "rewritten" in record:
            name = record.get("shard") or record["rewritten"]
            for object_id in self.shards.get(name, {}).get("ids", []):
                if self.done.get(object_id) == name:
                    self.done.pop(object_id)
            info = {k: record[k] for k in ("ids", "bytes", "views") if k in record}
            self.shards[name] = info
            for object_id in record["ids"]:
                self.done[object_id] = name
                self.failed.pop(object_id, None)
            self.warnings.update(record.get("warnings", {}))
        elif "failed" in record:
            info = {k: v for k, v in record.items() if k != "failed"}
            self.failed[record["failed"]] = info
        elif "gone" in record:
            for object_id in self.shards.pop(record["gone"], {}).get("ids", []):
                self.done.pop(object_id, None)
                self.warnings.pop(object_id, None)
        elif "listed" in record:
            self.listed = record["listed"]
        elif "header" in record:
            self.header = record["header"]

    @classmethod
    def read(cls, path: Path) -> PartitionState:
        state = cls()
        for record in read_records(path):
            state.apply(record)
        return state


class Manifest:
    """One partition's records: replayed on open, appended to as the run goes."""

    def __init__(
        self,
        folder: str | Path,
        part: int,
        part_count: int,
        settings: dict,
        assignment: str = "hash",
        reconcile: bool = True,
    ):
        self.folder, self.part = Path(folder), part
        self.dir = part_dir(folder, part)
        self.path = records_path(folder, part)
        self._saved_at = time.monotonic()
        header = {
            "version": VERSION,
            "part_index": part,
            "part_count": part_count,
            "settings": settings,
            "fingerprint": fingerprint(settings),
            "assignment": assignment,
        }
        legacy = self.folder / f"manifest-{part:03d}.json"
        if legacy.exists():
            old = json.loads(legacy.read_text())
            if not _same_settings(old, settings):
                raise ValueError(_refusal(legacy, old, settings))
            migrate_partition(self.folder, part, header | {"assignment": "round-robin"})
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_torn_tail()
            self.state = PartitionState.read(self.path)
            if not _same_settings(self.state.header, settings):
                raise ValueError(_refusal(self.path, self.state.header, settings))
        else:
            self.state = PartitionState()
            self.state.header = header
            with open(self.path, "w") as handle:
                handle.write(json.dumps({"header": header}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self._log = open(self.path, "a")
        self._pending_warnings: dict[str, list[str]] = {}
        if reconcile:
            self.reconcile()

    def _truncate_torn_tail(self) -> None:
        """Cut a last line without newline (a kill mid-append) so appends start clean."""
        with open(self.path, "rb+") as handle:
            data_end = handle.seek(0, os.SEEK_END)
            if data_end == 0:
                return
            handle.seek(max(0, data_end - 1))
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            content = handle.read()
            handle.truncate(content.rfind(b"\n") + 1)

    @property
    def assignment(self) -> str:
        return self.state.header.get("assignment", "hash")

    @property
    def done(self) -> dict[str, str]:
        return self.state.done

    @property
    def failed(self) -> dict[str, dict]:
        return self.state.failed

    @property
    def shards(self) -> dict[str, dict]:
        return self.state.shards

    def _append(self, record: dict, sync: bool = False) -> None:
        self.state.apply(record)
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        if sync:
            self.save()

    def next_shard_index(self) -> int:
        names = set(self.shards) | {p.name for p in list_shards(self.dir, self.part)}
        indices = [int(SHARD_RE.match(name).group(2)) for name in names if SHARD_RE.match(name)]
        return max(indices, default=-1) + 1

    def reconcile(self) -> list[str]:
        """Bring the records in line with the shard files on disk; returns what was changed."""
        notes = []
        for tmp in self.dir.glob(f"shard-{self.part:03d}-*.tar.tmp"):
            tmp.unlink()
            notes.append(f"removed partial shard {tmp.name}")
        on_disk = {p.name: p for p in list_shards(self.dir, self.part)}
        for name in list(self.shards):
            if name not in on_disk:
                count = len(self.shards[name].get("ids", []))
                self._append({"gone": name})
                notes.append(f"shard {name} is gone: its {count} objects will render again")
        for name, path in sorted(on_disk.items()):
            if name not in self.shards:
                self.add_shard(name, shard_ids(path), views_per_object(path), sync=False)
                notes.append(f"adopted complete shard {name} missing from the records")
        if notes:
            self.save()
        return notes

    def add_shard(
        self,
        name: str,
        ids: list[str],
        views: dict[str, int] | None = None,
        sync: bool = True,
        size: int | None = None,
    ) -> None:
        """``views``: ``{views per object: objects}`` (lets summaries count without decoding);
        ``size``: the shard's bytes (default: read from the file)."""
        path = self.dir / name
        size = size if size is not None else path.stat().st_size
        views = views if views is not None else views_per_object(path)
        warnings = {i: self._pending_warnings.pop(i) for i in ids if i in self._pending_warnings}
        record = {"shard": name, "ids": ids, "bytes": size, "views": views}
        self._append(record | ({"warnings": warnings} if warnings else {}), sync=sync)

    def add_failure(self, object_id: str, reason: str, detail: str, tries: int = 1) -> None:
        """Record a failure after ``tries`` attempts in this run (the pool's own retries);
        flushed now, fsynced with the next shard or :meth:`save_if_due` (a failure lost to a
        crash of the machine only means the object is tried again)."""
        attempts = self.failed.get(object_id, {}).get("attempts", 0) + tries
        record = {"failed": object_id, "reason": reason, "detail": detail, "attempts": attempts}
        self._append(record)

    def add_warnings(self, object_id: str, warnings: list[str]) -> None:
        """Kept until the object's shard record is written (objects not in a shard need none)."""
        if warnings:
            self._pending_warnings[object_id] = warnings

    def save_if_due(self, every_s: float = 30.0) -> None:
        if time.monotonic() - self._saved_at > every_s:
            self.save()

    def save(self, listed: int | None = None) -> None:
        if listed is not None and listed != self.state.listed:
            self._append({"listed": listed})
        self._log.flush()
        os.fsync(self._log.fileno())
        self._saved_at = time.monotonic()

    def close(self) -> None:
        if not self._log.closed:
            self.save()
            self._log.close()


def done_elsewhere(folder: Path, part: int) -> set[str]:
    """Objects other partitions hold, for folders with round-robin assignment only (a grown
    count moves objects between partitions there; hash assignment never moves them, so a
    partition of such a folder never reads the others)."""
    done: set[str] = set()
    for path in partition_records(folder):
        if path != records_path(folder, part):
            done |= set(PartitionState.read(path).done)
    return done


def drop_from_shard(folder: Path, name: str, object_ids: set[str]) -> int:
    """Rewrite shard ``name`` without the samples of ``object_ids`` (atomically: ``.tmp`` then
    rename); deletes the shard when nothing is left. Returns its new size in bytes (0 if gone)."""
    path = folder / name
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        metas = [m for m in members if split_member(m.name)[1] == META]
        keys = {
            split_member(m.name)[0]
            for m in metas
            if json.load(tar.extractfile(m))["id"] in object_ids
        }
        kept = [m for m in members if split_member(m.name)[0] not in keys]
        if not any(split_member(m.name)[1] == META for m in kept):
            path.unlink()
            return 0
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as out:
            for member in kept:
                out.addfile(member, tar.extractfile(member))
    os.replace(tmp, path)
    return path.stat().st_size


def read_partition(folder: str | Path, part: int = 0) -> dict:
    """One partition's replayed records as a dictionary (``header, listed, done, failed,
    warnings, shards``): for inspection and tests; a run uses :class:`Manifest`."""
    state = PartitionState.read(records_path(folder, part))
    return {key: getattr(state, key) for key in ("header", "listed", "done", "failed")} | {
        "warnings": state.warnings,
        "shards": state.shards,
    }

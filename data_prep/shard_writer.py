"""Atomic shard writing for a render run (the format itself: models/shards/format.py).

A shard is written as ``shard-PPP-NNNNNN.tar.tmp`` and renamed to ``.tar`` only once complete and
flushed to disk, so a reader never sees a partial shard: a run killed mid-shard leaves a ``.tmp``
that the next run deletes (its objects were never marked done, so they render again).
"""

from __future__ import annotations

import os
from pathlib import Path

from models.shards.format import list_shards, shard_name


def select_objects(folder: str | Path, keys: list[str] | tuple[str, ...], out: str | Path) -> Path:
    """One shard in ``out`` holding the objects ``keys`` of the shards in ``folder``, in that
    order and with their bytes unchanged (an SDS input, a small training set). Kept when it is
    already there (a rerun); a key that ``folder`` lacks is a KeyError naming it, an ``out`` that
    holds other objects a ValueError."""
    import webdataset as wds

    out = Path(out)
    done = [str(path) for path in list_shards(out)]
    existing = [s["__key__"] for s in wds.WebDataset(done, shardshuffle=False)] if done else []
    if existing == list(keys):
        return out
    if existing:
        raise ValueError(f"{out} already holds {existing}, not {list(keys)}: choose another folder")
    urls = [str(path) for path in list_shards(folder)]
    if not urls:
        raise FileNotFoundError(f"no complete shards (shard-PPP-NNNNNN.tar) in {folder}")
    chosen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if sample["__key__"] in keys:
            chosen[sample["__key__"]] = sample
    missing = [key for key in keys if key not in chosen]
    if missing:
        raise KeyError(f"{folder} has no object {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, part=0, shard_size=len(keys))
    for key in keys:
        fields = {k: v for k, v in chosen[key].items() if not k.startswith("__") or k == "__key__"}
        writer.add(fields, key)
    return out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """Collects samples into shards of ``shard_size`` objects; :meth:`add` and :meth:`close`
    return ``(shard file name, [object ids])`` whenever a shard has been completed."""

    def __init__(self, folder: str | Path, part: int, shard_size: int, start_index: int = 0):
        self.folder, self.part, self.shard_size = Path(folder), part, shard_size
        self.index = start_index
        self._tar = None  # webdataset.TarWriter (imported on first use: it imports torch)
        self._file = None
        self._ids: list[str] = []

    def _tmp_path(self) -> Path:
        return self.folder / (shard_name(self.part, self.index) + ".tmp")

    def add(self, sample: dict, object_id: str) -> tuple[str, list[str]] | None:
        if self._tar is None:
            import webdataset as wds

            self._file = open(self._tmp_path(), "wb")
            self._tar = wds.TarWriter(self._file)
        self._tar.write(sample)
        self._ids.append(object_id)
        return self.close() if len(self._ids) >= self.shard_size else None

    def close(self) -> tuple[str, list[str]] | None:
        """Finish the open shard (if any): flush, fsync, rename into place."""
        if self._tar is None:
            return None
        self._tar.close()  # closes the stream too
        tmp = self._tmp_path()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        final = self.folder / shard_name(self.part, self.index)
        os.rename(tmp, final)
        _fsync_dir(self.folder)
        done = (final.name, self._ids)
        self._tar, self._file, self._ids = None, None, []
        self.index += 1
        return done

    def discard(self) -> None:
        """Drop the open shard (used on errors): its objects were never marked done."""
        if self._tar is not None:
            self._tar.close()
            self._tmp_path().unlink(missing_ok=True)
            self._tar, self._file, self._ids = None, None, []

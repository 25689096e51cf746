"""Bad data is named, not only counted: the first time a sample (or a shard that breaks off) is
skipped, the log says which shard file, which sample key and why, and ``skipped.jsonl`` in the
run folder lists every one. The loader workers make the records (training.datamodule's
``SkipCounter``: ``batch["skips"]``); each rank names its own, so nothing is gathered across
ranks. A sample drawn again (shards are resampled) is named once per run folder: a resumed run
reads the list first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

SKIPPED_FILE = "skipped.jsonl"


def read_skipped(folder: str | Path) -> list[dict]:
    """The records of ``folder/skipped.jsonl`` (none when absent)."""
    path = Path(folder) / SKIPPED_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe(record: dict) -> str:
    """One skip as the log says it."""
    sample = f"sample {record['key']}" if record.get("key") else "the rest of the shard"
    return f"shard {record['shard']}: {sample} skipped: {record['reason']}"


class SkippedData(pl.Callback):
    """Names every new skip of a training or validation batch: one log line (stderr) and one
    line of ``folder/skipped.jsonl`` (shard, key, reason, rank, step)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.seen: set[tuple] = set()

    def setup(self, trainer: pl.Trainer, module: Any, stage: str) -> None:
        self.seen = {(r["shard"], r["key"]) for r in read_skipped(self.folder)}

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.note(trainer, batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.note(trainer, batch)

    def note(self, trainer: pl.Trainer, batch: Any) -> None:
        records = batch.get("skips") if isinstance(batch, dict) else None
        new = []
        for record in records or []:
            if (record["shard"], record["key"]) not in self.seen:
                self.seen.add((record["shard"], record["key"]))
                new.append({**record, "rank": trainer.global_rank, "step": trainer.global_step})
        if not new:
            return
        rank = f"[rank {trainer.global_rank}] " if trainer.world_size > 1 else ""
        for record in new:
            print(f"{rank}data: {describe(record)}", file=sys.stderr, flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(record) + "\n" for record in new).encode()
        # One appending write per batch: lines of several ranks never interleave mid-line.
        descriptor = os.open(self.folder / SKIPPED_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(descriptor, text)
        finally:
            os.close(descriptor)
        if len(self.seen) == len(new):  # the run's first: say where the list is
            print(
                f"{rank}data: skipped samples are listed in {self.folder / SKIPPED_FILE}",
                file=sys.stderr,
                flush=True,
            )

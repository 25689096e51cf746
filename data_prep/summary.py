"""Look at a render output folder: a summary, a contact sheet, and manifest merge/validation.

python -m data_prep.summary summary OUT [--sheet OUT/contact_sheet.png] [--objects 8]
python -m data_prep.summary merge OUT [--deep] [--drop-duplicates]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from data_prep.layout import legacy_manifests, partition_records
from data_prep.manifest import PartitionState
from data_prep.merge import merge
from models.shards.format import META, list_shards, view_name


def iter_samples(folder: str | Path) -> Iterator[dict]:
    """Decoded samples (``rgba8`` images) of every complete shard in ``folder``."""
    urls = [str(p) for p in list_shards(folder)]
    if not urls:
        return iter(())
    return iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgba8"))


def _partition_states(folder: Path) -> Iterator[PartitionState]:
    """Each partition's replayed records, one at a time (and manifests of the earlier layout)."""
    for path in partition_records(folder):
        yield PartitionState.read(path)
    for path in legacy_manifests(folder):
        old, state = json.loads(path.read_text()), PartitionState()
        state.done, state.failed = old["done"], old["failed"]
        state.shards, state.warnings = old["shards"], old.get("warnings", {})
        yield state


def summarise(folder: str | Path) -> dict:
    """Counts from the partitions' records, streamed one partition at a time (no image is
    decoded: at 800K objects decoding every PNG takes hours)."""
    folder = Path(folder)
    views, failures = Counter(), Counter()
    done = warned = failed = 0
    for state in _partition_states(folder):
        done += len(state.done)
        warned += len(state.warnings)
        for info in state.shards.values():
            views.update({int(k): n for k, n in info.get("views", {}).items()})
        for object_id, info in state.failed.items():
            if object_id not in state.done:
                failures[info["reason"]] += 1
                failed += 1
    shards = list_shards(folder)
    return {
        "shards": len(shards),
        "bytes": sum(p.stat().st_size for p in shards),
        "objects": done,
        "views": sum(v * n for v, n in views.items()),
        "views_per_object": dict(sorted(views.items())),
        "objects_with_warnings": warned,
        "failed": failed,
        "failures_by_reason": dict(failures.most_common()),
    }


def contact_sheet(
    folder: str | Path,
    out_png: str | Path,
    objects: int = 8,
    background: int = 160,
    seed: int = 0,
) -> Path:
    """A grid PNG of ``objects`` objects sampled across the shards (seeded; one row per object,
    one column per view), composited on a grey background so white and black objects both
    show. Only the chosen shards are opened."""
    shards = list_shards(folder)
    if not shards:
        raise FileNotFoundError(f"no complete shards in {folder}")
    chosen = sorted(random.Random(seed).sample(shards, min(objects, len(shards))))
    per_shard = -(-objects // len(chosen))  # ceil: a few objects from each chosen shard
    rows = []
    for shard in chosen:
        stream = wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)
        for taken, sample in enumerate(stream.decode("rgba8")):
            if taken >= per_shard or len(rows) >= objects:
                break
            count = len(sample[META]["fov_deg"])
            views = [sample[view_name(i)].astype(np.float32) / 255 for i in range(count)]
            row = [v[..., :3] * v[..., 3:] + background / 255 * (1 - v[..., 3:]) for v in views]
            rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    sheet = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    out_png = Path(out_png)
    Image.fromarray(sheet).save(out_png)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.summary", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("summary", help="print a shard summary, write a contact sheet")
    show.add_argument("folder")
    show.add_argument("--sheet", default=None, help="PNG path (default FOLDER/contact_sheet.png)")
    show.add_argument("--objects", type=int, default=8, help="rows of the contact sheet")
    check = commands.add_parser("merge", help="merge/validate the partitions' manifests")
    check.add_argument("folder")
    check.add_argument("--deep", action="store_true", help="also open every shard")
    check.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="remove second copies of objects done in two partitions (shards are rewritten)",
    )
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    if args.command == "summary":
        print(json.dumps(summarise(args.folder), indent=1))
        sheet = args.sheet or Path(args.folder) / "contact_sheet.png"
        try:
            print(f"contact sheet: {contact_sheet(args.folder, sheet, args.objects)}")
        except FileNotFoundError as error:
            print(f"no contact sheet: {error}")
        return 0
    merged, problems = merge(
        args.folder, deep=args.deep, drop_duplicate_objects=args.drop_duplicates
    )
    for note in merged["dropped"]:
        print(note)
    for note in merged["migrated"]:
        print(note)
    print(
        f"{len(merged['parts'])} partitions: {merged['done']} done, {merged['failed']} failed, "
        f"{merged['shards']} shards -> {Path(args.folder) / 'manifest.json'} (totals) and "
        f"{Path(args.folder) / 'manifest.jsonl'} (one line per shard and failure)"
    )
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Manifests that scale: append-only per-partition records, a start-up that reads only its own
partition, a streaming merge (a simulated 1M-object run), torn last lines, and folders of the
earlier layout (one JSON manifest per partition beside flat shards) migrated, never lost."""

from __future__ import annotations

import json
import os
import shutil
import time

from data_prep.config import load_config
from data_prep.layout import hash_bucket
from data_prep.manifest import Manifest, check_folder, read_partition
from data_prep.manifest_sim import simulate_records
from data_prep.merge import merge, merged_done
from data_prep.render import render, resume_settings
from data_prep.samples import SAMPLES
from data_prep.summary import summarise

FIXTURE = dict(res=32, samples=8, denoise=False, num_quads=1, num_refs=1, workers=2)
FIXTURE |= dict(shard_size=4, progress=False)  # as the rendered_shards fixture


def test_a_million_objects_start_up_reads_one_partition_and_merge_streams(tmp_path):
    config = load_config(source="samples", out=str(tmp_path), count=0, part_index=0, part_count=16)
    settings = resume_settings(config)
    started = time.perf_counter()
    done = simulate_records(tmp_path, 1_000_000, 16, settings, shard_size=64, failed_every=100)
    written = time.perf_counter() - started
    assert done == 990_000
    # a planted object done twice (partition 3 and 7)
    extra = Manifest(tmp_path, 7, 16, settings, reconcile=False)
    extra.add_shard("shard-007-999999.tar", ["obj-0000005"], {"10": 1}, size=1)
    extra.close()
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("part-*/records.jsonl"))]
    assert len(sizes) == 16 and sum(sizes) < 60e6  # ~50 bytes per object, appended once
    started = time.perf_counter()
    merged, problems = merge(tmp_path, check_files=False)
    merge_s = time.perf_counter() - started
    assert merged["done"] == done + 1 and merged["failed"] == 10_000
    assert merged["failures_by_reason"] == {"timeout": 10_000}
    holders = sorted({hash_bucket("obj-0000005", 16), 7})
    assert [p for p in problems if "done twice" in p] == [
        f"obj-0000005 is done twice (partitions {holders})"
    ]
    assert (tmp_path / "manifest.json").stat().st_size < 10_000  # totals, not a dict of ids
    lines = sum(1 for _ in open(tmp_path / "manifest.jsonl"))
    assert lines == merged["shards"] + merged["failed"]
    # start-up of partition 0 reads only its own records: make another partition's records
    # unreadable past its header (a 4 GB line: reading it would exhaust time and memory)
    other = tmp_path / "part-015" / "records.jsonl"
    with open(other, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.truncate(handle.tell() + (4 << 30))  # sparse: no disk used
    started = time.perf_counter()
    summary = render(config)  # count 0: start-up only (checks, migration, replay)
    start_up = time.perf_counter() - started
    assert summary.listed == 0 and summary.rendered == 0
    check_folder(tmp_path, 16, settings)
    print(f"1M records: written {written:.1f} s, merge {merge_s:.1f} s, start-up {start_up:.2f} s")


def test_a_torn_last_record_is_dropped_and_appends_go_on(tmp_path):
    manifest = Manifest(tmp_path, 0, 1, {"res": 1}, reconcile=False)
    manifest.add_failure("a", "timeout", "x")
    manifest.close()
    records = tmp_path / "part-000" / "records.jsonl"
    with open(records, "ab") as handle:
        handle.write(b'{"failed": "b", "reason": "tim')  # the machine died mid-append
    again = Manifest(tmp_path, 0, 1, {"res": 1}, reconcile=False)
    assert set(again.failed) == {"a"}
    again.add_failure("c", "corrupt_file", "y")
    again.close()
    assert set(read_partition(tmp_path)["failed"]) == {"a", "c"}


def _legacy_folder(rendered_shards, out):
    """``out`` as the earlier renderer left it: flat shards and one JSON manifest."""
    out.mkdir()
    state = read_partition(rendered_shards)
    for name in state["shards"]:
        shutil.copy(rendered_shards / "part-000" / name, out / name)
    header = state["header"]
    legacy = {
        "version": 2,
        "part_index": 0,
        "part_count": 1,
        "settings": header["settings"],
        "fingerprint": header["fingerprint"],
        "listed": 11,
        "done": state["done"],
        "failed": {"broken": {"reason": "corrupt_file", "detail": "bad", "attempts": 1}},
        "warnings": {"car": ["missing_texture: x.png"]},
        "shards": state["shards"],
    }
    (out / "manifest-000.json").write_text(json.dumps(legacy))
    return legacy


def test_a_folder_of_the_earlier_layout_resumes_and_merges_without_loss(rendered_shards, tmp_path):
    out = tmp_path / "old"
    legacy = _legacy_folder(rendered_shards, out)
    assert summarise(out)["objects"] == 10  # read as it is
    summary = render(load_config(source="samples", out=str(out), **FIXTURE))
    assert (summary.rendered, summary.skipped) == (0, 10)  # nothing rendered twice
    assert not list(out.glob("shard-*.tar")) and len(list(out.glob("part-000/shard-*"))) == 3
    assert (out / "manifest-000.json.migrated").exists()
    state = read_partition(out)
    assert state["done"] == legacy["done"] and state["failed"] == legacy["failed"]
    assert state["warnings"] == legacy["warnings"] and state["header"]["assignment"] == (
        "round-robin"
    )
    merged, problems = merge(out, deep=True)
    assert problems == [] and sorted(merged_done(out)) == sorted(SAMPLES)
    # the merge command migrates a folder nobody resumed
    other = tmp_path / "old2"
    _legacy_folder(rendered_shards, other)
    merged, problems = merge(other, deep=True)
    assert problems == [] and merged["migrated"] and merged["done"] == 10

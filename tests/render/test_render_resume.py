"""Kill a run part-way (a worker, then the parent), rerun: every object exactly once; and the
partition of one object list across machines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from data_prep.config import load_config
from data_prep.manifest import PartitionState
from data_prep.merge import merge, merged_done
from data_prep.partition import partition_from_env, take_partition
from data_prep.render import render
from data_prep.samples import SAMPLES
from data_prep.sources import SampleSource, choose
from models.shards.format import list_shards, shard_ids

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_sigkill_worker_and_parent_then_resume_renders_every_object_once(tmp_path):
    out = tmp_path / "out"
    flags = ["--source", "samples", "--out", str(out), "--res", "48", "--samples", "16"]
    flags += ["--no-denoise", "--num-quads", "1", "--num-refs", "1", "--workers", "2"]
    flags += ["--shard-size", "2", "--no-progress", "--device", "cpu", "--threads", "1"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "data_prep.render", *flags],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: len(list_shards(out)) >= 1, 120)  # some work is safely done
        _wait_for(lambda: len(_children(parent.pid)) == 2, 30)
        worker = _children(parent.pid)[0]
        os.kill(worker, signal.SIGKILL)  # the parent replaces it and retries its object
        _wait_for(lambda: worker not in _children(parent.pid), 10)
        workers = _children(parent.pid)
        time.sleep(0.3)
        assert parent.poll() is None, "the run ended before it could be killed"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
    _wait_for(lambda: not any(_alive(pid) for pid in workers), 10)  # no orphan renders
    killed_done = len(PartitionState.read(out / "part-000" / "records.jsonl").done)
    assert 0 < killed_done < len(SAMPLES)
    for shard in list_shards(out):  # every visible shard is complete and readable
        assert shard_ids(shard)
    summary = render(
        load_config(
            source="samples",
            out=str(out),
            res=48,
            samples=16,
            denoise=False,
            num_quads=1,
            num_refs=1,
            workers=2,
            shard_size=2,
            progress=False,
            device="cpu",
        )
    )
    assert summary.skipped >= killed_done and not summary.failed
    ids = Counter(i for shard in list_shards(out) for i in shard_ids(shard))
    assert sorted(ids) == sorted(SAMPLES) and set(ids.values()) == {1}
    assert not list(out.rglob("*.tmp"))
    merged, problems = merge(out, deep=True)
    assert problems == [] and sorted(merged_done(out)) == sorted(SAMPLES)


def test_partition_from_flags_and_environment():
    assert partition_from_env(env={}) == (0, 1)
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "9"}
    assert partition_from_env(env=slurm) == (3, 4)
    # Resubmitting one task of a 16-task array (sbatch --array=7): partition 7 of the layout the
    # folder records (or --part-count), not partition 0 of 1 (it used to be: the new array's size)
    one = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "7",
           "SLURM_ARRAY_TASK_MAX": "7"}  # fmt: skip
    assert partition_from_env(env=one, recorded=16) == (7, 16)
    assert partition_from_env(None, 16, env=one) == (7, 16)
    whole = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "16",
             "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "15"}  # fmt: skip
    assert partition_from_env(env=whole) == (7, 16)
    with pytest.raises(ValueError, match="array ids are partition indices"):
        partition_from_env(env=one)  # a fresh folder cannot tell which layout task 7 belongs to
    assert partition_from_env(env={"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert partition_from_env(2, 5, env=slurm) == (2, 5)
    with pytest.raises(ValueError, match="outside"):
        partition_from_env(4, 4, env={})
    items = list(range(23))
    parts = [take_partition(items, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == items and sum(len(p) for p in parts) == len(
        set(sum(parts, []))
    )


def test_two_partitions_render_disjoint_sets_whose_union_is_the_list(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    chosen = [r.id for r in choose(SampleSource(tmp_path / "s").list(), 6, seed=3)]
    rendered = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)  # as under torchrun; SLURM arrays work the same way
        config = load_config(
            source="samples",
            out=str(tmp_path / "out"),
            count=6,
            seed=3,
            res=16,
            samples=2,
            denoise=False,
            num_quads=0,
            num_refs=1,
            progress=False,
        )
        summary = render(config)
        assert summary.part == (int(rank), 2) and not summary.failed
        rendered.append({i for s in list_shards(tmp_path / "out", int(rank)) for i in shard_ids(s)})
    assert rendered[0] and rendered[1] and not rendered[0] & rendered[1]
    assert rendered[0] | rendered[1] == set(chosen)
    merged, problems = merge(tmp_path / "out", deep=True)
    assert problems == [] and sorted(merged_done(tmp_path / "out")) == sorted(chosen)
    assert (tmp_path / "out" / "manifest.json").exists()
    # COUNT grows: the old choice is a prefix of the new one; objects are assigned by a hash of
    # their id, so none moves to the other partition, and both together cover the new list.
    grown = [r.id for r in choose(SampleSource(tmp_path / "s").list(), 9, seed=3)]
    assert set(chosen) < set(grown)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        config.count = 9
        render(config)
    merged, problems = merge(tmp_path / "out", deep=True)
    assert problems == [] and sorted(merged_done(tmp_path / "out")) == sorted(grown)

"""Bad data is named, not only counted (a new user's report: a shard truncated in half among good
ones was skipped with ``data/skipped: 1`` in the metrics and no word in the log). The loader
names the shard, the sample key and the reason of each skip; a run says it once in its log and
lists every one in ``skipped.jsonl`` in its run folder."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from train_helpers import tiny_config

from models.shards.format import list_shards, shard_keys, split_member
from models.shards.tar_stream import tar_samples
from training.datamodule import ShardStream, SkipCounter
from training.skipped_data import SKIPPED_FILE, read_skipped
from training.train import run


def _cut(shard, out, where: str):
    """A copy of ``shard`` broken off in the middle of its bytes (``half``), or exactly before a
    member's header (``boundary``: a cut that holds only whole members)."""
    data = shard.read_bytes()
    if where == "half":
        cut = len(data) // 2
    else:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        cut = members[len(members) // 2].offset
    out.write_bytes(data[:cut])
    return out


def _order(shard) -> list[str]:
    with tarfile.open(shard) as tar:
        return list(dict.fromkeys(split_member(m.name)[0] for m in tar.getmembers()))


@pytest.mark.parametrize("where", ["half", "boundary"])
def test_a_cut_shard_names_the_sample_it_broke_off_in(rendered_shards, tmp_path, where):
    shard = list_shards(rendered_shards)[0]
    cut = _cut(shard, tmp_path / "shard-000-000000.tar", where)
    order = _order(shard)
    counter = SkipCounter(limit=5)  # the loader's own reader and skip records
    read = [s["__key__"] for s in tar_samples([{"url": str(cut)}], handler=counter.handler)]
    count, (record,) = counter.take()
    assert count == 1 and record["shard"] == str(cut)
    assert read == order[: len(read)] and 0 < len(read) < len(order)
    assert record["key"] == order[len(read)]  # the first sample lost: it and all after it
    assert "ReadError" in record["reason"] and record["key"] in record["reason"]
    config = tiny_config(tmp_path, [cut], "data.batch_size=1", "data.shuffle_buffer=1")
    stream = iter(ShardStream([str(cut)], config.data, ref_in_targets=False))
    batch = next(b for b in stream if b["skips"])  # the record rides on the next sample
    assert batch["skips"] == [record] and int(batch["skipped"]) == 1


def test_an_intact_tar_ends_with_its_end_of_archive_block(rendered_shards):
    shard = list_shards(rendered_shards)[0]
    samples = list(tar_samples([{"url": str(shard)}]))
    keys = [s["__key__"] for s in samples]
    assert keys == _order(shard) and sorted(keys) == shard_keys(shard)


def test_a_run_names_each_skipped_sample_in_its_log_and_folder(
    corrupt_shards, rendered_shards, tmp_path, capfd
):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corrupt_shards["shard"], data)  # a garbage PNG, a sample without cameras
    good = list_shards(rendered_shards)[1]
    cut = _cut(good, data / good.name, "half")
    out = tmp_path / "run"
    config = tiny_config(
        out, data, "train.max_steps=6", "data.batch_size=2", "log.logger=none",
        "checkpoint.every_n_steps=100",
    )  # fmt: skip
    run(config)
    err = capfd.readouterr().err
    listed = read_skipped(out)
    named = {(r["shard"], r["key"]) for r in listed}
    damaged = str(data / corrupt_shards["shard"].name)
    broken_png, no_cameras = corrupt_shards["broken"]
    assert (damaged, broken_png) in named and (damaged, no_cameras) in named
    assert any(shard == str(cut) for shard, _ in named)
    assert len(named) == len(listed) == 3  # each once, though resampled shards repeat them
    reasons = {r["key"]: r["reason"] for r in listed}
    assert "missing member 'cameras.npy'" in reasons[no_cameras]
    assert all(r["rank"] == 0 and r["step"] >= 0 for r in listed)
    for record in listed:  # the log says each one, once
        line = f"data: shard {record['shard']}: sample {record['key']} skipped: "
        assert err.count(line) == 1, err[-3000:]
    assert f"skipped samples are listed in {out / SKIPPED_FILE}" in err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["skipped_local"] >= 3

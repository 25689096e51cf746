"""Several machines on one folder: duplicates dropped by merge, locks without flock, and the
SLURM array's no-setup path."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import webdataset as wds

from data_prep.manifest import Manifest, drop_from_shard
from data_prep.merge import merge, merged_done
from data_prep.runfiles import lock_partition
from models.shards.format import shard_ids

REPO = Path(__file__).resolve().parents[2]


def test_merge_drops_objects_done_twice(rendered_shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rendered_shards, out)
    records = out / "part-000" / "records.jsonl"
    header, *rest = records.read_text().splitlines(keepends=True)
    first = json.loads(header)["header"] | {"part_count": 2}
    records.write_text(json.dumps({"header": first}) + "\n" + "".join(rest))
    # a second machine rendered the first shard's objects again (e.g. a rerun with a stale list)
    (out / "part-001").mkdir()
    shutil.copy(
        out / "part-000" / "shard-000-000000.tar", out / "part-001" / "shard-001-000000.tar"
    )
    Manifest(out, 1, 2, first["settings"]).close()  # adopts the complete shard
    _, problems = merge(out)
    assert sum("done twice" in p for p in problems) == 4
    merged, problems = merge(out, deep=True, drop_duplicate_objects=True)
    assert problems == [] and len(merged["dropped"]) == 4
    assert not (out / "part-001" / "shard-001-000000.tar").exists()  # nothing of it was left
    assert set(merged_done(out).values()) == {f"part-000/shard-000-00000{i}.tar" for i in range(3)}
    assert merged["done"] == 10
    # a shard with one duplicate keeps its other objects, still readable by webdataset
    shard = out / "part-000" / "shard-000-000001.tar"
    ids = shard_ids(shard)
    assert drop_from_shard(shard.parent, shard.name, {ids[0]}) == shard.stat().st_size
    left = [s["meta.json"]["id"] for s in wds.WebDataset(str(shard), shardshuffle=False).decode()]
    assert left == ids[1:]


def _no_flock(handle, operation):
    raise OSError(errno.ENOLCK, "No locks available")


def test_locking_works_without_flock(tmp_path):
    lock = lock_partition(tmp_path, 0, flock=_no_flock)
    owner = json.loads((tmp_path / ".lock-000.owner").read_text())
    assert owner["pid"] == os.getpid()
    with pytest.raises(RuntimeError, match=r"another process .*pid \d+.*delete"):
        lock_partition(tmp_path, 0, flock=_no_flock)
    lock_partition(tmp_path, 1, flock=_no_flock).close()  # other partitions are free
    lock.close()
    lock_partition(tmp_path, 0, flock=_no_flock).close()
    # a stale owner on this host (its process is gone) is taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner["pid"] = dead.pid
    (tmp_path / ".lock-000.owner").write_text(json.dumps(owner))
    lock_partition(tmp_path, 0, flock=_no_flock).close()


def _make(*args, env=None):
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "NO_SETUP")}
    return subprocess.run(
        ["make", *args], cwd=REPO, env=base | (env or {}), capture_output=True, text=True
    )


def test_slurm_array_tasks_never_install(tmp_path):
    stale = ["-n", "-W", "pyproject.toml", "render-objaverse", f"OUT={tmp_path}"]  # deps changed
    assert "pip install" in _make(*stale).stdout  # an interactive run installs what changed
    for extra in ({"SLURM_ARRAY_TASK_ID": "7"}, {"NO_SETUP": "1"}):
        dry = _make(*stale, env=extra)
        assert dry.returncode == 0 and "pip" not in dry.stdout, dry.stdout
        assert "-m data_prep.render" in dry.stdout
    missing = _make("render-objaverse", "VENV=/nonexistent", env={"SLURM_ARRAY_TASK_ID": "7"})
    assert missing.returncode != 0 and "run 'make setup' once" in missing.stdout


def test_scratch_is_node_local_and_per_run(tmp_path, monkeypatch):
    from data_prep.runfiles import make_run_scratch, scratch_root

    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-local"))
    assert scratch_root() == tmp_path / "node-local" / "isotropic3d-render"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = scratch_root() / f"{socket.gethostname()}-{dead.pid}"
    (stale / "0000001").mkdir(parents=True)  # left by a run killed with -9
    work = make_run_scratch()
    assert work == scratch_root() / f"{socket.gethostname()}-{os.getpid()}" and work.is_dir()
    assert not stale.exists()
    # a render run writes no scratch into the (shared) output folder
    from data_prep.config import load_config
    from data_prep.render import render

    config = load_config(source="samples", out=str(tmp_path / "out"), count=1, res=16)
    config.samples, config.num_quads, config.num_refs, config.progress = 1, 0, 1, False
    assert render(config).rendered == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == [
        ".lock-000"
    ]

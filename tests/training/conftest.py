"""Fixtures of the training tests: fast tiny-model configs over the project's rendered shards, a
corrupted copy of those shards, and one shared stage-1 run."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from train_helpers import tiny_config


def _members(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _write(tar_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(tar_path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def corrupt_shards(rendered_shards, tmp_path_factory) -> dict:
    """Real rendered shards, one of them damaged: in its second object a PNG is garbage, its third
    object has no cameras.npy. Returns the folder and the keys of the two broken objects."""
    folder = tmp_path_factory.mktemp("corrupt_shards")
    shards = sorted(Path(rendered_shards).rglob("*.tar"))
    for shard in shards[1:]:
        shutil.copy(shard, folder / shard.name)
    members = _members(shards[0])
    keys = list(dict.fromkeys(info.name.split(".", 1)[0] for info, _ in members))
    broken_png, no_cameras = keys[1], keys[2]
    damaged = []
    for info, data in members:
        if info.name == f"{broken_png}.000.png":
            data = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
        if info.name == f"{no_cameras}.cameras.npy":
            continue
        damaged.append((info, data))
    _write(folder / shards[0].name, damaged)
    return {
        "folder": folder,
        "broken": [broken_png, no_cameras],
        "good": len(keys) - 2,
        "shard": folder / shards[0].name,
    }


@pytest.fixture(scope="session")
def stage1_run(corrupt_shards, tmp_path_factory):
    """One stage-1 run of the tiny model on the shards with two broken objects (8 steps,
    checkpoints at 4 and 8 keeping the last one, a sample grid at 4)."""
    from training.train import run

    out = tmp_path_factory.mktemp("stage1")
    config = tiny_config(
        out,
        corrupt_shards["folder"],
        "checkpoint.keep_last=1",
        "train.max_steps=8",
        "checkpoint.every_n_steps=4",
        "log.sample_every_n_steps=4",
        "log.sample_steps=2",
        "train.multiview_ratio=0.5",
    )
    trainer = run(config)
    return {"out": out, "config": config, "trainer": trainer}

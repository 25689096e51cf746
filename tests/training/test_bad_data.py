"""Bad data fails fast and says why: a shard of random bytes, a tar without the schema's members,
a folder with no shards, a DATA path that does not exist each stop the run at start-up, before
any model is built, with a message naming the shard and the reason; isolated corrupt samples are
still skipped and counted, a run of consecutive ones is an error. Also the loader's tar reader
(models.shards.tar_stream) against webdataset's."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
import torch
import webdataset as wds
from train_helpers import TINY, run_cli, tiny_config

import training.train
from models.shards.tar_stream import tar_samples
from models.shards.urls import expand_shard_urls
from training.datamodule import ShardDataModule, ShardStream
from training.shard_check import DataError


def _tar(path, members: dict[str, bytes], fmt=tarfile.PAX_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the run gets as far as building the model."""

    def built(*args, **kw):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(training.train, "resolve_init", built)


def _bad_folder(tmp_path, kind: str, rendered_shards):
    folder = tmp_path / kind
    folder.mkdir()
    good = sorted(rendered_shards.rglob("*.tar"))[0]
    (folder / good.name).write_bytes(good.read_bytes())  # a good shard beside the bad one
    bad = folder / "shard-999-000000.tar"
    if kind == "random-bytes":
        bad.write_bytes(os.urandom(20_000))
    elif kind == "no-schema":
        _tar(bad, {"notes.txt": b"hello", "notes.bin": b"\0" * 100, "other.json": b"{}"})
    return folder, bad


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("random-bytes", "not a readable tar file"), ("no-schema", "missing member 'meta.json'")],
)
def test_a_bad_shard_stops_the_run_before_the_model(
    kind, reason, rendered_shards, tmp_path, no_model
):
    folder, bad = _bad_folder(tmp_path, kind, rendered_shards)
    config = tiny_config(tmp_path / "run", folder)
    with pytest.raises(DataError) as error:
        training.train.run(config)
    message = str(error.value)
    assert message.startswith("data.train: shard ") and str(bad) in message and reason in message
    assert not (tmp_path / "run" / "base_model").exists()


def test_missing_path_and_empty_folder_are_named(tmp_path, no_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        str(tmp_path / "nowhere"): "does not exist",
        str(empty): "the folder has no *.tar",
        str(tmp_path / "nowhere" / "shard-*.tar"): "the pattern matches nothing",
        str(tmp_path / "shard-{000..002}.tar"): "3 of its 3 files do not exist",
    }
    for source, reason in cases.items():
        with pytest.raises(DataError, match="data.train: ") as error:
            training.train.run(tiny_config(tmp_path / "run", [source]))
        assert source in str(error.value) and reason in str(error.value), str(error.value)


def test_the_command_line_says_why_in_seconds(tmp_path):
    missing = tmp_path / "renders"
    result = run_cli(
        ["-m", "training.train", "--config", str(TINY), f"data.train={missing}", f"out={tmp_path}"],
        timeout=120,
    )
    assert result.returncode != 0
    assert f"data.train: shards {missing}: does not exist" in result.stderr
    assert not (tmp_path / "base_model").exists()


def test_isolated_corrupt_samples_pass_the_check(corrupt_shards, tmp_path):
    config = tiny_config(tmp_path, corrupt_shards["folder"])
    first = ShardDataModule(config.data).check()  # the damaged shard still has good samples
    assert len(first) == len(list(corrupt_shards["folder"].glob("*.tar")))


def _stream_with_bad_run(tmp_path, rendered_shards, bad_in_a_row: int):
    """One shard: a good object, then ``bad_in_a_row`` objects without cameras, then good ones."""
    samples = list(
        wds.WebDataset(
            expand_shard_urls([str(rendered_shards)]), shardshuffle=False, empty_check=False
        )
    )
    shard = tmp_path / "shard-000-000000.tar"
    with wds.TarWriter(str(shard)) as writer:
        clean = [
            {k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
            for s in samples
        ]
        writer.write(clean[0])
        for i in range(bad_in_a_row):
            broken = {k: v for k, v in clean[1].items() if k != "cameras.npy"}
            writer.write({**broken, "__key__": f"broken{i}"})
        for sample in clean[2:]:
            writer.write(sample)
    return shard


@pytest.mark.parametrize(("in_a_row", "limit", "fails"), [(4, 5, False), (5, 5, True)])
def test_a_run_of_consecutive_skips_is_an_error(in_a_row, limit, fails, rendered_shards, tmp_path):
    shard = _stream_with_bad_run(tmp_path, rendered_shards, in_a_row)
    config = tiny_config(
        tmp_path, [shard], "data.shuffle_buffer=1", "data.batch_size=1",
        f"data.max_consecutive_skips={limit}",
    )  # fmt: skip
    stream = iter(ShardStream([str(shard)], config.data, ref_in_targets=False))
    if not fails:
        batches = [next(stream) for _ in range(3)]
        assert sum(int(b["skipped"]) for b in batches) == in_a_row  # skipped and counted
        return
    with pytest.raises(DataError, match=f"{limit} samples in a row failed") as error:
        for _ in range(3):
            next(stream)
    assert f"{shard}:broken{limit - 1}: missing member 'cameras.npy'" in str(error.value)


def test_a_bad_shard_in_a_worker_stops_training_with_its_name(rendered_shards, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "shard-000-000000.tar").write_bytes(os.urandom(5000))
    config = tiny_config(tmp_path, folder, "data.num_workers=1", "data.max_consecutive_skips=3")
    loader = ShardDataModule(config.data).make_loader(config.data.train, progress=lambda: 0)
    with pytest.raises(DataError, match="3 samples in a row failed") as error:
        next(iter(loader))
    assert "shard-000-000000.tar: ReadError: invalid tar header" in str(error.value)


# --- the tar reader -----------------------------------------------------------------------------
def test_tar_reader_gives_webdataset_samples(rendered_shards):
    urls = expand_shard_urls([str(rendered_shards)])
    ours = list(tar_samples({"url": u} for u in urls))
    theirs = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_long_names_and_formats(tmp_path, fmt):
    deep = "d" * 60 + "/" + "e" * 60 + "/obj"  # past ustar's 100-character name field
    shard = tmp_path / "x.tar"
    _tar(shard, {f"{deep}.meta.json": b"{}", f"{deep}.000.png": b"p" * 1000, "k2.txt": b"t"}, fmt)
    samples = list(tar_samples([{"url": str(shard)}]))
    assert [s["__key__"] for s in samples] == [deep, "k2"]
    assert samples[0]["000.png"] == b"p" * 1000 and samples[1]["txt"] == b"t"


def test_tar_reader_errors_name_the_shard(tmp_path):
    shard = tmp_path / "cut.tar"
    _tar(shard, {"a.bin": b"x" * 5000, "b.bin": b"y" * 5000})
    shard.write_bytes(shard.read_bytes()[:3000])  # truncated inside the first member
    errors = []
    assert (
        list(tar_samples([{"url": str(shard)}], handler=lambda e: errors.append(e) or True)) == []
    )
    assert isinstance(errors[0], tarfile.ReadError) and errors[0].args[-1] == str(shard)
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_samples([{"url": str(shard)}]))


def test_uint8_views_cross_the_worker_boundary(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards, "data.num_workers=1")
    batch = next(iter(ShardDataModule(config.data).make_loader(config.data.train, lambda: 0)))
    assert batch["rgba"].dtype == torch.uint8 and batch["rgba"].shape[1:] == (5, 32, 32, 4)
    assert batch["background"].shape == (config.data.batch_size, 3)
    assert "views" not in batch and "ref_clip" not in batch  # made on the device

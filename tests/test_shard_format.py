"""The shard format's one document (docs/shards.md) against the code that owns the format
(models/shards/format.py): its tables are the code's, its plain-webdataset snippet reads a real
rendered shard without this repository, and the version rule holds (no version = 1; a newer one
is refused, naming both versions, by the format, the start-up check and the loader)."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from models.shards.format import (
    FORMAT_VERSION,
    MEMBERS,
    META,
    META_KEYS,
    VERSION_KEY,
    NewerFormat,
    list_shards,
    read_meta,
    read_sample,
    shard_keys,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "shards.md").read_text()


def _section(title: str) -> str:
    """The text of the section ``title``, up to the next heading of its level or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", DOC, re.M)
    assert match, f"docs/shards.md has no section {title!r}"
    body = DOC[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", body, re.M)
    return body[: end.start()] if end else body


def _table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("`", "") for c in row.strip("|").split("|")] for row in rows]
    return cells[2:]  # past the header and its rule


def test_the_member_and_meta_tables_are_the_codes():
    members = {row[0]: tuple(row[1:]) for row in _table(_section("Members"))}
    assert members == MEMBERS
    keys = {row[0]: row[1] for row in _table(_section("`meta.json`"))}
    assert keys == META_KEYS


def test_a_rendered_sample_writes_only_documented_meta_keys(rendered_shards):
    shard = list_shards(rendered_shards)[0]
    for key in shard_keys(shard):
        meta = json.loads(read_sample(shard, key)[META])
        assert set(meta) <= set(META_KEYS), set(meta) - set(META_KEYS)
        assert meta[VERSION_KEY] == FORMAT_VERSION


def _snippet() -> str:
    (code,) = re.findall(
        r"```python\n(.*?)```", _section("Reading a shard without this repository"), re.S
    )
    return code


def test_the_plain_webdataset_snippet_reads_a_real_shard(rendered_shards, tmp_path):
    code = _snippet()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported == {"io", "json", "numpy", "webdataset", "PIL"}  # nothing of ours
    shard = list_shards(rendered_shards)[0]
    example = 'url = "outputs/render/samples/part-000/shard-000-000000.tar"'
    assert example in code
    script = tmp_path / "read_shard.py"
    script.write_text(code.replace(example, f"url = {str(shard)!r}"))
    # -I: isolated (no PYTHONPATH, no current folder on the path), run outside the repository
    done = subprocess.run(
        [sys.executable, "-I", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    keys = [line.split()[0] for line in lines]
    assert sorted(keys) == shard_keys(shard)
    for line in lines:  # what the snippet read is what the format module reads
        key = line.split()[0]
        meta = read_meta(read_sample(shard, key))
        quad = json.dumps(meta.quads[0])
        views = meta.views
        side = meta.meta["resolution"]
        expected = f"{key} {meta.meta['id']} 1 ({views}, 4, 4) ({side}, {side}, 4) {quad}"
        assert line == expected


def _rewrite(shard: Path, out: Path, meta_change) -> Path:
    """A copy of ``shard`` whose every meta.json went through ``meta_change``."""
    with tarfile.open(shard) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith("." + META):
                meta = json.loads(data)
                meta_change(meta)
                data = json.dumps(meta).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out


def test_a_shard_without_a_version_reads_as_version_1(rendered_shards, tmp_path):
    shard = list_shards(rendered_shards)[0]
    old = _rewrite(shard, tmp_path / shard.name, lambda meta: meta.pop(VERSION_KEY))
    key = shard_keys(old)[0]
    sample = read_sample(old, key)
    assert VERSION_KEY not in json.loads(sample[META])
    assert read_meta(sample).version == 1


def test_a_newer_format_is_refused_naming_both_versions(rendered_shards, tmp_path):
    from training.config import load_config
    from training.datamodule import ShardStream
    from training.shard_check import DataError, check_shards

    newer = FORMAT_VERSION + 1
    shard = list_shards(rendered_shards)[0]
    folder = tmp_path / "newer"
    folder.mkdir()
    future = _rewrite(shard, folder / shard.name, lambda meta: meta.update({VERSION_KEY: newer}))
    key = shard_keys(future)[0]
    both = (
        f"written in shard format version {newer}, but this code reads format version "
        f"{FORMAT_VERSION} at most: update the code to read these shards"
    )
    with pytest.raises(NewerFormat) as error:  # the format module
        read_meta(read_sample(future, key))
    assert str(error.value) == f"{future}:{key}: {both}"
    with pytest.raises(DataError) as error:  # training's start-up check, before any model
        check_shards([str(future)], cached=False, limit=5)
    assert f"{future}:" in str(error.value) and both in str(error.value)
    config = load_config(ROOT / "configs" / "stage1-tiny.yaml", [f"out={tmp_path / 'run'}"])
    with pytest.raises(NewerFormat, match=f"format version {newer}, but"):  # never skipped
        next(iter(ShardStream([str(future)], config.data, ref_in_targets=False)))

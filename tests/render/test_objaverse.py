"""The Objaverse source against a local fake of the hub (no network): selection, filters,
downloads with retry and timeout into the package's cache layout, and the offline error."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_prep.config import ObjaverseOptions, load_config
from data_prep.objaverse_source import (
    ObjaverseOfflineError,
    ObjaverseSource,
    valid_glb,
    write_fake_hub,
)
from data_prep.render import render
from data_prep.samples import sample_glb_bytes
from data_prep.sources import choose
from data_prep.summary import iter_samples

OBJECTS = {
    "aaa111": ("car", "by", "car_(automobile)"),
    "bbb222": ("mug", "by-nc", "mug"),
    "ccc333": ("tree", "cc0", "christmas_tree"),
    "ddd444": ("house", "by", "house"),
    "eee555": ("front_marker", "by-sa", "mug"),
}


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the fake hub; ``fail_once`` paths answer 500 the first time, ``hang`` paths stall."""

    fail_once: set[str] = set()
    hang: set[str] = set()
    drip: set[str] = set()  # served in small pieces, slowly (a download to kill part-way)
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        FlakyHandler.requests.append(self.path)
        if self.path in FlakyHandler.drip:
            data = Path(self.directory, self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), 256):
                self.wfile.write(data[i : i + 256])
                self.wfile.flush()
                time.sleep(0.1)
            return
        if self.path in FlakyHandler.fail_once:
            FlakyHandler.fail_once.discard(self.path)
            self.send_error(500, "flaky")
            return
        if self.path in FlakyHandler.hang:
            time.sleep(3)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    write_fake_hub(
        folder,
        {uid: (sample_glb_bytes(name), lic, cat) for uid, (name, lic, cat) in OBJECTS.items()},
    )
    handler = functools.partial(FlakyHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _source(hub, tmp_path, **options):
    return ObjaverseSource(
        ObjaverseOptions(base_url=hub, cache_dir=str(tmp_path / "cache"), **options)
    )


def test_lists_all_uids_and_filters_by_uid_lvis_and_license(hub, tmp_path):
    assert sorted(r.id for r in _source(hub, tmp_path).list()) == sorted(OBJECTS)
    uid_file = tmp_path / "uids.txt"
    uid_file.write_text("ccc333\nddd444.glb\n")
    chosen = _source(hub, tmp_path, uids=["aaa111"], uid_file=str(uid_file)).list()
    assert [r.id for r in chosen] == ["aaa111", "ccc333", "ddd444"]
    mugs = _source(hub, tmp_path, lvis_categories=["mug"]).list()
    assert sorted(r.id for r in mugs) == ["bbb222", "eee555"]
    assert {r.extra["lvis"] for r in mugs} == {"mug"}
    commercial = _source(hub, tmp_path, exclude_licenses=["by-nc"]).list()
    assert sorted(r.id for r in commercial) == ["aaa111", "ccc333", "ddd444", "eee555"]
    only_by = _source(hub, tmp_path, licenses=["by"], lvis_categories=["house", "mug"]).list()
    assert [(r.id, r.license) for r in only_by] == [("ddd444", "by")]
    with pytest.raises(KeyError, match="unknown Objaverse uids: zzz"):
        _source(hub, tmp_path, uids=["zzz"]).list()
    with pytest.raises(KeyError, match="unknown LVIS category 'mugs'"):
        _source(hub, tmp_path, lvis_categories=["mugs"]).list()


def test_seeded_count_is_reproducible(hub, tmp_path):
    refs = _source(hub, tmp_path).list()
    first = [r.id for r in choose(refs, 3, seed=7)]
    assert first == [r.id for r in choose(list(reversed(refs)), 3, seed=7)]
    assert len(first) == 3 and len(set(first)) == 3
    others = {tuple(r.id for r in choose(refs, 3, seed=s)) for s in range(8)}
    assert len(others) > 1


def test_downloads_retry_time_out_and_land_in_the_package_cache(hub, tmp_path):
    FlakyHandler.fail_once = {"/glbs/000-000/aaa111.glb"}
    FlakyHandler.hang = {"/glbs/000-001/ccc333.glb"}
    source = _source(hub, tmp_path, download_timeout_s=1.0, download_retries=1)
    refs = [r for r in source.list() if r.id in ("aaa111", "bbb222", "ccc333")]
    started = time.monotonic()
    results = source.fetch(refs)
    assert time.monotonic() - started < 15  # the stalled file times out, nothing hangs
    cache = tmp_path / "cache" / "hf-objaverse-v1"
    assert results["aaa111"] == cache / "glbs/000-000/aaa111.glb"  # 500 once, then retried
    assert results["bbb222"].read_bytes()[:4] == b"glTF"
    assert isinstance(results["ccc333"], ConnectionError)
    assert not list(cache.rglob("*.tmp"))
    assert {r.id: r.license for r in refs} == {"aaa111": "by", "bbb222": "by-nc", "ccc333": "cc0"}
    FlakyHandler.hang = set()
    FlakyHandler.requests.clear()
    assert source.fetch(refs[:2]) == {r.id: results[r.id] for r in refs[:2]}
    assert not any(p.startswith("/glbs/") for p in FlakyHandler.requests)  # cache hit


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_stops_at_once_naming_the_alternatives(tmp_path):
    source = ObjaverseSource(
        ObjaverseOptions(base_url=f"http://127.0.0.1:{_closed_port()}", cache_dir=str(tmp_path))
    )
    started = time.monotonic()
    with pytest.raises(ObjaverseOfflineError, match="--source samples") as error:
        source.list()
    assert time.monotonic() - started < 5
    assert "--source /path/to/meshes" in str(error.value)


def test_objaverse_objects_render_into_shards(hub, tmp_path):
    FlakyHandler.fail_once, FlakyHandler.hang = set(), set()
    config = load_config(
        source="objaverse",
        out=str(tmp_path / "out"),
        count=2,
        seed=1,
        res=32,
        samples=4,
        denoise=False,
        num_quads=1,
        num_refs=0,
        progress=False,
        exclude_licenses=["by-nc"],
    )
    config.objaverse.base_url, config.objaverse.cache_dir = hub, str(tmp_path / "cache")
    summary = render(config)
    assert summary.rendered == 2 and not summary.failed
    metas = [s["meta.json"] for s in iter_samples(tmp_path / "out")]
    assert len(metas) == 2
    for meta in metas:
        assert meta["source"] == "objaverse" and meta["license"] == OBJECTS[meta["id"]][1]
        assert meta["license"] != "by-nc"
        credit = meta["attribution"]  # creator, URL and licence per object
        assert (
            credit["creator"] == f"creator-{meta['id'][:3]}"
            and credit["license"] == meta["license"]
        )
        assert credit["url"].endswith(meta["id"]) and credit["name"] == meta["id"]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_delete_after_shard_removes_each_glb_once_its_shard_is_written(hub, tmp_path):
    FlakyHandler.fail_once, FlakyHandler.hang = set(), set()
    config = load_config(
        source="objaverse",
        out=str(tmp_path / "out"),
        uids=["aaa111", "ddd444"],
        res=16,
        samples=2,
        denoise=False,
        num_quads=0,
        num_refs=1,
        shard_size=1,
        delete_after_shard=True,
        progress=False,
    )
    config.objaverse.base_url, config.objaverse.cache_dir = hub, str(tmp_path / "cache")
    assert render(config).rendered == 2
    assert not list((tmp_path / "cache").rglob("*.glb"))  # the shards hold the renders
    assert (tmp_path / "cache" / "hf-objaverse-v1" / "object-paths.json.gz").exists()
    # a failed object's file is released too (it would otherwise stay forever)
    config.out, config.objaverse.uids, config.min_coverage = (
        str(tmp_path / "out2"),
        ["bbb222"],
        0.99,
    )
    assert render(config).failed == {"bbb222": "empty_view"}
    assert not list((tmp_path / "cache").rglob("*.glb"))


def test_metadata_files_are_parsed_once_per_run(hub, tmp_path, monkeypatch):
    parsed = []
    original = ObjaverseSource._json_gz
    monkeypatch.setattr(
        ObjaverseSource, "_json_gz", lambda self, rel: parsed.append(rel) or original(self, rel)
    )
    source = _source(hub, tmp_path, licenses=["by", "cc0"])
    refs = source.list()
    source.fetch(refs[:1])
    source.fetch(refs[1:])
    source.annotations([r.id for r in refs])
    assert parsed.count("object-paths.json.gz") == 1
    assert len(parsed) == len(set(parsed))  # every metadata file parsed once


def test_a_corrupt_cached_file_is_fetched_again(hub, tmp_path):
    FlakyHandler.fail_once, FlakyHandler.hang = set(), set()
    _source(hub, tmp_path).list()  # fills the cache's object-paths.json.gz
    cache = tmp_path / "cache" / "hf-objaverse-v1"
    cached = cache / "glbs/000-000/bbb222.glb"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(sample_glb_bytes("mug")[:100])  # cut short by another tool
    paths = cache / "object-paths.json.gz"
    paths.write_bytes(paths.read_bytes()[:20])  # a truncated index: re-fetched too
    FlakyHandler.requests.clear()
    source = _source(hub, tmp_path)
    refs = [r for r in source.list() if r.id == "bbb222"]
    assert valid_glb(source.fetch(refs)["bbb222"])
    assert "/glbs/000-000/bbb222.glb" in FlakyHandler.requests
    assert "/object-paths.json.gz" in FlakyHandler.requests
    assert b"bbb222" in gzip.decompress(paths.read_bytes())


KILLED_FETCH = """
import sys
from data_prep.config import ObjaverseOptions
from data_prep.objaverse_source import ObjaverseSource
source = ObjaverseSource(ObjaverseOptions(base_url=sys.argv[1], cache_dir=sys.argv[2]))
source.fetch([r for r in source.list() if r.id == "aaa111"])
"""


def test_kill_9_during_a_download_leaves_no_partial_file_under_the_final_name(hub, tmp_path):
    FlakyHandler.fail_once, FlakyHandler.hang = set(), set()
    FlakyHandler.drip = {"/glbs/000-000/aaa111.glb"}
    glbs = tmp_path / "cache" / "hf-objaverse-v1" / "glbs" / "000-000"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_FETCH, hub, str(tmp_path / "cache")], cwd=repo
    )
    try:
        deadline = time.monotonic() + 60
        while not list(glbs.glob("*.tmp")):  # the response has started: the body is dripping
            assert time.monotonic() < deadline and child.poll() is None, "no download started"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    (partial,) = list(glbs.glob("*.tmp"))
    assert f".{socket.gethostname()}.{child.pid}." in partial.name  # unique per host/process
    assert not (glbs / "aaa111.glb").exists()
    FlakyHandler.drip = set()
    source = _source(hub, tmp_path)
    path = source.fetch([r for r in source.list() if r.id == "aaa111"])["aaa111"]
    assert path == glbs / "aaa111.glb" and valid_glb(path)
    assert not list(glbs.glob("*.tmp"))  # the dead process's partial file is cleaned up


def test_every_file_has_an_overall_download_deadline(hub, tmp_path):
    FlakyHandler.fail_once, FlakyHandler.hang = set(), set()
    FlakyHandler.drip = {"/glbs/000-001/ccc333.glb"}  # ~4 s of dripping, never a 1 s stall
    try:
        source = _source(hub, tmp_path, download_deadline_s=1.0, download_retries=5)
        refs = [r for r in source.list() if r.id == "ccc333"]
        started = time.monotonic()
        result = source.fetch(refs)["ccc333"]
        assert isinstance(result, ConnectionError) and "deadline" in str(result)
        assert time.monotonic() - started < 3.5  # not 6 attempts of a socket timeout each
    finally:
        FlakyHandler.drip = set()

"""The Objaverse source against a local fake of the hub (no network): selection, filters,
downloads with retry and timeout into the package's cache layout, and the offline error."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time

import pytest

from data_prep.config import ObjaverseOptions, load_config
from data_prep.objaverse_source import ObjaverseOfflineError, ObjaverseSource, write_fake_hub
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
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        FlakyHandler.requests.append(self.path)
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

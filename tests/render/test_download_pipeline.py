"""The download pipeline: files reach the renderers as they complete, a slow file holds only its
own slot, and no more than the window is fetched ahead of rendering (local fake hub)."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

from data_prep.config import ObjaverseOptions, load_config
from data_prep.fake_hub import serve
from data_prep.fetching import Feeder
from data_prep.objaverse_source import ObjaverseSource, write_fake_hub
from data_prep.render import render
from data_prep.samples import sample_glb_bytes

UIDS = [f"obj{i:03d}" for i in range(8)]


def _hub(folder: Path) -> dict[str, str]:
    glb = sample_glb_bytes("letter_l")
    write_fake_hub(folder, {uid: (glb, "by", "thing") for uid in UIDS})
    return {uid: f"/glbs/000-{i // 2:03d}/{uid}.glb" for i, uid in enumerate(UIDS)}


def test_a_slow_file_holds_only_its_own_slot_and_the_window_bounds_fetching(tmp_path):
    paths = _hub(tmp_path / "hub")
    slow = UIDS[0]
    with serve(tmp_path / "hub", {paths[slow]: 3.0}) as (url, requests):
        source = ObjaverseSource(ObjaverseOptions(base_url=url, cache_dir=str(tmp_path / "c")))
        refs = source.list()
        feeder = Feeder(source, refs, window=3, workers=3)
        time.sleep(1.0)  # nothing taken yet: only the window's 3 files may be fetched
        fetched = [p for p in requests if p.endswith(".glb")]
        assert len(fetched) == 3, fetched
        started, order = time.monotonic(), []
        for item in feeder.items():
            if item is None:
                time.sleep(0.01)
                continue
            ref, result = item
            assert isinstance(result, Path) and result.is_file(), result
            order.append((ref.id, time.monotonic() - started))
        feeder.close()
    ids = [object_id for object_id, _ in order]
    assert sorted(ids) == UIDS and ids[-1] == slow  # in completion order: the slow one last
    fast_done = order[-2][1]
    assert fast_done < 1.5, order  # the other 7 went through the two free slots meanwhile


def test_render_goes_on_while_one_download_stalls(tmp_path):
    paths = _hub(tmp_path / "hub")
    slow = UIDS[3]
    with serve(tmp_path / "hub", {paths[slow]: 4.0}) as (url, _):
        config = load_config(
            source="objaverse",
            out=str(tmp_path / "out"),
            uids=UIDS[:5],
            res=16,
            samples=2,
            denoise=False,
            num_quads=0,
            num_refs=1,
            shard_size=1,
            prefetch=2,
            download_workers=2,
            progress=False,
        )
        config.objaverse.base_url, config.objaverse.cache_dir = url, str(tmp_path / "cache")
        summary = render(config)
    assert summary.rendered == 5 and not summary.failed
    shards = sorted((tmp_path / "out").rglob("shard-*.tar"), key=lambda p: p.stat().st_mtime)
    # the slow object's shard is the last one written: the others did not wait for it
    with tarfile.open(shards[-1]) as tar:
        assert any(slow in name for name in tar.getnames())

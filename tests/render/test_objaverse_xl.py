"""Objaverse-XL as a source against a local fake of its hosts (127.0.0.1): the package's
annotation layout (one parquet per source) and cache layout, source/type/licence filters, sha256
de-duplication, our fetcher's timeouts, an OBJ's textures fetched from its repository, and a
real render of each source's objects."""

from __future__ import annotations

import hashlib

import numpy as np
import trimesh
from render_assets import GREEN, OBJ

from data_prep.config import ObjaverseOptions, load_config
from data_prep.fake_hub import serve
from data_prep.objaverse_source import write_fake_hub
from data_prep.objaverse_xl import ObjaverseXLSource, smithsonian_uid, write_fake_xl
from data_prep.render import render
from data_prep.samples import sample_glb_bytes
from data_prep.summary import iter_samples


def _png(colour) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _objects(url: str) -> list[dict]:
    letter = sample_glb_bytes("letter_l")
    stl = trimesh.creation.cone(0.5, 1.0).export(file_type="stl")
    mtl = b"newmtl textured\nKd 1 1 1\nmap_Kd Textures/Green.png\n"
    obj = OBJ.encode()
    return [
        {
            "source": "sketchfab",
            "uid": "aaa111",
            "fileType": "glb",
            "data": sample_glb_bytes("mug"),
        },
        {"source": "smithsonian", "name": "letter", "fileType": "glb", "data": letter},
        {"source": "thingiverse", "thing": (12, 34), "fileType": "stl", "data": stl},
        {
            "source": "github",
            "github": ("org", "repo", "c0ffee", "models/cube.obj"),
            "fileType": "obj",
            "data": obj,
            "files": {"cube.mtl": mtl, "Textures/Green.png": _png(GREEN)},
        },
        # the Smithsonian file again in a repository: de-duplicated by sha256
        {"source": "github", "github": ("org", "copy", "beef", "l.glb"), "fileType": "glb"}
        | {"data": letter},
        # annotations older than the file: renders, with a note
        {"source": "github", "github": ("org", "repo", "c0ffee", "box.stl"), "fileType": "stl"}
        | {"data": stl, "sha256": "0" * 64, "license": "by-nc"},
    ]


def _fake(tmp_path):
    folder = tmp_path / "hosts"
    write_fake_hub(folder, {"aaa111": (sample_glb_bytes("mug"), "by", "mug")})
    return folder


def _options(url: str, tmp_path, **extra) -> ObjaverseOptions:
    return ObjaverseOptions(
        base_url=url,
        xl_base_url=url,
        github_raw_url=f"{url}/raw",
        thingiverse_url=f"{url}/thingiverse-site",
        cache_dir=str(tmp_path / "cache"),
        **extra,
    )


def test_xl_lists_filters_dedupes_and_renders_every_source(tmp_path):
    folder = _fake(tmp_path)
    with serve(folder) as (url, _):
        objects = _objects(url)
        write_fake_xl(folder, objects, url)
        refs = ObjaverseXLSource(_options(url, tmp_path)).list()
        assert len(refs) == 5  # six annotations, one sha256 twice
        letter_sha = hashlib.sha256(objects[1]["data"]).hexdigest()
        assert [r.source for r in refs if r.id == letter_sha] == ["objaverse-xl:smithsonian"]
        only = ObjaverseXLSource(_options(url, tmp_path, xl_sources=["github"])).list()
        assert {r.source for r in only} == {"objaverse-xl:github"} and len(only) == 3
        objs = ObjaverseXLSource(_options(url, tmp_path, file_types=["obj"])).list()
        assert [r.extra["file_type"] for r in objs] == ["obj"]
        free = ObjaverseXLSource(_options(url, tmp_path, exclude_licenses=["by-nc"])).list()
        assert len(free) == 4

        config = load_config(
            source="objaverse-xl",
            out=str(tmp_path / "out"),
            res=16,
            samples=2,
            denoise=False,
            num_quads=0,
            num_refs=1,
            key_light=0.0,
            progress=False,
        )
        for key, value in vars(_options(url, tmp_path)).items():
            setattr(config.objaverse, key, value)
        summary = render(config)
    assert summary.rendered == 5 and not summary.failed, summary.failed
    samples = {s["meta.json"]["id"]: s["meta.json"] for s in iter_samples(tmp_path / "out")}
    assert {m["source"] for m in samples.values()} == {
        f"objaverse-xl:{s}" for s in ("sketchfab", "smithsonian", "thingiverse", "github")
    }
    # the package's cache layout
    cache = tmp_path / "cache"
    smithsonian = f"{url}/smithsonian-files/letter.glb"
    assert (cache / "smithsonian" / "objects" / f"{smithsonian_uid(smithsonian)}.glb").exists()
    assert (cache / "thingiverse" / "thing-12-file-34.stl").exists()
    assert (cache / "github" / "repos" / "org" / "repo" / "models" / "cube.obj").exists()
    assert (cache / "hf-objaverse-v1" / "glbs" / "000-000" / "aaa111.glb").exists()
    # the OBJ's MTL and texture came from its repository and show in the render
    cube_sha = hashlib.sha256(OBJ.encode()).hexdigest()
    assert samples[cube_sha]["textures"] == {"external": 1, "relinked": [], "missing": []}
    cube = next(s for s in iter_samples(tmp_path / "out") if s["meta.json"]["id"] == cube_sha)
    mean = cube["000.png"][..., :3][cube["000.png"][..., 3] == 255].astype(float).mean(0)
    assert mean[1] > mean[0] + 60 and mean[1] > mean[2] + 60, mean
    changed = [m for m in samples.values() if m.get("extra", {}).get("sha256_changed")]
    assert [m["license"] for m in changed] == ["by-nc"]


def test_a_stalled_xl_download_times_out_and_the_run_goes_on(tmp_path):
    folder = _fake(tmp_path)
    with serve(folder, {"/thingiverse-site/download:34": 4.0}) as (url, _):
        write_fake_xl(folder, _objects(url)[1:3], url)
        config = load_config(
            source="objaverse-xl",
            out=str(tmp_path / "out"),
            res=16,
            samples=2,
            denoise=False,
            num_quads=0,
            num_refs=1,
            progress=False,
        )
        for key, value in vars(_options(url, tmp_path)).items():
            setattr(config.objaverse, key, value)
        config.objaverse.download_timeout_s, config.objaverse.download_retries = 0.5, 1
        config.objaverse.xl_sources = ["smithsonian", "thingiverse"]
        config.objaverse.delete_after_shard = True
        summary = render(config)
    assert summary.rendered == 1 and list(summary.failed.values()) == ["download_failed"]
    assert np.isfinite(summary.seconds) and summary.seconds < 30
    # delete_after_shard: the rendered object's download went once its shard was written; the
    # stalled one left no partial file; the annotations stay for the next run
    cache = tmp_path / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert list(cache.rglob("*.parquet"))

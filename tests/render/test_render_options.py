"""Optional renderer behaviour: worker recycling, randomised lighting and HDRI environments
recorded in meta.json, the albedo pass, and the warning when glTF's metal default is overridden."""

from __future__ import annotations

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial

from data_prep.config import load_config
from data_prep.pool import WorkerPool
from data_prep.render import render
from data_prep.samples import write_samples
from data_prep.summary import iter_samples
from models.cameras import camera_to_world

TINY = dict(res=16, samples=4, denoise=False, num_quads=0, num_refs=1, progress=False)


def _write_hdr(path, rgb, width=4, height=2) -> None:
    """A flat Radiance .hdr of one colour (uncompressed RGBE scanlines)."""
    peak = max(rgb)
    mantissa, exponent = np.frexp(peak)
    scale = mantissa * 256.0 / peak
    pixel = bytes([int(c * scale) for c in rgb] + [int(exponent) + 128])
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    path.write_bytes(header + pixel * (width * height))


def test_workers_are_recycled_after_n_objects(tmp_path):
    path = write_samples(tmp_path / "src", ["letter_l"])["letter_l"]
    views = [{"c2w": camera_to_world(20.0, 30.0, 2.5).tolist(), "fov_deg": 40.0}]
    settings = dict(res=16, samples=2, adaptive_threshold=0.0, denoise=False, max_bounces=1)
    settings |= dict(device="cpu", threads=1, ambient=0.75, key_light=0.0, object_radius=0.7)
    jobs = [
        {"id": f"j{i}", "path": str(path), "out_dir": str(tmp_path / f"j{i}"), "views": views}
        | {"settings": settings}
        for i in range(4)
    ]
    pids = {}
    for recycle in (0, 2):
        with WorkerPool([{}], tmp_path / "logs", timeout_s=60, recycle_after=recycle) as pool:
            results = [result for _, result in pool.run(jobs)]
        assert all(r["ok"] for r in results), results
        pids[recycle] = [r["pid"] for r in results]
    assert len(set(pids[0])) == 1  # one process served all four
    p = pids[2]
    assert p[0] == p[1] and p[2] == p[3] and p[1] != p[2]  # a fresh process after two


def test_random_lighting_hdri_and_albedo_are_recorded(tmp_path):
    src = tmp_path / "src"
    write_samples(src, ["front_marker", "letter_l"])
    trimesh.creation.icosphere(3).export(src / "ball.stl")
    hdri = tmp_path / "hdri"
    hdri.mkdir()
    _write_hdr(hdri / "blue.hdr", (0.05, 0.1, 1.0))
    config = load_config(
        source=str(src),
        out=str(tmp_path / "out"),
        light_randomization=True,
        hdri_folder=str(hdri),
        albedo=True,
        key_light=0.0,
        untextured_color=(1.0, 1.0, 1.0),
        **TINY,
    )
    assert not render(config).failed
    samples = {s["meta.json"]["id"]: s for s in iter_samples(tmp_path / "out")}
    lighting = {key: s["meta.json"]["lighting"] for key, s in samples.items()}
    for described in lighting.values():
        assert described["mode"] == "random" and described["hdri"]["file"] == "blue.hdr"
        assert 1 <= len(described["lights"]) <= 3
    assert lighting["front_marker"] != lighting["letter_l"]  # seeded per object
    renderer = samples["ball"]["meta.json"]["renderer"]
    assert renderer["light_randomization"] and renderer["albedo"]
    # a white ball under a blue sky (key light off, random lights white) comes out blue-ish
    ball = samples["ball"]["000.png"]
    mean = ball[..., :3][ball[..., 3] == 255].astype(float).mean(0)
    assert mean[2] > mean[0] + 20, mean
    # albedo: the surface colour without light, zero on the background
    albedo = samples["ball"]["albedo.npy"]
    alpha = ball[..., 3]
    assert albedo.shape == (1, 16, 16, 3) and albedo.dtype == np.float16
    surface = albedo[0][alpha == 255].astype(float)
    # white (less the specular layer's share), not blue: the light does not enter the albedo
    assert surface.min() > 0.85 and np.ptp(surface, axis=1).max() < 0.01, surface
    assert np.abs(albedo[0][alpha == 0]).max() == 0
    # a rerun with the same settings lights the same object the same way
    again = load_config(
        source=str(src),
        out=str(tmp_path / "again"),
        light_randomization=True,
        hdri_folder=str(hdri),
        albedo=True,
        key_light=0.0,
        untextured_color=(1.0, 1.0, 1.0),
        **TINY,
    )
    render(again)
    repeat = {s["meta.json"]["id"]: s["meta.json"]["lighting"] for s in iter_samples(again.out)}
    assert repeat == lighting


def test_default_lighting_is_fixed_and_the_metal_override_warns(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(
        material=PBRMaterial(baseColorFactor=[0.8, 0.1, 0.1, 1.0])  # no metallicFactor
    )
    box.export(src / "no_metal_factor.glb")
    config = load_config(source=str(src), out=str(tmp_path / "out"), **TINY)
    assert not render(config).failed
    meta = next(iter_samples(tmp_path / "out"))["meta.json"]
    assert meta["lighting"] == {"mode": "fixed", "ambient": 0.75, "key_light": 1.0}
    assert any(w.startswith("metallic_override: 1 glTF material") for w in meta["warnings"])

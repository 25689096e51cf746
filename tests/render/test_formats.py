"""The local-folder source reads every supported format (GLB, glTF, OBJ, FBX, PLY, STL)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import trimesh

from data_prep.config import load_config
from data_prep.render import render
from data_prep.samples import sample_glb_bytes
from data_prep.sources import FolderSource
from data_prep.summary import iter_samples

FBX_EXPORT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
bpy.ops.export_scene.fbx(filepath=sys.argv[2])
"""


def test_every_format_renders_from_a_folder(tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "car.glb").write_bytes(sample_glb_bytes("car"))
    trimesh.load(src / "car.glb").export(src / "nested" / "car.glb")  # same stem, other folder
    for name, data in trimesh.load(src / "car.glb").export(file_type="gltf").items():
        (src / ("house.gltf" if name.endswith(".gltf") else name)).write_bytes(data)
    blob = trimesh.creation.icosphere(3)
    blob.visual.vertex_colors = np.tile([30, 200, 40, 255], (len(blob.vertices), 1))
    blob.export(src / "green.ply")  # vertex colours, no material
    trimesh.creation.torus(1.0, 0.3).export(src / "ring.obj")
    trimesh.creation.cone(0.5, 1.0).export(src / "cone.stl")
    subprocess.run(
        [sys.executable, "-c", FBX_EXPORT, str(src / "car.glb"), str(src / "car_fbx.fbx")],
        check=True,
        capture_output=True,
    )
    ids = sorted(ref.id for ref in FolderSource(src).list())
    assert ids == ["car", "car_fbx", "cone", "green", "house", "nested/car", "ring"]
    config = load_config(
        source=str(src),
        out=str(tmp_path / "out"),
        res=24,
        samples=4,
        denoise=False,
        num_quads=0,
        num_refs=1,
        progress=False,
    )
    summary = render(config)
    assert summary.rendered == 7 and not summary.failed
    samples = {s["meta.json"]["id"]: s for s in iter_samples(tmp_path / "out")}
    assert sorted(samples) == ids and samples["car"]["__key__"] == "car"
    assert samples["nested/car"]["__key__"].startswith("nested_car~")  # unique, no slash
    green = samples["green"]["000.png"]
    mean = green[..., :3][green[..., 3] == 255].astype(float).mean(0)
    assert mean[1] > mean[0] + 60 and mean[1] > mean[2] + 60, mean  # vertex colours shown

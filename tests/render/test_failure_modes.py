"""Generated meshes with each failure mode real collections contain, rendered once per module: framing
of extreme proportions, animated roots, embedded lights, empty renders, colliding names, and a
resume that changes a pixel setting."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from data_prep.config import load_config
from data_prep.manifest import read_partition
from data_prep.render import render
from data_prep.samples import sample_glb_bytes
from data_prep.summary import iter_samples
from models.shards.format import sample_key

# Blender writes the files trimesh cannot: a root object with keyframed location far from the
# origin, and a glTF carrying a strong point light just in front of the object.
AUTHORED_FILES = """
import os, sys, bpy
import bmesh
out = sys.argv[1]

def cube(name):
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj

bpy.ops.wm.read_factory_settings(use_empty=True)
moving = cube("moving")
bpy.context.scene.frame_start, bpy.context.scene.frame_end = 1, 40
for frame, x in ((1, 6.0), (40, 12.0)):
    moving.location = (x, 0.0, 3.0)
    moving.keyframe_insert("location", frame=frame)
bpy.ops.export_scene.gltf(filepath=out + "/animated_root.glb", export_animations=True)
bpy.ops.wm.read_factory_settings(use_empty=True)
grey = cube("grey")
material = bpy.data.materials.new("grey")
material.use_nodes = True
material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (.2, .2, .2, 1)
grey.data.materials.append(material)
lamp = bpy.data.objects.new("lamp", bpy.data.lights.new("lamp", type="POINT"))
lamp.data.energy = 5000.0
lamp.location = (0.0, -1.2, 0.0)
bpy.context.scene.collection.objects.link(lamp)
bpy.ops.export_scene.gltf(filepath=out + "/embedded_light.glb", export_lights=True)
sys.stdout.flush()
os._exit(0)  # the bpy wheel can crash in its exit handlers after an export
"""

SHAPES = ("flat", "tall", "far", "sphere", "animated_root", "embedded_light")


def _make_folder(folder):
    folder.mkdir()
    trimesh.creation.box((2.0, 1.6, 0.004)).export(folder / "flat.stl")  # a thin plate
    trimesh.creation.cylinder(0.2, 4.0).export(folder / "tall.stl")  # a pole, 10:1
    far = trimesh.creation.box((3e3, 1e3, 2e3))
    far.apply_translation((4e5, -2e5, 7e4))
    far.export(folder / "far.stl")
    trimesh.creation.icosphere(3, radius=5.0).export(folder / "sphere.stl")  # fills the most
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(500, 3))).export(
        folder / "point_cloud.ply"
    )
    lines = "".join(f"v {x} {y} {z}\n" for x, y, z in np.random.default_rng(1).random((20, 3)))
    lines += "".join(f"l {i} {i + 1}\n" for i in range(1, 20))
    (folder / "lines_only.obj").write_text(lines)
    # three distinct files whose names sanitise alike
    for name, sample in (("a b", "car"), ("a.b", "mug"), ("a_b", "tree")):
        (folder / f"{name}.glb").write_bytes(sample_glb_bytes(sample))
    subprocess.run(
        [sys.executable, "-c", AUTHORED_FILES, str(folder)], check=True, capture_output=True
    )


def _config(root, **changes):
    settings = dict(
        source=str(root / "src"),
        out=str(root / "out"),
        res=32,
        samples=4,
        denoise=False,
        num_quads=1,
        num_refs=1,
        fov_deg=(55.0, 60.0),  # near the worst case of the framing: widest fov, closest camera
        relative_radius=(0.9, 0.95),
        ref_elevation_deg=(-10.0, 60.0),
        workers=2,
        progress=False,
    )
    return load_config(**(settings | changes))


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    _make_folder(root / "src")
    summary = render(_config(root))
    samples = {s["meta.json"]["id"]: s for s in iter_samples(root / "out")}
    return summary, samples, root


def test_every_proportion_is_whole_in_frame_with_a_margin(modes):
    _, samples, _ = modes
    for name in SHAPES:
        sample = samples[name]
        quality = sample["meta.json"]["quality"]
        for view in range(5):
            alpha = sample[f"{view:03d}.png"][..., 3]
            border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert border.max() == 0, f"{name} view {view} touches the image border"
            assert (alpha > 127).any(), f"{name} view {view} is empty"
        assert quality["border"] == [0.0] * 5 and quality["border_views"] == 0
        assert all(c > 0 for c in quality["coverage"]) and len(quality["mean_alpha"]) == 5
    # the sphere fills what the framing allows: large, but with a margin
    sphere = [(samples["sphere"][f"{v:03d}.png"][..., 3] > 127) for v in range(5)]
    widths = [np.ptp(np.nonzero(mask.any(0))[0]) + 1 for mask in sphere]
    assert all(20 <= w <= 29 for w in widths), widths
    assert samples["far"]["meta.json"]["normalisation"]["scale"] < 1e-3


def test_animated_root_keeps_its_normalisation_at_the_rendered_frame(modes):
    _, samples, _ = modes
    sample = samples["animated_root"]
    norm = sample["meta.json"]["normalisation"]
    assert norm["frame"] == 1 and norm["offset"] == pytest.approx([-6.0, 0.0, -3.0], abs=1e-4)
    for view in range(5):  # centred on the image, as big as a normalised cube is
        ys, xs = np.nonzero(sample[f"{view:03d}.png"][..., 3] > 127)
        assert abs((xs.min() + xs.max() + 1) / 2 - 16) <= 2.5, view
        assert abs((ys.min() + ys.max() + 1) / 2 - 16) <= 2.5, view
        assert 0.05 < len(xs) / 32**2 < 0.6, view


def test_lights_inside_a_file_are_removed_unless_kept(modes, tmp_path):
    _, samples, root = modes
    sample = samples["embedded_light"]
    assert "removed_imported: 1 light" in sample["meta.json"]["warnings"]
    front = sample["000.png"]
    removed = front[..., :3][front[..., 3] == 255].astype(float).mean()
    assert removed < 150  # a dark grey cube under our lighting, not blown out
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "embedded_light.glb").write_bytes(
        (root / "src" / "embedded_light.glb").read_bytes()
    )
    config = _config(tmp_path, num_refs=0, keep_imported_lights=True, workers=1)
    config.elevation_deg, config.azimuth_start_deg = (0.0, 0.0), 0.0  # face the light
    assert render(config).rendered == 1
    (lit,) = list(iter_samples(tmp_path / "out"))
    assert not lit["meta.json"]["warnings"]
    image = lit["000.png"]
    assert image[..., :3][image[..., 3] == 255].astype(float).mean() > removed + 40


def test_point_clouds_and_lines_fail_as_empty_views(modes):
    summary, samples, root = modes
    assert summary.failed == {"point_cloud": "empty_view", "lines_only": "empty_view"}
    manifest = read_partition(root / "out")
    assert "nearly empty" in manifest["failed"]["point_cloud"]["detail"]
    assert "point_cloud" not in samples and "lines_only" not in samples


def test_files_whose_names_sanitise_alike_get_distinct_keys(modes):
    _, samples, root = modes
    keys = {name: samples[name]["__key__"] for name in ("a b", "a.b", "a_b")}
    assert len(set(keys.values())) == 3 and keys["a_b"] == "a_b"
    assert all(key == sample_key(name) for name, key in keys.items())
    vertices = {samples[name]["meta.json"]["normalisation"]["num_vertices"] for name in keys}
    assert len(vertices) == 3  # each key holds its own file's object


def test_resume_with_changed_lighting_or_layout_is_refused(modes):
    _, _, root = modes
    with pytest.raises(ValueError, match="ambient=0.75.*ambient=0.5"):
        render(_config(root, ambient=0.5))
    with pytest.raises(ValueError, match="denoise"):
        render(_config(root, denoise=True))
    with pytest.raises(ValueError, match="partitions"):
        render(_config(root, part_index=1, part_count=2))
    again = render(_config(root, workers=1))  # execution settings may change
    assert again.rendered == 0 and again.skipped == len(SHAPES) + 5

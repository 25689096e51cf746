"""Real multi-file assets for the render tests, authored by Blender itself in a subprocess: a cube
whose every face shows one texture (a flat green PNG), exported as FBX, glTF with a separate
image, USDA, USDZ, Collada, Alembic and ``.blend``, plus hand-written OBJ+MTL files; then moved
the way downloaded assets arrive (absolute paths of the author's machine, Windows separators,
other letter case, textures in a sub-folder)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

GREEN = (30, 200, 40)

AUTHOR = """
import os, sys, bpy, bmesh
from pathlib import Path
build, image_path = Path(sys.argv[1]), sys.argv[2]

def cube(name, size=1.0, loc=(0, 0, 0)):
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=size, calc_uvs=True)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    obj.location = loc
    bpy.context.scene.collection.objects.link(obj)
    return obj

bpy.ops.wm.read_factory_settings(use_empty=True)
material = bpy.data.materials.new("textured")
material.use_nodes = True
bsdf = material.node_tree.nodes["Principled BSDF"]
bsdf.inputs["Base Color"].default_value = (1, 1, 1, 1)  # white: a lost texture shows white
bsdf.inputs["Metallic"].default_value = 0.0
node = material.node_tree.nodes.new("ShaderNodeTexImage")
node.image = bpy.data.images.load(image_path)
material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
cube("cube").data.materials.append(material)
bpy.ops.export_scene.fbx(filepath=str(build / "model.fbx"), path_mode="ABSOLUTE")
bpy.ops.export_scene.gltf(filepath=str(build / "model.gltf"), export_format="GLTF_SEPARATE")
bpy.ops.wm.usd_export(filepath=str(build / "model.usda"))
bpy.ops.wm.usd_export(filepath=str(build / "model.usdz"))
bpy.ops.wm.collada_export(filepath=str(build / "model.dae"))
bpy.ops.wm.alembic_export(filepath=str(build / "model.abc"), as_background_job=False)
helper = cube("helper", size=40.0, loc=(300.0, 0.0, 0.0))  # a hidden helper far away
helper.hide_render = True
bpy.ops.wm.save_as_mainfile(filepath=str(build / "model.blend"))
sys.stdout.flush()
os._exit(0)  # the bpy wheel can crash in its exit handlers after an export
"""

OBJ = """mtllib cube.mtl
v -0.5 -0.5 -0.5
v 0.5 -0.5 -0.5
v 0.5 0.5 -0.5
v -0.5 0.5 -0.5
v -0.5 -0.5 0.5
v 0.5 -0.5 0.5
v 0.5 0.5 0.5
v -0.5 0.5 0.5
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl textured
f 1/1 4/4 3/3 2/2
f 5/1 6/2 7/3 8/4
f 1/1 2/2 6/3 5/4
f 2/1 3/2 7/3 6/4
f 3/1 4/2 8/3 7/4
f 4/1 1/2 5/3 8/4
"""


def _obj(folder: Path, map_kd: str) -> None:
    folder.mkdir(parents=True)
    (folder / "cube.obj").write_text(OBJ)
    (folder / "cube.mtl").write_text(f"newmtl textured\nKd 1 1 1\nmap_Kd {map_kd}\n")


def make_assets(root: Path) -> dict[str, str]:
    """Write the assets under ``root`` (one folder each); returns object id -> what it tests."""
    build = root.parent / (root.name + "_build")
    build.mkdir(parents=True)
    green = build / "green.png"
    Image.new("RGB", (16, 16), GREEN).save(green)
    subprocess.run(
        [sys.executable, "-c", AUTHOR, str(build), str(green)], check=True, capture_output=True
    )
    cases = {}
    # OBJ whose PNG lies beside it (Blender finds it but loads it lazily)
    _obj(root / "obj_beside", "green.png")
    shutil.copy(green, root / "obj_beside" / "green.png")
    cases["obj_beside/cube"] = "relative path"
    # OBJ naming a Windows absolute path, other case, the file in a sub-folder
    _obj(root / "obj_moved", r"C:\Users\artist\Maps\Green.PNG")
    (root / "obj_moved" / "maps").mkdir()
    shutil.copy(green, root / "obj_moved" / "maps" / "green.png")
    cases["obj_moved/cube"] = "absolute Windows path, case"
    _obj(root / "obj_missing", "gone.png")  # truly missing: recorded, base colour shows
    cases["obj_missing/cube"] = "missing"
    # FBX with the author's absolute path (deleted below); the texture now in maps/
    (root / "fbx" / "maps").mkdir(parents=True)
    shutil.copy(build / "model.fbx", root / "fbx" / "model.fbx")
    shutil.copy(green, root / "fbx" / "maps" / "green.png")
    cases["fbx/model"] = "absolute path"
    # .gltf + .bin + image whose file name differs in case from the URI
    (root / "gltf").mkdir()
    for name in ("model.gltf", "model.bin"):
        shutil.copy(build / name, root / "gltf" / name)
    shutil.copy(green, root / "gltf" / "GREEN.png")
    cases["gltf/model"] = "case"
    (root / "usda" / "textures").mkdir(parents=True)
    shutil.copy(build / "model.usda", root / "usda" / "model.usda")
    shutil.copy(build / "textures" / "green.png", root / "usda" / "textures" / "green.png")
    cases["usda/model"] = "relative path"
    (root / "usdz").mkdir()
    shutil.copy(build / "model.usdz", root / "usdz" / "model.usdz")
    cases["usdz/model"] = "packed"
    (root / "dae").mkdir()
    # Blender 4.2 writes <texture> without the texcoord attribute its own importer requires
    dae = (build / "model.dae").read_text()
    dae = dae.replace(
        'texture="green_png-sampler"/>', 'texture="green_png-sampler" texcoord="UVMap"/>'
    )
    (root / "dae" / "model.dae").write_text(dae)
    shutil.copy(green, root / "dae" / "green.png")
    cases["dae/model"] = "relative path"
    (root / "abc").mkdir()
    shutil.copy(build / "model.abc", root / "abc" / "model.abc")
    cases["abc/model"] = "geometry only: the untextured colour"
    (root / "blend").mkdir()
    shutil.copy(build / "model.blend", root / "blend" / "model.blend")
    shutil.copy(green, root / "blend" / "green.png")
    cases["blend/model"] = "absolute path, hidden helper"
    shutil.rmtree(build)  # every path written at authoring time is gone now
    return cases

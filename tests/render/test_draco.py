"""Draco-compressed glTF renders where a decoder library is given (built here from the system's
Draco library by data_prep.draco_library) and fails with reason ``draco`` where none is."""

from __future__ import annotations

import json
import struct
import subprocess

import numpy as np
import pytest
import trimesh

from data_prep.config import load_config
from data_prep.draco_library import build
from data_prep.manifest import read_partition
from data_prep.render import render
from data_prep.summary import iter_samples

RED = (220, 30, 30)


def _draco_glb(folder, name: str) -> int:
    """A box twice as tall as wide with red vertex colours, its geometry only in a Draco buffer
    (encoded by Debian's draco_encoder): ``name``.glb. Returns its vertex count."""
    box = trimesh.creation.box((0.4, 0.8, 0.4))  # tall along glTF's +Y (up)
    box.visual.vertex_colors = np.tile([*RED, 255], (len(box.vertices), 1)).astype(np.uint8)
    box.export(folder / f"{name}.ply", encoding="ascii")
    subprocess.run(
        ["draco_encoder", "-i", f"{name}.ply", "-o", f"{name}.drc", "-cl", "7"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    drc = (folder / f"{name}.drc").read_bytes()
    (folder / f"{name}.ply").unlink()
    (folder / f"{name}.drc").unlink()
    count, faces = len(box.vertices), len(box.faces)
    extension = {"bufferView": 0, "attributes": {"POSITION": 0, "COLOR_0": 1}}
    draco = ["KHR_draco_mesh_compression"]
    gltf = {
        "asset": {"version": "2.0"},
        "extensionsUsed": draco,
        "extensionsRequired": draco,
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [
            {
                "primitives": [
                    {
                        "attributes": {"POSITION": 0, "COLOR_0": 1},
                        "indices": 2,
                        "extensions": {draco[0]: extension},
                    }
                ]
            }
        ],
        "accessors": [
            {"componentType": 5126, "count": count, "type": "VEC3"}
            | {"min": box.bounds[0].tolist(), "max": box.bounds[1].tolist()},
            {"componentType": 5121, "normalized": True, "count": count, "type": "VEC4"},
            {"componentType": 5125, "count": faces * 3, "type": "SCALAR"},
        ],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(drc)}],
        "buffers": [{"byteLength": len(drc)}],
    }
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    binary = drc + b"\0" * (-len(drc) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text
    body += struct.pack("<II", len(binary), 0x004E4942) + binary
    (folder / f"{name}.glb").write_bytes(b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body)
    return count


def test_draco_glb_renders_with_a_decoder_library_and_is_recorded_without(tmp_path):
    library = build(tmp_path / "lib")
    src = tmp_path / "src"
    src.mkdir()
    vertices = _draco_glb(src, "tall_box")
    tiny = dict(res=32, samples=4, denoise=False, num_quads=0, num_refs=1, key_light=0.0)
    tiny |= dict(progress=False, ref_elevation_deg=(0.0, 0.0))  # seen from the side
    without = render(load_config(source=str(src), out=str(tmp_path / "without"), **tiny))
    assert without.failed == {"tall_box": "draco"}
    detail = read_partition(tmp_path / "without")["failed"]["tall_box"]["detail"]
    assert "draco_library" in detail

    config = load_config(source=str(src), out=str(tmp_path / "with"), **tiny)
    config.draco_library = str(library)
    summary = render(config)
    assert summary.rendered == 1 and not summary.failed, summary.failed
    [sample] = list(iter_samples(tmp_path / "with"))
    meta, view = sample["meta.json"], sample["000.png"]
    assert meta["normalisation"]["num_vertices"] == vertices
    assert meta["normalisation"]["num_faces"] == 12
    # the decoded colours: red, not the untextured grey
    rgb = view[..., :3][view[..., 3] == 255].astype(float)
    mean = rgb.mean(0)
    assert mean[0] > mean[1] + 80 and mean[0] > mean[2] + 80, mean
    # the decoded shape: seen from the side (any azimuth), 2 to 1.4 times as tall as wide
    rows, cols = np.nonzero(view[..., 3] > 127)
    aspect = (np.ptp(rows) + 1) / (np.ptp(cols) + 1)
    assert 1.3 < aspect < 2.4, aspect


def test_building_without_a_compiler_names_what_to_install(tmp_path):
    with pytest.raises(RuntimeError, match="apt-get install g\\+\\+ libdraco-dev"):
        build(tmp_path / "lib", compiler="no-such-compiler")
    assert not (tmp_path / "lib").exists()

"""The Blender render worker: a long-lived process that renders one object per job.

Started by :mod:`data_prep.pool` as ``python -m data_prep.blender_worker --result-fd N``. Jobs
arrive as JSON lines on stdin; each result goes back as one JSON line on the result pipe (stdout
and stderr carry Blender's own chatter and go to a log file). The parent enforces the hard
per-object timeout by killing this process, so nothing here needs to guard against hangs.
Cameras arrive as ready-made camera-to-world matrices, so this process never imports torch.

Job: ``{"id", "path", "out_dir", "views": [{"c2w": 4x4, "fov_deg"}], "settings": {...}}``.
Result: ``{"id", "ok", "reason", "detail", "warnings", "normalisation", "device", "timing"}``;
on success ``out_dir`` holds the shard members under their names (models/shards/format.py): the
views ``000.png``... and optionally ``depth.npy`` / ``normal.npy`` / ``albedo.npy``. Optional job
keys: ``asset_root`` (where external textures are searched; default the file's folder),
``lighting_seed`` (seeds the randomised lighting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import bpy
import numpy as np

from data_prep import blender_lighting, blender_materials
from data_prep import blender_scene as bs
from models.shards.format import ALBEDO, DEPTH, NORMAL, view_name

JOB_LOG = "blender.log"  # per-job log inside the job's out_dir


# pass name -> (render-layer socket, channels kept, file name in the sample)
PASSES = {"depth": ("Depth", 1, DEPTH), "normal": ("Normal", 3, NORMAL)}
PASSES["albedo"] = ("DiffCol", 3, ALBEDO)


def _setup_passes(out_dir: Path, wanted: list[str]):
    """Compositor File Output of the wanted passes as 32-bit EXR (read back below)."""
    if not wanted:
        return None
    scene = bpy.context.scene
    layer = scene.view_layers[0]
    layer.use_pass_z = "depth" in wanted
    layer.use_pass_normal = "normal" in wanted
    layer.use_pass_diffuse_color = "albedo" in wanted
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    render_layers = tree.nodes.new("CompositorNodeRLayers")
    composite = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(render_layers.outputs["Image"], composite.inputs["Image"])
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.base_path = str(out_dir / "passes")
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.file_slots.clear()
    for name in wanted:
        output.file_slots.new(f"{name}_")
        tree.links.new(render_layers.outputs[PASSES[name][0]], output.inputs[f"{name}_"])
    return output


def _read_exr(path: Path, channels: int) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    width, height = image.size
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    bpy.data.images.remove(image)
    # Blender stores rows bottom-up.
    return pixels.reshape(height, width, 4)[::-1, :, :channels].copy()


def render_job(job: dict) -> dict:
    settings = job["settings"]
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.get("draco_library"):  # read by the glTF add-on when it meets Draco
        os.environ["BLENDER_EXTERN_DRACO_LIBRARY_PATH"] = str(settings["draco_library"])
    timing: dict[str, float] = {}
    start = time.perf_counter()
    bs.reset_scene()
    path = Path(job["path"])
    gltf = bs.import_mesh(path)
    timing["import"] = time.perf_counter() - start
    warnings = (
        [] if settings.get("keep_imported_lights") else bs.remove_imported_lights_and_cameras()
    )
    textures = blender_materials.resolve_textures(Path(job.get("asset_root") or path.parent))
    warnings += [f"missing_texture: {name}" for name in textures["missing"]]
    normalisation = bs.normalise_object(float(settings["object_radius"]))
    warnings += blender_materials.fix_materials(
        bs.mesh_objects(),
        gltf,
        settings.get("missing_metallic_as", 0.0),
        tuple(settings.get("untextured_color", blender_materials.DEFAULT_UNTEXTURED)),
    )
    lighting = blender_lighting.setup_lighting(settings, int(job.get("lighting_seed", 0)))
    device = bs.setup_cycles(settings)
    camera = bs.add_camera()
    wanted = [name for name in PASSES if settings.get(name)]
    passes = _setup_passes(out_dir, wanted)
    timing["setup"] = time.perf_counter() - start - timing["import"]
    stacks: dict[str, list] = {name: [] for name in wanted}
    render_start = time.perf_counter()
    view_seconds = []
    for index, view in enumerate(job["views"]):
        view_start = time.perf_counter()
        bs.place_camera(camera, view["c2w"], view["fov_deg"])
        bpy.context.scene.render.filepath = str(out_dir / view_name(index))
        # The frame stays fixed (animated assets keep one pose in every view), so each view's
        # pass files get their own folder instead of a frame number.
        view_passes = out_dir / "passes" / f"{index:03d}"
        if passes is not None:
            passes.base_path = str(view_passes)
        bpy.ops.render.render(write_still=True)
        frame = f"{bpy.context.scene.frame_current:04d}.exr"
        for name in wanted:
            pixels = _read_exr(view_passes / f"{name}_{frame}", PASSES[name][1])
            if name == "depth":
                pixels = np.where(pixels[..., 0] > 1e9, 0.0, pixels[..., 0])  # background -> 0
            stacks[name].append(pixels)
        view_seconds.append(time.perf_counter() - view_start)
    timing["render"] = time.perf_counter() - render_start
    for name, frames in stacks.items():
        np.save(out_dir / PASSES[name][2], np.stack(frames).astype(np.float16))
    return {
        "ok": True,
        "warnings": warnings,
        "normalisation": normalisation,
        "textures": textures,
        "lighting": lighting,
        "device": device,
        "blender": bpy.app.version_string,
        "timing": timing,
        "view_seconds": view_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args()
    results = os.fdopen(args.result_fd, "w", buffering=1)
    results.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    saved = os.dup(1), os.dup(2)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
        # Blender's chatter goes to a per-job log: the parent keeps its tail only on failure,
        # so logs stay small over millions of objects.
        with open(Path(job["out_dir"]) / JOB_LOG, "wb") as log:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                result = render_job(job)
            except bs.RenderFailure as failure:
                result = {"ok": False, "reason": failure.reason, "detail": failure.detail}
            except Exception as error:  # anything else: report it, keep serving jobs
                traceback.print_exc()
                result = {"ok": False, "reason": "render_error", "detail": repr(error)[:500]}
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        result["id"], result["pid"] = job["id"], os.getpid()  # pid: recycling is visible
        results.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

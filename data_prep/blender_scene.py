"""Scene building inside the Blender worker: import one mesh file, normalise it to the framing
of ``models/cameras.py``, make its materials render faithfully, light it and set up Cycles.

Runs only in the worker process (imports ``bpy``; no torch). Failures raise :class:`RenderFailure`
with a short machine-readable reason that ends up in the run manifest.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix


class RenderFailure(Exception):
    """An object that cannot be rendered; ``reason`` is one of the manifest's failure reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def reset_scene() -> None:
    """Empty factory scene (one ``import bpy`` per process; reset between objects)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    # Untrusted files must never run embedded Python.
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False


def read_gltf_json(path: Path) -> dict:
    """The JSON part of a .gltf or .glb file (header only: cheap even for large files)."""
    with open(path, "rb") as handle:
        head = handle.read(20)
        if path.suffix.lower() == ".gltf":
            return json.loads(head + handle.read())
        if len(head) < 20 or head[:4] != b"glTF":
            raise RenderFailure("corrupt_file", "not a GLB file (bad magic)")
        chunk_length, chunk_type = struct.unpack("<II", head[12:20])
        if chunk_type != 0x4E4F534A:  # "JSON"
            raise RenderFailure("corrupt_file", "GLB without a JSON chunk")
        try:
            return json.loads(handle.read(chunk_length))
        except ValueError as error:
            raise RenderFailure("corrupt_file", f"GLB JSON unreadable: {error}") from None


def draco_available() -> bool:
    """Whether the glTF add-on finds its Draco decoder library (the bpy wheel ships none; point
    ``BLENDER_EXTERN_DRACO_LIBRARY_PATH`` or the ``draco_library`` setting at one)."""
    from io_scene_gltf2.io.com.gltf2_io_draco_compression_extension import dll_exists

    return dll_exists(quiet=True)


def _append_blend(path: Path) -> None:
    """Bring the first scene of a ``.blend`` into ours by appending (never ``open_mainfile``,
    which would replace our render settings); auto-run of its scripts is off (reset_scene).
    Collections are linked whole, so their render visibility stays."""
    with bpy.data.libraries.load(str(path), link=False) as (found, wanted):
        if not found.scenes:
            raise RenderFailure("no_mesh", ".blend file without a scene")
        wanted.scenes = [found.scenes[0]]
    scene = bpy.context.scene
    for loaded in wanted.scenes:
        if loaded is None:
            raise RenderFailure("corrupt_file", ".blend scene could not be read")
        for child in loaded.collection.children:
            scene.collection.children.link(child)
        for obj in loaded.collection.objects:
            scene.collection.objects.link(obj)
        scene.frame_current = loaded.frame_current
        bpy.data.scenes.remove(loaded)


def import_mesh(path: Path) -> dict:
    """Import ``path`` by extension; returns the glTF JSON (or {}) for later material fixes."""
    if not path.is_file() or path.stat().st_size == 0:
        raise RenderFailure("corrupt_file", f"missing or empty file {path.name}")
    suffix = path.suffix.lower()
    gltf: dict = {}
    if suffix in (".glb", ".gltf"):
        try:
            gltf = read_gltf_json(path)
        except (ValueError, UnicodeDecodeError) as error:
            raise RenderFailure("corrupt_file", f"glTF JSON unreadable: {error}") from None
        used = set(gltf.get("extensionsUsed", [])) | set(gltf.get("extensionsRequired", []))
        if "KHR_draco_mesh_compression" in used and not draco_available():
            raise RenderFailure(
                "draco",
                "Draco-compressed glTF and no Draco decoder library (set draco_library or "
                "BLENDER_EXTERN_DRACO_LIBRARY_PATH to libextern_draco.so)",
            )
    file = str(path)
    importers = {
        ".glb": lambda: bpy.ops.import_scene.gltf(filepath=file),
        ".gltf": lambda: bpy.ops.import_scene.gltf(filepath=file),
        ".obj": lambda: bpy.ops.wm.obj_import(filepath=file),
        ".fbx": lambda: bpy.ops.import_scene.fbx(filepath=file),
        ".ply": lambda: bpy.ops.wm.ply_import(filepath=file),
        ".stl": lambda: bpy.ops.wm.stl_import(filepath=file),
        ".dae": lambda: bpy.ops.wm.collada_import(filepath=file),
        ".abc": lambda: bpy.ops.wm.alembic_import(filepath=file, as_background_job=False),
        ".blend": lambda: _append_blend(path),
    }
    for usd in (".usd", ".usda", ".usdc", ".usdz"):
        importers[usd] = lambda: bpy.ops.wm.usd_import(filepath=file)
    if suffix not in importers:
        raise RenderFailure("unsupported_format", suffix)
    try:
        result = importers[suffix]()
    except (RuntimeError, ValueError, KeyError, IndexError, OSError, struct.error) as error:
        raise RenderFailure("corrupt_file", str(error).strip().splitlines()[-1][:300]) from None
    if isinstance(result, set) and "CANCELLED" in result:  # some importers cancel, not raise
        raise RenderFailure("corrupt_file", f"the {suffix} importer gave up on {path.name}")
    return gltf


RENDERABLE = ("MESH", "CURVE", "SURFACE", "META", "FONT")


def _hidden_collections() -> set:
    """Collections that do not render (their own flag or an ancestor's)."""
    hidden, stack = set(), [(bpy.context.scene.collection, False)]
    while stack:
        collection, off = stack.pop()
        off = off or collection.hide_render
        if off:
            hidden.add(collection.name)
        stack.extend((child, off) for child in collection.children)
    return hidden


def mesh_objects(renderable_only: bool = False) -> list:
    """Mesh objects of the scene; ``renderable_only``: every kind that renders (curves, text...)
    and is not hidden from rendering (helper objects, collision boxes, hidden variants), the
    objects that define the framing."""
    if not renderable_only:
        return [o for o in bpy.context.scene.objects if o.type == "MESH"]
    hidden = _hidden_collections()
    return [
        o
        for o in bpy.context.scene.objects
        if o.type in RENDERABLE
        and not o.hide_render
        and not any(c.name in hidden for c in o.users_collection)
    ]


def remove_imported_lights_and_cameras() -> list[str]:
    """Delete the lights and cameras a file brought along (a glTF point light can turn a view
    pure white; our own lighting and camera are the same for every object). Returns warnings."""
    removed = [o for o in bpy.context.scene.objects if o.type in ("LIGHT", "CAMERA", "LIGHT_PROBE")]
    kinds = sorted({o.type.lower() for o in removed})
    for obj in removed:
        bpy.data.objects.remove(obj, do_unlink=True)
    return [f"removed_imported: {len(removed)} {'/'.join(kinds)}"] if removed else []


def world_vertices(objects: list) -> tuple[np.ndarray, int]:
    """Evaluated (modifiers, armatures, animation at the current frame) vertices in world
    coordinates ``[N, 3]``: those used by faces when any face exists (loose points and edges
    do not render, so they must not shrink the object), else all of them. Also the face count."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    surface, loose, faces = [], [], 0
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        mesh = evaluated.to_mesh()
        coords = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", coords)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
        coords = coords.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
        used = np.empty(len(mesh.loops), dtype=np.int64)
        mesh.loops.foreach_get("vertex_index", used)
        faces += len(mesh.polygons)
        loose.append(coords)
        if len(mesh.polygons):
            surface.append(coords[np.unique(used)])
        evaluated.to_mesh_clear()
    chunks = surface or loose
    return (np.concatenate(chunks) if chunks else np.zeros((0, 3))), faces


def normalise_object(radius_target: float) -> dict:
    """Centre the bounding box of the surface on the origin and scale its bounding sphere to
    ``radius_target`` (``models.cameras.OBJECT_RADIUS``), at the frame that will be rendered.

    The transform goes on a new empty that becomes the parent of every root object, so root
    objects whose location/rotation/scale is keyframed keep their animation *inside* the
    normalisation instead of having it overwritten at render time. Returns the applied
    ``scale`` and ``offset`` (world = (original + offset) * scale)."""
    scene = bpy.context.scene
    scene.frame_set(scene.frame_current)  # evaluate animation at the rendered frame
    vertices, faces = world_vertices(mesh_objects(renderable_only=True))
    if len(vertices) == 0:
        raise RenderFailure("no_mesh", "file contains no mesh geometry")
    if not np.isfinite(vertices).all():
        raise RenderFailure("degenerate_bounds", "non-finite vertex coordinates")
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(vertices - centre, axis=1).max())
    if not radius > 1e-9 or not math.isfinite(radius):
        raise RenderFailure("degenerate_bounds", f"bounding radius {radius:g}")
    scale = radius_target / radius
    roots = [o for o in scene.objects if o.parent is None]
    holder = bpy.data.objects.new("normalisation", None)
    scene.collection.objects.link(holder)
    holder.matrix_world = Matrix.Scale(scale, 4) @ Matrix.Translation(-centre)
    for obj in roots:
        obj.parent = holder
        obj.matrix_parent_inverse = Matrix.Identity(4)  # world = holder @ own (animated) basis
    bpy.context.view_layer.update()
    return {
        "scale": scale,
        "offset": (-centre).tolist(),
        "radius": radius_target,
        "num_vertices": int(len(vertices)),
        "num_faces": int(faces),
        "frame": int(scene.frame_current),
    }


def setup_cycles(settings: dict) -> str:
    """Cycles at the requested resolution/samples on GPU (OptiX, then CUDA) when asked and
    present, else CPU. Returns the device actually used."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.render.resolution_x = scene.render.resolution_y = int(settings["res"])
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"  # AgX/Filmic would shift colours
    scene.view_settings.look = "None"
    scene.cycles.samples = int(settings["samples"])
    threshold = float(settings.get("adaptive_threshold", 0.01))
    scene.cycles.use_adaptive_sampling = threshold > 0  # stop early where the image converged
    if threshold > 0:
        scene.cycles.adaptive_threshold = threshold
    scene.cycles.use_denoising = bool(settings["denoise"])
    # Views of one object differ only by the camera: keep the scene's render data (BVH, images,
    # shaders) between them instead of rebuilding it per view (seconds for a heavy mesh).
    scene.render.use_persistent_data = bool(settings.get("persistent_data", True))
    scene.cycles.max_bounces = int(settings.get("max_bounces", 4))
    if settings.get("threads"):
        scene.render.threads_mode = "FIXED"
        scene.render.threads = int(settings["threads"])
    device = "CPU"
    if settings.get("device", "auto") != "cpu":
        prefs = bpy.context.preferences.addons["cycles"].preferences
        wanted = {"auto": ["OPTIX", "CUDA"], "optix": ["OPTIX"], "cuda": ["CUDA"]}
        for kind in wanted.get(settings["device"], []):
            try:
                prefs.compute_device_type = kind
            except TypeError:
                continue
            prefs.get_devices()
            gpus = [d for d in prefs.devices if d.type == kind]
            if gpus:
                for d in prefs.devices:
                    d.use = d.type == kind
                device = kind
                break
    scene.cycles.device = "GPU" if device != "CPU" else "CPU"
    if device != "CPU" and hasattr(scene.cycles, "denoising_use_gpu"):
        scene.cycles.denoising_use_gpu = True  # OIDN/OptiX denoise on the worker's GPU
    return device


def add_camera() -> bpy.types.Object:
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "AUTO"  # square image: the angle is the full fov both ways
    camera = bpy.data.objects.new("camera", data)
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


def place_camera(camera, c2w: list, fov_deg: float) -> None:
    """OpenGL camera axes (look down -Z, +Y up) are Blender's, so c2w is the object matrix."""
    camera.matrix_world = Matrix(c2w)
    camera.data.angle = math.radians(fov_deg)
    camera.data.clip_start = 0.01
    camera.data.clip_end = 1000.0

"""Materials inside the Blender worker: find every external texture that exists, give meshes
without a material a documented colour, and keep glTF's metal default from darkening renders.

External textures (OBJ+MTL, FBX, ``.gltf`` with separate images, ``.blend``) are named by a path
written on the author's machine: relative, absolute (often a Windows path), or with another
letter case than the file on disk. Blender loads an image lazily (``image.has_data`` stays False
until something reads its pixels), so the only reliable test is to load it. Each image that does
not load from its own path is looked up by name under the asset's folder, case-insensitively,
preferring the candidate whose trailing folders match the written path best. Runs only in the
worker process (imports ``bpy``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import bpy

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tga", ".bmp", ".tif", ".tiff", ".exr", ".hdr"}
IMAGE_SUFFIXES |= {".webp", ".dds", ".psd", ".gif", ".jp2"}
# Meshes with neither material nor vertex colours (STL, bare OBJ/PLY): a light grey, sRGB 0.906
# (Blender's default base colour, linear 0.8), documented as ``untextured_color``.
DEFAULT_UNTEXTURED = (0.906, 0.906, 0.906)
INDEX_LIMIT = 20000  # files looked at under the asset folder (a whole GitHub repository at most)


def principled_nodes(material) -> list:
    if not material or not material.use_nodes:
        return []
    return [n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"]


def srgb_to_linear(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def plain_material(name: str, colour_attribute: str | None, srgb: tuple[float, float, float]):
    """A matte material: the vertex colours when there are any, else the ``srgb`` colour."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    bsdf = principled_nodes(material)[0]
    bsdf.inputs["Metallic"].default_value = 0.0
    bsdf.inputs["Roughness"].default_value = 0.6
    bsdf.inputs["Base Color"].default_value = (*(srgb_to_linear(c) for c in srgb), 1.0)
    if colour_attribute:
        node = material.node_tree.nodes.new("ShaderNodeVertexColor")
        node.layer_name = colour_attribute
        material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def _image_files(root: Path) -> dict[str, list[Path]]:
    """Lower-case file name -> image files under ``root`` (bounded: at most INDEX_LIMIT files)."""
    index: dict[str, list[Path]] = {}
    for count, path in enumerate(root.rglob("*")):
        if count >= INDEX_LIMIT:
            break
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.name.lower(), []).append(path)
    return index


def _best_match(written: str, candidates: list[Path]) -> Path:
    """The candidate whose trailing folders agree longest with the written path, then the
    shortest path (the file nearest the asset)."""
    parts = [p.lower() for p in re.split(r"[\\/]+", written) if p and p not in (".", "..")]

    def score(path: Path) -> tuple[int, int]:
        mine = [p.lower() for p in path.parts]
        same = 0
        while same < min(len(parts), len(mine)) and parts[-1 - same] == mine[-1 - same]:
            same += 1
        return (-same, len(path.parts))

    return min(candidates, key=score)


def _loads(image) -> bool:
    """Load the image now (reading ``size`` does) and tell whether it has pixels."""
    try:
        image.reload()
        return image.size[0] > 0 and image.size[1] > 0
    except (RuntimeError, ReferenceError):
        return False


def resolve_textures(asset_root: Path) -> dict:
    """Point every external image at a file that exists (see the module docstring); images that
    stay unloadable are unplugged so the material's colour factor shows instead of Cycles'
    magenta. Returns ``{"external", "relinked", "missing": [names]}`` for meta.json."""
    index = None
    external, relinked, missing = 0, [], []
    for image in list(bpy.data.images):
        if image.source not in ("FILE", "SEQUENCE", "TILED") or image.packed_file is not None:
            continue
        external += 1
        written = image.filepath_raw or image.filepath
        path = bpy.path.abspath(image.filepath)
        if os.path.isfile(path) and _loads(image):
            continue
        name = re.split(r"[\\/]+", written)[-1] if written else ""
        if name:
            index = _image_files(asset_root) if index is None else index
            candidates = index.get(name.lower(), [])
            if candidates:
                # a fresh image: one that failed to load once keeps failing after a reload
                try:
                    found = bpy.data.images.load(str(_best_match(written, candidates)))
                except RuntimeError:
                    found = None
                if found is not None and _loads(found):
                    image.user_remap(found)
                    bpy.data.images.remove(image)
                    relinked.append(name)
                    continue
        missing.append(name or image.name)
        _unplug(image)
    return {"external": external, "relinked": sorted(relinked), "missing": sorted(missing)}


def _unplug(image) -> None:
    for material in bpy.data.materials:
        if not material.use_nodes:
            continue
        tree = material.node_tree
        for node in tree.nodes:
            if node.type == "TEX_IMAGE" and node.image == image:
                for link in list(tree.links):
                    if link.from_node == node:
                        tree.links.remove(link)


def fix_materials(
    meshes: list,
    gltf: dict,
    missing_metallic_as: float | None,
    untextured_srgb: tuple[float, float, float],
) -> list[str]:
    """Make materials render their true colours; returns warnings for the manifest.

    - meshes without material get a matte one showing their vertex colours (PLY, OBJ, glTF
      COLOR_0) or, without those, ``untextured_srgb`` (STL, bare OBJ/PLY);
    - glTF materials that omit ``metallicFactor`` import as full metal (the spec default 1.0),
      which renders dark: they get ``missing_metallic_as`` unless it is None, with a warning
      (the asset may really be metal: the warning lets such objects be found).
    """
    warnings = []
    for obj in meshes:
        if any(slot.material for slot in obj.material_slots):
            continue
        attrs = obj.data.color_attributes
        name = (
            attrs.active_color.name
            if attrs.active_color
            else (attrs[0].name if len(attrs) else None)
        )
        obj.data.materials.clear()
        obj.data.materials.append(plain_material(f"auto_{obj.name}", name, untextured_srgb))
    if missing_metallic_as is not None:
        overridden = set()
        for index, spec in enumerate(gltf.get("materials", [])):
            pbr = spec.get("pbrMetallicRoughness", {})
            if "metallicFactor" in pbr or "metallicRoughnessTexture" in pbr:
                continue
            name = spec.get("name") or f"Material_{index}"
            for material in bpy.data.materials:
                if material.name == name or material.name.startswith(name + "."):
                    for bsdf in principled_nodes(material):
                        socket = bsdf.inputs["Metallic"]
                        if not socket.is_linked and socket.default_value != missing_metallic_as:
                            socket.default_value = missing_metallic_as
                            overridden.add(name)
        if overridden:
            warnings.append(
                f"metallic_override: {len(overridden)} glTF material(s) without metallicFactor "
                f"rendered with metallic {missing_metallic_as:g} (spec default 1.0)"
            )
    return warnings

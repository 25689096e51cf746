"""The built-in sample set: small coloured, asymmetric objects made procedurally with trimesh.

They need no network and ship as code, so tests, the demo and first-time users always have data.
Each object is modelled in Blender's world axes (z up, front facing -Y) and written as GLB, whose
axes are y up with the front on +Z; Blender's glTF importer maps glTF +Z back onto -Y, so every
sample's front is what a camera at azimuth 0 sees. ``front_marker`` has a red -Y face and is what
the geometry tests look for.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw
from trimesh.visual.material import PBRMaterial

# Blender (x, y, z) -> glTF (x, z, -y): inverse of the importer's (x, y, z) -> (x, -z, y).
_BLENDER_TO_GLTF = np.array(
    [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)

Part = tuple[trimesh.Trimesh, tuple[int, int, int]]

RED, GREEN, BLUE = (220, 30, 30), (40, 170, 60), (40, 80, 220)
YELLOW, WHITE, BLACK = (240, 200, 30), (235, 235, 235), (25, 25, 25)
BROWN, ORANGE, PURPLE, CYAN = (120, 75, 40), (245, 130, 30), (140, 60, 180), (40, 190, 200)


def _box(extents, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(extents, trimesh.transformations.translation_matrix(centre))


def _at(mesh: trimesh.Trimesh, centre, rotate_x_deg: float = 0.0) -> trimesh.Trimesh:
    if rotate_x_deg:
        mesh.apply_transform(
            trimesh.transformations.rotation_matrix(np.radians(rotate_x_deg), [1, 0, 0])
        )
    mesh.apply_translation(centre)
    return mesh


def srgb_to_linear(colour) -> np.ndarray:
    """glTF colour factors are linear; our palette is sRGB (what the renders should show)."""
    c = np.asarray(colour, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _material(colour, roughness: float = 0.6) -> PBRMaterial:
    # metallicFactor written explicitly: glTF's default is 1.0 (metal), which renders dark.
    return PBRMaterial(
        baseColorFactor=[*srgb_to_linear(colour), 1.0],
        metallicFactor=0.0,
        roughnessFactor=roughness,
    )


def front_marker_faces() -> dict[tuple[int, int, int], tuple[int, int, int]]:
    """front_marker's colour per outward face normal (evaluation's analytic cube holds the same)."""
    return {
        (0, -1, 0): RED,
        (0, 1, 0): BLUE,
        (1, 0, 0): GREEN,
        (-1, 0, 0): YELLOW,
        # a white top would vanish against the white background the model is trained on, and
        # SDS would carve it away: the top's silhouette is part of what the demo scores
        (0, 0, 1): PURPLE,
        (0, 0, -1): WHITE,
    }


def front_marker() -> list[Part]:
    """A cube with one colour per face; its front (-Y) is red, the geometry tests rely on it."""
    # One square per face of the unit cube, meeting edge to edge: overlapping slabs (as it was
    # built) gave coincident faces that Cycles rendered as black lines along every edge.
    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    parts = []
    for normal, colour in front_marker_faces().items():
        faces = np.flatnonzero(np.isclose(cube.face_normals @ np.array(normal, float), 1.0))
        parts.append((cube.submesh([faces], append=True), colour))
    return parts


def snowman() -> list[Part]:
    return [
        (_at(trimesh.creation.icosphere(3, 0.5), (0, 0, 0.5)), WHITE),
        (_at(trimesh.creation.icosphere(3, 0.35), (0, 0, 1.25)), WHITE),
        (_at(trimesh.creation.icosphere(3, 0.25), (0, 0, 1.8)), CYAN),
        (_at(trimesh.creation.cone(0.07, 0.4), (0, -0.22, 1.8), rotate_x_deg=90), ORANGE),
        (_at(trimesh.creation.cylinder(0.05, 0.9), (0.45, 0, 1.3), rotate_x_deg=0), BROWN),
    ]


def table_with_cup() -> list[Part]:
    parts = [(_box((1.6, 1.0, 0.08), (0, 0, 0.8)), BROWN)]
    for x in (-0.72, 0.72):
        for y in (-0.42, 0.42):
            parts.append((_box((0.08, 0.08, 0.8), (x, y, 0.4)), BLACK))
    parts.append((_at(trimesh.creation.cylinder(0.12, 0.25), (0.5, -0.2, 0.965)), RED))
    parts.append((_box((0.3, 0.2, 0.05), (-0.4, 0.1, 0.865)), BLUE))
    return parts


def mug() -> list[Part]:
    body = trimesh.creation.annulus(0.3, 0.4, 0.8)
    handle = trimesh.creation.torus(0.22, 0.05)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    return [
        (body, YELLOW),
        (_at(handle, (0.45, 0, 0)), PURPLE),
        (_box((0.2, 0.02, 0.2), (0, -0.41, 0.1)), BLUE),
    ]


def tree() -> list[Part]:
    return [
        (_at(trimesh.creation.cylinder(0.1, 0.6), (0, 0, 0.3)), BROWN),
        (_at(trimesh.creation.cone(0.5, 1.2), (0, 0, 0.5)), GREEN),
        (_at(trimesh.creation.icosphere(2, 0.09), (0.2, -0.25, 0.8)), RED),
        (_at(trimesh.creation.icosphere(2, 0.08), (-0.15, 0.2, 1.0)), YELLOW),
    ]


def car() -> list[Part]:
    parts = [
        (_box((0.8, 1.8, 0.35), (0, 0, 0.35)), RED),
        (_box((0.7, 0.8, 0.3), (0, 0.2, 0.67)), CYAN),
    ]
    for x in (-0.42, 0.42):
        for y in (-0.6, 0.6):
            wheel = trimesh.creation.cylinder(0.18, 0.12)
            wheel.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
            parts.append((_at(wheel, (x, y, 0.18)), BLACK))
    for x in (-0.25, 0.25):  # headlights on the front (-Y)
        parts.append((_box((0.15, 0.03, 0.08), (x, -0.9, 0.42)), YELLOW))
    return parts


def house() -> list[Part]:
    roof = trimesh.creation.extrude_triangulation(
        np.array([[-0.7, 0.0], [0.7, 0.0], [0.0, 0.6]]), np.array([[0, 1, 2]]), 1.2
    )
    # extruded along z: turn it so the ridge runs along y and the prism sits on the walls
    roof.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    roof.apply_translation((0, 0.6, 1.0))
    return [
        (_box((1.2, 1.0, 1.0), (0, 0, 0.5)), WHITE),
        (roof, RED),
        (_box((0.3, 0.03, 0.55), (-0.2, -0.51, 0.275)), BROWN),  # door on the front
        (_box((0.25, 0.03, 0.2), (0.3, -0.51, 0.65)), BLUE),
        (_box((0.15, 0.15, 0.5), (0.35, 0.2, 1.3)), BLACK),  # chimney
    ]


def letter_l() -> list[Part]:
    return [
        (_box((0.3, 0.3, 1.5), (0, 0, 0.75)), BLUE),
        (_box((0.9, 0.3, 0.3), (0.45, 0, 0.15)), ORANGE),
        (_box((0.3, 0.9, 0.3), (0, 0.45, 0.15)), GREEN),
    ]


def _checker_texture(size: int = 256) -> Image.Image:
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    cell = size // 8
    palette = [RED, WHITE, BLUE, YELLOW]
    for i in range(8):
        for j in range(8):
            draw.rectangle(
                [i * cell, j * cell, (i + 1) * cell - 1, (j + 1) * cell - 1],
                fill=palette[(i + 2 * j) % 4],
            )
    draw.rectangle([cell, cell, 3 * cell, 2 * cell], fill=GREEN)  # break the symmetry
    return image


def textured_crate() -> trimesh.Scene:
    """A box with a UV-mapped checker texture (exercises the image-texture path)."""
    mesh = trimesh.creation.box((1.0, 0.7, 0.8))
    mesh.unmerge_vertices()
    verts = mesh.vertices
    # planar UVs per face from the two axes the face spans
    normals = np.repeat(mesh.face_normals, 3, axis=0)  # unmerged: vertex i is in face i // 3
    axis = np.abs(normals).argmax(axis=1)
    uv = np.zeros((len(verts), 2))
    for a, (u, v) in {0: (1, 2), 1: (0, 2), 2: (0, 1)}.items():
        sel = axis == a
        uv[sel] = verts[sel][:, [u, v]] + 0.5
    material = PBRMaterial(
        baseColorTexture=_checker_texture(), metallicFactor=0.0, roughnessFactor=0.7
    )
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    knob = _at(trimesh.creation.icosphere(2, 0.15), (0.3, -0.2, 0.55))
    knob.visual = trimesh.visual.TextureVisuals(material=_material(PURPLE))
    scene = trimesh.Scene()
    scene.add_geometry(mesh.apply_transform(_BLENDER_TO_GLTF), node_name="crate")
    scene.add_geometry(knob.apply_transform(_BLENDER_TO_GLTF), node_name="knob")
    return scene


def rainbow_blob() -> trimesh.Scene:
    """A lumpy sphere with per-vertex colours and no material (the vertex-colour path)."""
    mesh = trimesh.creation.icosphere(4, 0.6)
    lumps = 1 + 0.25 * np.sin(3 * mesh.vertices[:, 0]) * np.cos(2 * mesh.vertices[:, 2])
    mesh.vertices *= lumps[:, None]
    mesh.vertices[:, 1] *= 0.7  # flatter front-to-back
    hue = (np.arctan2(mesh.vertices[:, 1], mesh.vertices[:, 0]) / (2 * np.pi)) % 1.0
    colours = (np.array([np.abs(np.sin(np.pi * (hue + k / 3))) for k in range(3)]).T * 255).astype(
        np.uint8
    )
    mesh.visual = trimesh.visual.ColorVisuals(
        mesh, vertex_colors=np.c_[colours, np.full(len(colours), 255)]
    )
    return trimesh.Scene({"blob": mesh.apply_transform(_BLENDER_TO_GLTF)})


def _scene_from_parts(parts: list[Part], roughness: float = 0.6) -> trimesh.Scene:
    scene = trimesh.Scene()
    for i, (mesh, colour) in enumerate(parts):
        mesh = mesh.copy()
        mesh.visual = trimesh.visual.TextureVisuals(material=_material(colour, roughness))
        scene.add_geometry(mesh.apply_transform(_BLENDER_TO_GLTF), node_name=f"part{i}")
    return scene


SAMPLES: dict[str, Callable[[], list[Part] | trimesh.Scene]] = {
    "front_marker": front_marker,
    "snowman": snowman,
    "table_with_cup": table_with_cup,
    "mug": mug,
    "tree": tree,
    "car": car,
    "house": house,
    "letter_l": letter_l,
    "textured_crate": textured_crate,
    "rainbow_blob": rainbow_blob,
}


# Samples rendered fully rough: front_marker's face colours are then (nearly) the same from every
# view, so a view-independent field -- what SDS makes -- can match its renders.
MATTE = {"front_marker": 1.0}


def sample_glb_bytes(name: str) -> bytes:
    """The GLB file of one built-in sample."""
    built = SAMPLES[name]()
    roughness = MATTE.get(name, 0.6)
    scene = built if isinstance(built, trimesh.Scene) else _scene_from_parts(built, roughness)
    buffer = io.BytesIO(scene.export(file_type="glb"))
    return buffer.getvalue()


def write_samples(folder: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the sample set (or ``names`` from it) as GLB files into ``folder``; files already
    there are kept, so repeated calls are cheap. Returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(SAMPLES):
        if name not in SAMPLES:
            raise KeyError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}")
        path = folder / f"{name}.glb"
        if not path.exists():
            tmp = path.with_suffix(".glb.tmp")
            tmp.write_bytes(sample_glb_bytes(name))
            tmp.rename(path)
        paths[name] = path
    return paths

"""Lighting inside the Blender worker: the fixed default, or a seeded random setup per object.

Default (``light_randomization: false`` and no ``hdri_folder``): a uniform white environment
(a diffuse surface of albedo c renders close to c) plus one soft key light from above-front-left
for shape cues. Randomised: the environment's strength, 1 to 3 area or sun lights at random
directions and energies, and, with an HDRI folder, one of its images as the environment at a
random rotation. The choice is seeded by the object (the same object lights the same way on any
machine) and returned, so meta.json records exactly what lit each object. The background stays
transparent in every case. Runs only in the worker process (imports ``bpy``).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import bpy

HDRI_SUFFIXES = (".hdr", ".exr")


def _world(strength: float, hdri: Path | None = None, rotation_deg: float = 0.0) -> None:
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    background = nodes["Background"]
    background.inputs["Strength"].default_value = strength
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    if hdri is not None:
        texture = nodes.new("ShaderNodeTexEnvironment")
        texture.image = bpy.data.images.load(str(hdri), check_existing=True)
        mapping = nodes.new("ShaderNodeMapping")
        coords = nodes.new("ShaderNodeTexCoord")
        mapping.inputs["Rotation"].default_value = (0.0, 0.0, math.radians(rotation_deg))
        links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], texture.inputs["Vector"])
        links.new(texture.outputs["Color"], background.inputs["Color"])
    bpy.context.scene.world = world


def _light(name: str, kind: str, energy: float, elevation: float, azimuth: float) -> None:
    """A light aimed at the origin from (elevation, azimuth) degrees (azimuth 0 = front, -Y)."""
    light = bpy.data.lights.new(name, type=kind)
    light.energy = energy
    if kind == "SUN":
        light.angle = math.radians(30)  # soft shadows
    else:
        light.size = 2.0
    obj = bpy.data.objects.new(name, light)
    e, a = math.radians(elevation), math.radians(azimuth)
    direction = (math.cos(e) * math.sin(a), -math.cos(e) * math.cos(a), math.sin(e))
    obj.location = tuple(4.0 * d for d in direction)
    # a light shines down its local -Z: point that axis at the origin
    obj.rotation_euler = (math.pi / 2 - e, 0.0, a)
    bpy.context.scene.collection.objects.link(obj)


def hdri_files(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in HDRI_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"hdri_folder {folder} holds no .hdr/.exr file")
    return files


def setup_lighting(settings: dict, seed: int) -> dict:
    """Light the scene as ``settings`` asks; returns the description stored in meta.json."""
    ambient, key = float(settings["ambient"]), float(settings["key_light"])
    randomise, folder = bool(settings.get("light_randomization")), settings.get("hdri_folder")
    if not randomise and not folder:
        _world(ambient)
        if key > 0:
            # the historical key light: sun tilted 45 deg, turned -35 deg about z
            light = bpy.data.lights.new("key", type="SUN")
            light.energy = key
            light.angle = math.radians(30)
            obj = bpy.data.objects.new("key", light)
            obj.rotation_euler = (math.radians(45), 0.0, math.radians(-35))
            bpy.context.scene.collection.objects.link(obj)
        return {"mode": "fixed", "ambient": ambient, "key_light": key}
    rng = random.Random(seed)
    described: dict = {"mode": "random", "seed": seed}
    strength = ambient * rng.uniform(0.4, 1.2) if randomise else ambient
    if folder:
        hdri = rng.choice(hdri_files(folder))
        rotation = rng.uniform(0.0, 360.0)
        _world(strength, hdri, rotation)
        described["hdri"] = {"file": hdri.name, "rotation_deg": rotation}
    else:
        _world(strength)
    described["ambient"] = strength
    lights = []
    if randomise:
        for index in range(rng.randint(1, 3)):
            kind = rng.choice(("AREA", "SUN"))
            energy = rng.uniform(0.5, 2.0) * key if kind == "SUN" else rng.uniform(50, 300)
            elevation, azimuth = rng.uniform(10.0, 80.0), rng.uniform(0.0, 360.0)
            _light(f"light{index}", kind, energy, elevation, azimuth)
            lights.append(
                {"type": kind.lower(), "energy": energy, "elevation_deg": elevation}
                | {"azimuth_deg": azimuth}
            )
    described["lights"] = lights
    return described

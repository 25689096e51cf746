"""Blender rendering of Objaverse and local meshes into sharded multi-view WebDatasets."""

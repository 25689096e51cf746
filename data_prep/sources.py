"""Object sources behind one interface: each yields :class:`ObjectRef` (id, file, licence).

``samples`` (the built-in set), a local folder of meshes, or ``objaverse`` (see
:mod:`data_prep.objaverse_source`); :mod:`data_prep.source_factory` picks the configured one.
Listing is cheap and deterministic; fetching files (downloads) happens in :meth:`Source.fetch`,
only for the objects this run will render.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from pathlib import Path

from models.shards.format import sample_key

# Every format the bpy wheel imports (docs/render.md "Supported formats").
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".fbx", ".ply", ".stl", ".dae", ".abc", ".blend")
MESH_SUFFIXES += (".usd", ".usda", ".usdc", ".usdz")


@dataclass
class ObjectRef:
    id: str
    source: str
    license: str = "unknown"
    path: Path | None = None  # None until fetched
    asset_root: Path | None = None  # folder searched for its external textures (default: path's)
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return sample_key(self.id)


class Source(abc.ABC):
    """List objects (:meth:`list`), then fetch the chosen ones (:meth:`fetch`)."""

    name = "source"

    @abc.abstractmethod
    def list(self) -> list[ObjectRef]:
        """Every object this source offers, in a stable order."""

    def fetch(self, refs: list[ObjectRef]) -> dict[str, Path | Exception]:
        """Local file per object id, or the exception that stopped its fetch."""
        return {ref.id: ref.path for ref in refs}

    def fetch_one(self, ref: ObjectRef) -> Path | Exception:
        """One object's file (the download pipeline calls this per object, on its threads)."""
        return self.fetch([ref])[ref.id]

    fetch_workers = 1  # parallel fetch_one calls worth making (downloads: more)

    def release(self, object_ids: list[str]) -> None:
        """Called once the objects are safely in a shard (downloads may be deleted then)."""
        del object_ids  # local files are the user's: nothing to clean up


class SampleSource(Source):
    """The built-in procedural sample set (no network)."""

    name = "samples"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def list(self) -> list[ObjectRef]:
        from data_prep.samples import SAMPLES  # trimesh: imported only for this source

        return [ObjectRef(id=name, source="samples", license="CC0-1.0") for name in SAMPLES]

    def fetch(self, refs: list[ObjectRef]) -> dict[str, Path | Exception]:
        from data_prep.samples import write_samples

        paths = write_samples(self.folder, [ref.id for ref in refs])
        return {ref.id: paths[ref.id] for ref in refs}


class FolderSource(Source):
    """Every mesh file under a folder (recursively). Ids are paths relative to the folder without
    suffix; the suffix stays where two files would otherwise share an id."""

    name = "folder"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"source folder {self.folder} does not exist")

    def list(self) -> list[ObjectRef]:
        files = sorted(
            p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES
        )
        stems: dict[str, int] = {}
        for path in files:
            stem = path.relative_to(self.folder).with_suffix("").as_posix()
            stems[stem] = stems.get(stem, 0) + 1
        refs = []
        for path in files:
            relative = path.relative_to(self.folder)
            stem = relative.with_suffix("").as_posix()
            object_id = stem if stems[stem] == 1 else relative.as_posix()
            refs.append(ObjectRef(id=object_id, source=f"folder:{self.folder.name}", path=path))
        return refs


def choose(refs: list[ObjectRef], count: int | None, seed: int) -> list[ObjectRef]:
    """A seeded random subset of ``count`` objects (all when None), sorted by id. The choice is a
    prefix of one seeded shuffle, so a larger ``count`` extends a smaller one (runs can grow)."""
    refs = sorted(refs, key=lambda ref: ref.id)
    if count is None or count >= len(refs):
        return refs
    random.Random(seed).shuffle(refs)
    return sorted(refs[:count], key=lambda ref: ref.id)

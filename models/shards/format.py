"""The shard format: the contract between rendering, training and evaluation (docs/shards.md).

A shard is a tar of WebDataset samples, one per object; a member is ``<key>.<name>``, the key
(``sample_key``) holds no dot. The names, dtypes and shapes are defined here and nowhere else:

===================  =================================================================
``000.png``, ...     one RGBA PNG per view, uint8, straight alpha, transparent background
``cameras.npy``      float32 ``[V,4,4]`` camera-to-world (models/cameras.py convention)
``meta.json``        the object's record (``META_KEYS``), ``format_version`` included
``depth.npy``        optional, float16 ``[V,H,W]`` depth along the camera's -Z (0 = none)
``normal.npy``       optional, float16 ``[V,H,W,3]`` world-space normals
``albedo.npy``       optional, float16 ``[V,H,W,3]`` diffuse colour (Cycles' DiffCol pass)
``latents.npy``      latent cache only, float16 ``[V,4,h,w]`` scaled VAE posterior means
``clip.npy``         latent cache only, float16 ``[V,D]`` image embeddings (views on white)
===================  =================================================================

Shards written before the version existed carry none and read as version 1; a newer version is
refused (``NewerFormat``) naming both. A sample that breaks the format raises ``CorruptSample``
naming the shard, the key and the member: readers skip it and say so.

Pure numpy and json: rendering imports it without torch, evaluation without the trainer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1  # the newest version this code reads and the one it writes
VERSION_KEY = "format_version"  # in meta.json; absent = 1 (shards from before it existed)

META = "meta.json"
CAMERAS = "cameras.npy"
DEPTH = "depth.npy"
NORMAL = "normal.npy"
ALBEDO = "albedo.npy"
LATENTS = "latents.npy"
CLIP = "clip.npy"
RENDER_EXTRAS = (DEPTH, NORMAL, ALBEDO)  # optional members a render may add
CACHE_MEMBERS = (LATENTS, CLIP)  # what the latent cache adds (it drops the PNGs)
VIEW_SUFFIX = ".png"
_VIEW = re.compile(r"^(\d{3})\.png$")

# member -> (dtype, shape, meaning): the table docs/shards.md shows (a test compares them)
MEMBERS = {
    "000.png, 001.png, ...": ("uint8 PNG", "[H,W,4]", "RGBA view, straight alpha"),
    CAMERAS: ("float32", "[V,4,4]", "camera-to-world matrices, true distance"),
    META: ("JSON", "object", "the object's record, keys below"),
    DEPTH: ("float16", "[V,H,W]", "optional: depth along camera -Z, 0 = background"),
    NORMAL: ("float16", "[V,H,W,3]", "optional: world-space normals"),
    ALBEDO: ("float16", "[V,H,W,3]", "optional: diffuse colour (Cycles DiffCol pass)"),
    LATENTS: ("float16", "[V,4,h,w]", "latent cache: scaled VAE posterior means"),
    CLIP: ("float16", "[V,D]", "latent cache: image embeddings of the views on white"),
}
# meta.json keys (V = views): required ones are checked by read_meta
META_KEYS = {
    VERSION_KEY: "int, the format version (absent in shards from before it: 1)",
    "id": "the object id (the key is derived from it: sample_key)",
    "source": "where the object came from (samples, objaverse, folder:NAME)",
    "license": "the object's licence",
    "resolution": "int, the render's side in pixels",
    "elevation_deg": "[V] required, per view",
    "azimuth_deg": "[V] required, per view",
    "fov_deg": "[V] per view",
    "distance": "[V] per view, camera to origin",
    "relative_radius": "[V] per view (render.md, Framing)",
    "quads": "required, [[i,i,i,i], ...]: azimuth-orthogonal quadruples, in rotation order",
    "refs": "[i, ...]: reference views at random poses",
    "view_ranges": "{elevation_deg, fov_deg, relative_radius: [lo, hi]}: the ranges the "
    "quadruples' cameras were drawn from (newer renders)",
    "heldout_quads": "[[i,i,i,i], ...]: quadruples held out of training (no view of them is in "
    "quads or refs; training never reads them): evaluation's unseen cameras. Absent: none",
    "renderer": "the settings that made the pixels",
    "normalisation": "how the mesh was centred and scaled",
    "textures": "image textures: external, relinked (found elsewhere), missing",
    "lighting": "what lit the object: mode (fixed, random), its lights and environment",
    "warnings": "what the renderer noticed",
    "quality": "per-view coverage, border, mean_alpha",
    "attribution": "Objaverse only: the creator's credit",
    "extra": "what the source knows beside the id (Objaverse name, Objaverse-XL sha256...)",
    "latent_cache": "latent cache only: what made the latents (training/latent_cache.py)",
}

SHARD_RE = re.compile(r"^shard-(\d{3})-(\d{6})\.tar$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class CorruptSample(ValueError):
    """A sample that breaks the format; the message names the shard, key and member."""


class NewerFormat(ValueError):
    """A sample written by a newer format version than this code reads: never skipped."""


# ---- names ----------------------------------------------------------------------------------


def view_name(index: int) -> str:
    return f"{index:03d}{VIEW_SUFFIX}"


def view_index(name: str) -> int | None:
    """The view index of member ``name`` (``"007.png"`` -> 7), else None."""
    match = _VIEW.match(name)
    return int(match.group(1)) if match else None


def split_member(tar_name: str) -> tuple[str, str]:
    """``dir/key.member.ext`` -> ``(key, "member.ext")`` as WebDataset groups members (the key is
    the base name up to its first dot)."""
    base = tar_name.rsplit("/", 1)[-1]
    key, _, member = base.partition(".")
    return key, member


def sample_key(object_id: str) -> str:
    """WebDataset ``__key__``, unique per id: a plain id (letters, digits, ``_``, ``-``) is its own
    key; any other id (dots would split the sample, slashes make folders, spaces...) becomes its
    sanitised form plus ``~`` and a hash of the exact id, so ``a b``, ``a.b`` and ``a_b`` never
    share a key (``~`` never occurs in a plain id)."""
    if _SAFE_KEY.match(object_id):
        return object_id
    digest = hashlib.sha256(object_id.encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_-]", "_", object_id)[:80] + "~" + digest


def shard_name(part: int, index: int) -> str:
    """A render run's shard file: ``shard-PPP-NNNNNN.tar`` (partition, index in it)."""
    return f"shard-{part:03d}-{index:06d}.tar"


def list_shards(folder: str | Path, part: int | None = None) -> list[Path]:
    """Complete shards in ``folder`` and its ``part-PPP/`` folders (of one partition when
    ``part`` is given), sorted by name."""
    folder = Path(folder)
    found = [*folder.glob("shard-*.tar"), *folder.glob("part-[0-9][0-9][0-9]/shard-*.tar")]
    shards = []
    for path in sorted(found, key=lambda p: p.name):
        match = SHARD_RE.match(path.name)
        if match and (part is None or int(match.group(1)) == part):
            shards.append(path)
    return shards


# ---- writing --------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def build_sample(
    key: str, view_pngs: list[bytes], cameras: np.ndarray, meta: dict, extra: dict
) -> dict:
    """One rendered object as a WebDataset sample (``webdataset.TarWriter`` writes it): the
    views, ``cameras`` (cast to float32 ``[V,4,4]``), ``meta`` stamped with the format version,
    and ``extra``: optional members of ``RENDER_EXTRAS`` (``.npy`` bytes or arrays)."""
    cameras = np.asarray(cameras, dtype=np.float32)
    if cameras.shape != (len(view_pngs), 4, 4):
        raise ValueError(f"{key}: cameras {cameras.shape} for {len(view_pngs)} views")
    unknown = sorted(set(extra) - set(RENDER_EXTRAS))
    if unknown:
        raise ValueError(f"{key}: {unknown} are no shard members (optional: {RENDER_EXTRAS})")
    sample = {"__key__": key, CAMERAS: cameras, META: {VERSION_KEY: FORMAT_VERSION, **meta}}
    for index, png in enumerate(view_pngs):
        sample[view_name(index)] = png
    for name, value in extra.items():
        sample[name] = value if isinstance(value, bytes) else npy_bytes(value)
    return sample


def cache_sample(sample: dict, meta: dict, latents: np.ndarray, clip: np.ndarray) -> dict:
    """A latent-cache sample from a rendered one: its cameras (bytes unchanged), ``meta`` and
    the float16 ``latents [V,4,h,w]`` and ``clip [V,D]``; the PNGs stay behind."""
    return {
        "__key__": sample["__key__"],
        CAMERAS: sample[CAMERAS],
        META: json.dumps({**meta, VERSION_KEY: FORMAT_VERSION}).encode(),
        LATENTS: npy_bytes(np.asarray(latents, dtype=np.float16)),
        CLIP: npy_bytes(np.asarray(clip, dtype=np.float16)),
    }


# ---- reading --------------------------------------------------------------------------------


def where(sample: dict) -> str:
    """``shard-url:key`` of a sample, for messages that must name the bad thing."""
    url = sample.get("__url__")
    return f"{url}:{sample.get('__key__')}" if url else str(sample.get("__key__"))


_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def load_npy(data: bytes | memoryview) -> np.ndarray:
    """``np.load(..., allow_pickle=False)`` of a small ``.npy`` member, without re-parsing (numpy
    parses headers with ``ast.literal_eval``) a header seen before: every object of a shard has
    the same one. Read-only when ``data`` is."""
    view = memoryview(data)
    if bytes(view[:8]) != b"\x93NUMPY\x01\x00":  # other versions: numpy itself
        return np.load(io.BytesIO(view), allow_pickle=False)
    end = 10 + int.from_bytes(view[8:10], "little")
    header = bytes(view[:end])
    if header not in _NPY_HEADERS:
        stream = io.BytesIO(header)
        np.lib.format.read_magic(stream)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed (they would unpickle)")
        _NPY_HEADERS[header] = (shape, fortran, dtype)
    shape, fortran, dtype = _NPY_HEADERS[header]
    array = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=end)
    return array.reshape(shape, order="F" if fortran else "C")


def format_version(meta: dict, sample: dict) -> int:
    """The sample's format version (1 when unrecorded); a newer one raises NewerFormat."""
    version = meta.get(VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptSample(f"{where(sample)}: {META} {VERSION_KEY} {version!r} is no version")
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"{where(sample)}: written in shard format version {version}, but this code reads "
            f"format version {FORMAT_VERSION} at most: update the code to read these shards"
        )
    return version


@dataclass
class SampleMeta:
    """A sample's ``meta.json`` and ``cameras.npy``, checked against each other."""

    meta: dict  # meta.json as stored
    version: int
    cameras: np.ndarray  # float32 [V,4,4]
    quads: list[list[int]]
    refs: list[int]
    angles: np.ndarray  # float32 [V,2]: elevation, azimuth in degrees
    heldout_quads: list[list[int]] = field(default_factory=list)

    @property
    def views(self) -> int:
        return self.cameras.shape[0]

    @property
    def training_views(self) -> list[int]:
        """Every view but the held-out quadruples' (what any training may read)."""
        held = {i for quad in self.heldout_quads for i in quad}
        return [i for i in range(self.views) if i not in held]

    def pose(self, index: int) -> dict[str, float]:
        """Elevation, azimuth, fov and distance of view ``index``."""
        keys = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")
        return {k: float(self.meta[k][index]) for k in keys}


def read_meta(sample: dict) -> SampleMeta:
    """``meta.json`` and ``cameras.npy`` of a raw sample (members as bytes or memoryviews),
    checked: finite ``[V,4,4]`` cameras, at least one quadruple, indices in range, elevation and
    azimuth per view. CorruptSample names what is wrong; NewerFormat a newer version."""
    try:
        meta = json.loads(bytes(sample[META]))
        cameras = load_npy(sample[CAMERAS])
    except KeyError as error:
        raise CorruptSample(f"{where(sample)}: missing member {error}") from error
    except (ValueError, OSError) as error:
        raise CorruptSample(f"{where(sample)}: unreadable {META}/{CAMERAS}: {error}") from error
    if not isinstance(meta, dict):
        raise CorruptSample(f"{where(sample)}: {META} is no JSON object")
    version = format_version(meta, sample)
    if cameras.ndim != 3 or cameras.shape[1:] != (4, 4) or not np.isfinite(cameras).all():
        raise CorruptSample(f"{where(sample)}: {CAMERAS} has shape {cameras.shape}")
    views = cameras.shape[0]
    try:
        quads = [list(map(int, q)) for q in meta.get("quads", [])]
        refs = [int(i) for i in meta.get("refs", [])]
        heldout = [list(map(int, q)) for q in meta.get("heldout_quads", [])]
    except (TypeError, ValueError) as error:
        raise CorruptSample(f"{where(sample)}: bad quads/refs/heldout_quads in {META}") from error
    if not quads or any(len(q) != 4 or not all(0 <= i < views for i in q) for q in quads):
        raise CorruptSample(f"{where(sample)}: no valid quadruple in {META}")
    if any(not 0 <= i < views for i in refs):
        raise CorruptSample(f"{where(sample)}: reference index out of range")
    if any(len(q) != 4 or not all(0 <= i < views for i in q) for q in heldout):
        raise CorruptSample(f"{where(sample)}: bad heldout_quads in {META}")
    trained = {i for q in quads for i in q} | set(refs)
    if any(i in trained for q in heldout for i in q):  # held out means never trained on
        raise CorruptSample(f"{where(sample)}: a view of heldout_quads is also in quads or refs")
    try:  # the angles, for samplers that take (elevation, azimuth) rather than matrices
        angles = np.array([meta["elevation_deg"], meta["azimuth_deg"]], dtype=np.float32).T
        angles = angles.reshape(views, 2)
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptSample(f"{where(sample)}: bad elevation/azimuth lists") from error
    cameras = cameras.astype(np.float32)  # a writable copy (members may be read-only maps)
    return SampleMeta(meta, version, cameras, quads, refs, angles, heldout)


def view_bytes(sample: dict, index: int) -> bytes | memoryview:
    """The PNG bytes of view ``index``; CorruptSample when the member is missing."""
    data = sample.get(view_name(index))
    if data is None:
        raise CorruptSample(f"{where(sample)}: missing {view_name(index)}")
    return data


def read_cache(sample: dict, views: int) -> tuple[np.ndarray, np.ndarray]:
    """``latents [V,4,h,w]`` and ``clip [V,D]`` of a latent-cache sample (as stored), checked
    against the ``views`` cameras."""
    try:
        latents, clip = load_npy(sample[LATENTS]), load_npy(sample[CLIP])
    except (KeyError, ValueError, OSError) as error:
        raise CorruptSample(f"{where(sample)}: bad latent cache entry: {error}") from error
    if latents.ndim != 4 or latents.shape[0] != views or clip.ndim != 2 or clip.shape[0] != views:
        raise CorruptSample(
            f"{where(sample)}: latent cache shapes {latents.shape}, {clip.shape} do not match "
            f"{views} cameras"
        )
    if not np.isfinite(latents).all():
        raise CorruptSample(f"{where(sample)}: {LATENTS} holds non-finite values")
    return latents, clip


def members_needed(cached: bool) -> str:
    """The members a loader needs, for messages."""
    views = f"{', '.join(CACHE_MEMBERS)}" if cached else f"{view_name(0)}, {view_name(1)}, ..."
    return f"the members {META}, {CAMERAS}, {views} (docs/shards.md)"


# ---- whole shards (tarfile: small tools, not the training loader) ----------------------------


def shard_ids(path: str | Path) -> list[str]:
    """Object ids of the samples in one shard (from each sample's meta.json)."""
    ids = []
    with tarfile.open(path) as tar:
        for member in tar:
            if split_member(member.name)[1] == META:
                ids.append(json.load(tar.extractfile(member))["id"])
    return ids


def views_per_object(path: str | Path) -> dict[str, int]:
    """``{views per object: objects}`` of one shard, from its member names (nothing decoded)."""
    with tarfile.open(path) as tar:
        keys = [split_member(m.name) for m in tar if m.isfile()]
    per_key = Counter(key for key, member in keys if view_index(member) is not None)
    return {str(k): v for k, v in sorted(Counter(per_key.values()).items())}


def shard_keys(path: str | Path) -> list[str]:
    """The sample keys of one shard, sorted."""
    with tarfile.open(path) as tar:
        return sorted({split_member(m.name)[0] for m in tar if m.isfile() and "." in m.name})


def read_sample(path: str | Path, key: str) -> dict:
    """The raw sample ``key`` of shard ``path`` (``{"__key__", "__url__", member: bytes}``)."""
    sample: dict = {"__key__": key, "__url__": str(path)}
    with tarfile.open(path) as tar:
        for member in tar:
            found, name = split_member(member.name)
            if member.isfile() and found == key:
                data = tar.extractfile(member)
                sample[name] = data.read() if data else b""
    return sample

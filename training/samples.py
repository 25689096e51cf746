"""Turn one raw shard sample (bytes per member, schema in docs/ARCHITECTURE.md) into what crosses
the loader-worker boundary: one azimuth-orthogonal quadruple of views plus one reference view,
decoded but otherwise untouched (uint8 straight-alpha RGBA), with the cameras, the view choice and
the background colour drawn for the object. Compositing, resizing and scaling run batched on the
training device (training.batch_transforms). Raw-image and latent-cache samples give the same
batch layout apart from the images."""

from __future__ import annotations

import io
import json
import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png

from models.cameras import camera_embedding

# BACKGROUNDS and composite are re-exported for per-view users (training.pretrain_vae)
from training.batch_transforms import BACKGROUNDS, composite, premultiplied  # noqa: F401


class CorruptSample(ValueError):
    """A sample that cannot be used; the stream skips and counts it."""


@dataclass(frozen=True)
class ViewChoice:
    """Which views of an object one training sample uses."""

    quad: list[int]
    ref: int


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


def read_meta(sample: dict) -> dict:
    try:
        meta = json.loads(bytes(sample["meta.json"]))  # members may be memoryviews
        cameras = load_npy(sample["cameras.npy"])
    except KeyError as error:
        raise CorruptSample(f"{where(sample)}: missing member {error}") from error
    except (ValueError, OSError) as error:
        raise CorruptSample(f"{where(sample)}: unreadable meta/cameras: {error}") from error
    if cameras.ndim != 3 or cameras.shape[1:] != (4, 4) or not np.isfinite(cameras).all():
        raise CorruptSample(f"{where(sample)}: cameras.npy has shape {cameras.shape}")
    quads = [list(map(int, q)) for q in meta.get("quads", [])]
    views = cameras.shape[0]
    if not quads or any(len(q) != 4 or not all(0 <= i < views for i in q) for q in quads):
        raise CorruptSample(f"{where(sample)}: no valid quadruple in meta.json")
    if any(not 0 <= int(i) < views for i in meta.get("refs", [])):
        raise CorruptSample(f"{where(sample)}: reference index out of range")
    try:  # the angles, for samplers that take (elevation, azimuth) rather than matrices
        meta["_angles"] = torch.tensor(
            [meta["elevation_deg"], meta["azimuth_deg"]], dtype=torch.float32
        ).T.reshape(views, 2)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CorruptSample(f"{where(sample)}: bad elevation/azimuth lists") from error
    meta["_cameras"] = torch.from_numpy(cameras.astype(np.float32))
    meta["_quads"] = quads
    return meta


def choose_views(meta: dict, rng: random.Random, ref_in_targets: bool) -> ViewChoice:
    """Pick one quadruple and one reference. The reference comes from the random-pose ``refs``
    unless ``ref_in_targets`` (stage-2 policy) asks for one of the target views."""
    quad = rng.choice(meta["_quads"])
    refs = [int(i) for i in meta.get("refs", [])]
    if ref_in_targets or not refs:
        return ViewChoice(quad, rng.choice(quad))
    return ViewChoice(quad, rng.choice(refs))


def background_colour(mode: str, rng: random.Random) -> tuple[float, float, float]:
    if mode == "random":  # one random colour per object, shared by its target views
        return (rng.random(), rng.random(), rng.random())
    return BACKGROUNDS[mode]


def where(sample: dict) -> str:
    """``shard-url:key`` of a sample, for messages that must name the bad thing."""
    url = sample.get("__url__")
    return f"{url}:{sample.get('__key__')}" if url else str(sample.get("__key__"))


def decode_view(sample: dict, index: int) -> torch.Tensor:
    """View ``index`` as uint8 straight-alpha RGBA ``[H,W,4]`` (contiguous), at the render's size.
    ``torchvision.io.decode_png`` (about 20% faster than PIL here; scripts/bench_data.py measures
    both) decodes 8-bit PNGs of any colour type; anything else goes through PIL, as before."""
    name = f"{index:03d}.png"
    data = sample.get(name)
    if data is None:
        raise CorruptSample(f"{where(sample)}: missing {name}")
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (pinned here);
            warnings.simplefilter("ignore")  # the bytes are read-only, which decode_png is too
            image = decode_png(
                torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB_ALPHA
            )
        if image.dtype == torch.uint8:
            return image.permute(1, 2, 0).contiguous()  # a view: decode_png writes HWC
    except (RuntimeError, ValueError):
        pass  # not a PNG libpng reads (or empty): PIL has the last word (and the error message)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return torch.from_numpy(np.array(opened.convert("RGBA"), dtype=np.uint8))
    except Exception as error:  # PIL raises many types on truncated or garbage data
        raise CorruptSample(f"{where(sample)}: {name} does not decode: {error}") from error


def decode_views(sample: dict, indices: list[int]) -> list[torch.Tensor]:
    """Views ``indices`` as uint8 ``[H,W,4]`` each (stacked once, per batch, by ``collate``: a
    stack per object costs as much as its tar parsing); all views of one object share one size."""
    views = [decode_view(sample, i) for i in indices]
    if len({v.shape for v in views}) > 1:
        sizes = sorted({tuple(v.shape[:2]) for v in views})
        raise CorruptSample(f"{where(sample)}: views of different sizes {sizes}")
    return views


def decode_rgba(sample: dict, index: int, resolution: int) -> torch.Tensor:
    """View ``index`` as premultiplied RGBA float ``[4,H,W]`` in [0,1] at ``resolution`` (the
    per-view form of the batched device path, for code that works view by view)."""
    return premultiplied(decode_view(sample, index)[None], resolution)[0]


def image_sample(sample: dict, rng: random.Random, background: str, ref_in_targets: bool) -> dict:
    """Raw shard sample -> ``rgba``: 5 uint8 ``[H,W,4]`` views (the 4 targets, then the reference,
    at the render's size; ``collate`` stacks them to ``[B,5,H,W,4]``), the object's ``background``
    colour ``[3]``, cameras ``[4,16]``, the reference camera, angles and the choice.
    training.batch_transforms.image_batch makes the images."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    colour = background_colour(background, rng)
    chosen = [*choice.quad, choice.ref]
    cameras = camera_embedding(meta["_cameras"][chosen])  # the 5 views used, not all
    return {
        "key": sample["__key__"],
        "rgba": decode_views(sample, chosen),
        "background": torch.tensor(colour, dtype=torch.float32),
        "cameras": cameras[:4],
        "ref_camera": cameras[4],
        "angles": meta["_angles"][choice.quad],
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def cached_sample(sample: dict, rng: random.Random, ref_in_targets: bool) -> dict:
    """Latent-cache sample (written by training.latent_cache) -> the same layout with latents
    ``[4,4,h,w]``, the reference latent and the precomputed CLIP embedding."""
    meta = read_meta(sample)
    choice = choose_views(meta, rng, ref_in_targets)
    try:
        latents = torch.from_numpy(load_npy(sample["latents.npy"]).astype(np.float32))
        embeds = torch.from_numpy(load_npy(sample["clip.npy"]).astype(np.float32))
    except (KeyError, ValueError, OSError) as error:
        raise CorruptSample(f"{where(sample)}: bad latent cache entry: {error}") from error
    views = len(meta["_cameras"])
    if latents.shape[0] != views or embeds.shape[0] != views or not torch.isfinite(latents).all():
        raise CorruptSample(f"{where(sample)}: latent cache shapes do not match cameras")
    cameras = camera_embedding(meta["_cameras"])
    return {
        "key": sample["__key__"],
        "latents": latents[choice.quad],
        "cameras": cameras[choice.quad],
        "ref_latent": latents[choice.ref],
        "ref_embedding": embeds[choice.ref],
        "ref_camera": cameras[choice.ref],
        "angles": meta["_angles"][choice.quad],
        "choice": torch.tensor(choice.quad + [choice.ref]),
    }


def _stack(tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """One copy into ``[len, *shape]``; in a loader worker straight into shared memory (as
    torch's default_collate does), so handing the batch to the main process copies nothing."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        count = len(tensors) * math.prod(shape)
        storage = tensors[0]._typed_storage()._new_shared(count, device=tensors[0].device)
        out = tensors[0].new(storage).resize_(len(tensors), *shape)
    return torch.stack(tensors, out=out).view(-1, *shape)


def collate(samples: list[dict]) -> dict:
    """Stack tensors (each object's views into one ``rgba [B,5,H,W,4]``), list strings, and sum
    the per-sample skip counters into one number."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if name == "skipped":
            batch[name] = torch.tensor(sum(values), dtype=torch.long)
        elif name == "rgba":
            if len({v[0].shape for v in values}) > 1:  # render sizes differ: resized on the device
                batch[name] = [torch.stack(v) for v in values]
            else:
                views = [view for v in values for view in v]
                batch[name] = _stack(views, (len(values[0]), *views[0].shape))
        elif isinstance(values[0], torch.Tensor):
            batch[name] = _stack(values, tuple(values[0].shape))
        else:
            batch[name] = values
    return batch

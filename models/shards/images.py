"""A shard's views as tensors: decoding, premultiplying, resizing, compositing on a background.

One copy of the operations the training loader, the latent cache and the evaluation's ground
truth all run, so a view is the same tensor wherever it is read. Views are stored with straight
alpha (docs/shards.md); compositing happens at load time so training can randomise the colour.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_png

from models.shards.format import CorruptSample, view_bytes, view_name, where

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
WHITE = BACKGROUNDS["white"]


def decode_view(sample: dict, index: int) -> torch.Tensor:
    """View ``index`` as uint8 straight-alpha RGBA ``[H,W,4]`` (contiguous), at the render's size.
    ``torchvision.io.decode_png`` (about 20% faster than PIL here; scripts/bench_data.py measures
    both) decodes 8-bit PNGs of any colour type; anything else goes through PIL."""
    data = view_bytes(sample, index)
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
        name = view_name(index)
        raise CorruptSample(f"{where(sample)}: {name} does not decode: {error}") from error


def decode_views(sample: dict, indices: list[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """Views ``indices`` as uint8 ``[N,H,W,4]``; all views of one object share one size. ``out``:
    an ``[N,H,W,4]`` uint8 slot to decode into (the loader's batch buffer), returned when the views
    fit it. Each view is copied into it straight after decoding, while it is still in the cache,
    and freed at once, so the next view decodes into the same (warm) memory; the views of a
    different size than ``out`` come back as a new tensor."""
    views = []
    for slot, index in enumerate(indices):
        view = decode_view(sample, index)
        if out is not None and view.shape == out.shape[1:]:
            view = out[slot].copy_(view)
        views.append(view)
    if len({v.shape for v in views}) > 1:
        sizes = sorted({tuple(v.shape[:2]) for v in views})
        raise CorruptSample(f"{where(sample)}: views of different sizes {sizes}")
    if out is not None and views[0].data_ptr() == out.data_ptr():
        return out
    return torch.stack(views)


def premultiplied(rgba: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 straight-alpha ``[N,H,W,4]`` -> premultiplied float ``[N,4,R,R]`` in [0,1]."""
    return premultiplied_float(rgba.permute(0, 3, 1, 2).float() / 255.0, resolution)


def premultiplied_float(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Float straight-alpha ``[N,4,H,W]`` in [0,1] -> premultiplied ``[N,4,R,R]`` (a copy)."""
    images = torch.cat([images[:, :3] * images[:, 3:], images[:, 3:]], dim=1)
    # premultiplied, so resizing does not bleed the hidden colour into the edges
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(
            images, size=(resolution, resolution), mode="bilinear", antialias=True
        )
    return images


def reference_on_white(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """The image encoder's input as training makes it from a reference view: straight-alpha
    ``[N,4,H,W]`` (or RGB ``[N,3,H,W]``, opaque) in [0,1], resized premultiplied to
    ``resolution`` and composited on white -> ``[N,3,R,R]``. Training (the loader and the
    latent cache) and evaluation both call it, so a model sees its reference the same way."""
    if images.shape[1] == 3:
        images = torch.cat([images, torch.ones_like(images[:, :1])], dim=1)
    return composite(premultiplied_float(images.float(), resolution), WHITE)


def composite(
    rgba: torch.Tensor, colour: torch.Tensor | tuple[float, float, float]
) -> torch.Tensor:
    """Premultiplied RGBA ``[...,4,H,W]`` over a solid colour -> RGB in [0,1]. ``colour``: an RGB
    tuple, or a tensor that broadcasts against ``[...,3,1,1]`` (one colour per object)."""
    if not isinstance(colour, torch.Tensor):
        colour = torch.tensor(colour, dtype=rgba.dtype, device=rgba.device).view(3, 1, 1)
    return (rgba[..., :3, :, :] + (1 - rgba[..., 3:, :, :]) * colour).clamp(0, 1)


def decode_rgba(sample: dict, index: int, resolution: int) -> torch.Tensor:
    """View ``index`` as premultiplied RGBA float ``[4,H,W]`` in [0,1] at ``resolution`` (the
    per-view form of the batched device path, for code that works view by view)."""
    return premultiplied(decode_view(sample, index)[None], resolution)[0]

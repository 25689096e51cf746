"""The image half of the data path, batched on the training device.

Loader workers only read and decode (training.samples, models.shards.images): a raw-image batch crosses the worker
boundary as uint8 straight-alpha views ``rgba [B,5,H,W,4]`` (4 targets, then the reference; a list
of per-object tensors when the objects' render sizes differ) and the per-object background colour
``background [B,3]``. Here, on the device (``ShardDataModule.on_after_batch_transfer``), the views
are premultiplied, resized to the training resolution (premultiplied, so resizing never bleeds the
hidden colour into the edges), composited and scaled: the tensors the per-sample path used to make
in every worker, from the same operations in the same order.
"""

from __future__ import annotations

import torch

from models.shards.images import WHITE, composite, premultiplied


def _premultiplied_views(rgba: torch.Tensor | list[torch.Tensor], resolution: int) -> torch.Tensor:
    if isinstance(rgba, list | tuple):  # render sizes differ between objects: one at a time
        return torch.stack([_premultiplied_views(one[None], resolution)[0] for one in rgba])
    b, v = rgba.shape[:2]
    return premultiplied(rgba.flatten(0, 1), resolution).unflatten(0, (b, v))


def image_batch(batch: dict, resolution: int, ref_image: bool = True) -> dict:
    """A raw-image batch (``rgba``, ``background``) -> the training layout: ``views [B,4,3,R,R]``
    in [-1,1] on the object's background, ``ref_clip [B,3,R,R]`` in [0,1] on white (the image
    encoder's input; its own preprocessing resizes and normalises) and, when ``ref_image``, the
    reference on the object's background in [-1,1] (the VAE input of stage 2's reference frame).
    Other entries pass through; a batch without ``rgba`` is returned unchanged."""
    if "rgba" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k not in ("rgba", "background")}
    views = _premultiplied_views(batch["rgba"], resolution)
    colour = batch["background"].to(views.device, views.dtype)[:, :, None, None]
    out["views"] = (composite(views[:, :4], colour[:, None]) * 2 - 1).contiguous()
    out["ref_clip"] = composite(views[:, 4], WHITE).contiguous()
    if ref_image:
        out["ref_image"] = (composite(views[:, 4], colour) * 2 - 1).contiguous()
    return out

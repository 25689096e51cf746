"""The image half of the data path, batched on the training device.

Loader workers only read and decode (training.samples): a raw-image batch crosses the worker
boundary as uint8 straight-alpha views ``rgba [B,5,H,W,4]`` (4 targets, then the reference; a list
of per-object tensors when the objects' render sizes differ) and the per-object background colour
``background [B,3]``. Here, on the device (``ShardDataModule.on_after_batch_transfer``), the views
are premultiplied, resized to the training resolution (premultiplied, so resizing never bleeds the
hidden colour into the edges), composited and scaled: the tensors the per-sample path used to make
in every worker, from the same operations in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
WHITE = BACKGROUNDS["white"]


def premultiplied(rgba: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 straight-alpha ``[N,H,W,4]`` -> premultiplied float ``[N,4,R,R]`` in [0,1]."""
    images = rgba.permute(0, 3, 1, 2).float() / 255.0
    images[:, :3] *= images[:, 3:]  # premultiply so resizing does not bleed the hidden colour
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(
            images, size=(resolution, resolution), mode="bilinear", antialias=True
        )
    return images


def composite(
    rgba: torch.Tensor, colour: torch.Tensor | tuple[float, float, float]
) -> torch.Tensor:
    """Premultiplied RGBA ``[...,4,H,W]`` over a solid colour -> RGB in [0,1]. ``colour``: an RGB
    tuple, or a tensor that broadcasts against ``[...,3,1,1]`` (one colour per object)."""
    if not isinstance(colour, torch.Tensor):
        colour = torch.tensor(colour, dtype=rgba.dtype, device=rgba.device).view(3, 1, 1)
    return (rgba[..., :3, :, :] + (1 - rgba[..., 3:, :, :]) * colour).clamp(0, 1)


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

"""Contrastive pretraining of a small image encoder on the project's renders (the tiny preset).

Isotropic3D conditions on a frozen CLIP image embedding, which tells objects apart and changes
little with the viewpoint. A randomly initialised tiny tower does neither: on the built-in samples
its embeddings of different objects have cosine similarity 0.99-0.999, so the diffusion model gets
almost no signal of which object to draw. This gives the tiny tower the property the real one
has, by supervised contrastive learning (InfoNCE; positives: other views of the same object,
under the same background/shift augmentation as the VAE) on every view of the shards. The tower is
frozen again afterwards, as CLIP is in both training stages.

Called by ``training.pretrain_vae`` (``--image-encoder-steps``); the figures it returns (mean
cosine between different objects' views and within one object's, nearest-view object accuracy,
before and after) are saved in ``vae_metrics.json``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.image_encoder import ImageEncoder


def _embed(encoder: ImageEncoder, rgb01: torch.Tensor) -> torch.Tensor:
    return F.normalize(encoder.visual(encoder.preprocess(rgb01)), dim=-1)


@torch.no_grad()
def separation(encoder: ImageEncoder, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cosine between different objects' view embeddings, mean cosine within an object
    (different views), and leave-one-out nearest-neighbour object accuracy. ``images``: RGB or
    RGBA in [0,1] (the encoder composites RGBA on white, as for conditioning)."""
    embeddings = torch.cat([_embed(encoder, chunk) for chunk in images.split(64)])
    cosine = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    nearest = cosine.masked_fill(eye, -2).argmax(1)
    return {
        "cosine_between_objects": float(cosine[~same].mean()),
        "cosine_within_object": float(cosine[same & ~eye].mean()) if (same & ~eye).any() else None,
        "nearest_object_accuracy": float((labels[nearest] == labels).float().mean()),
    }


def contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised InfoNCE (Khosla et al. 2020): each view against all others, positives = the
    other views of its object."""
    logits = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = logits.log_softmax(dim=1).masked_fill(~positive, 0.0)
    return -(log_prob.sum(1) / positive.sum(1).clamp_min(1)).mean()


def pretrain_image_encoder(
    encoder: ImageEncoder,
    views: torch.Tensor,
    keys: list[str],
    augment,
    steps: int = 1000,
    views_per_object: int = 4,
    lr: float = 3e-3,
    temperature: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``encoder`` in place on premultiplied RGBA ``views`` of the objects named by
    ``keys`` (``augment(rgba, generator)`` -> RGB in [-1,1]); returns before/after figures."""
    names = sorted(set(keys))
    if len(names) < 2:
        raise ValueError("contrastive image-encoder pretraining needs at least 2 objects")
    labels = torch.tensor([names.index(k) for k in keys])
    before = separation(encoder, views, labels)
    by_object = [torch.nonzero(labels == i).flatten() for i in range(len(names))]
    generator = torch.Generator().manual_seed(seed)
    visual = encoder.visual.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(visual.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    for step in range(1, steps + 1):
        picks = [
            members[torch.randint(0, len(members), (views_per_object,), generator=generator)]
            for members in by_object
        ]
        index = torch.cat(picks)
        rgb01 = (augment(views[index], generator) + 1) / 2
        loss = contrastive_loss(_embed(encoder, rgb01), labels[index], temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step % 50 == 0 or step == steps):
            print(f"image-encoder step {step}/{steps}  contrastive loss {float(loss):.3f}")
    encoder.requires_grad_(False)
    encoder.eval()
    after = separation(encoder, views, labels)
    return {"steps": steps, "before": before, "after": after}

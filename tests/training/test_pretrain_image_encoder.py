"""Contrastive pretraining separates objects that a random tiny tower confuses."""

from __future__ import annotations

import torch

from models.bundle import build_model
from training.pretrain_image_encoder import contrastive_loss, pretrain_image_encoder
from training.pretrain_vae import augment


def _views(colour: tuple[float, float, float], square: bool, count: int = 6) -> torch.Tensor:
    """Premultiplied RGBA views of a flat shape at different sizes: a square or a disc."""
    size = 32
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    views = []
    for radius in torch.linspace(6, 12, count):
        d = (ys - size / 2).abs().maximum((xs - size / 2).abs()) if square else (
            ((ys - size / 2) ** 2 + (xs - size / 2) ** 2).sqrt()
        )  # fmt: skip
        alpha = (d < radius).float()
        rgb = torch.tensor(colour).view(3, 1, 1) * alpha
        views.append(torch.cat([rgb, alpha[None]]))
    return torch.stack(views)


def test_contrastive_loss_prefers_separated_objects():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]))
    collapsed = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [1, 0], [1, 0.1]]))
    assert contrastive_loss(separated, labels, 0.1) < contrastive_loss(collapsed, labels, 0.1)


def test_pretraining_separates_two_objects():
    views = torch.cat([_views((0.9, 0.2, 0.2), True), _views((0.2, 0.3, 0.9), False)])
    keys = ["red_square"] * 6 + ["blue_disc"] * 6
    encoder = build_model("tiny", seed=0).image_encoder
    metrics = pretrain_image_encoder(encoder, views, keys, augment, steps=200, progress=False)
    before, after = metrics["before"], metrics["after"]
    assert before["cosine_between_objects"] > 0.9, before  # the random tower confuses them
    assert after["cosine_between_objects"] < before["cosine_between_objects"] - 0.3, metrics
    assert after["cosine_within_object"] > after["cosine_between_objects"] + 0.3, metrics
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen again, as CLIP is

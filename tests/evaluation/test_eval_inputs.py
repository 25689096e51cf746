"""Reference images: non-square ones are padded, not squashed; RGB without alpha gets a background
estimate and a warning; a known reference pose refers to the image as given, not the recentred
crop that conditions the model."""

from __future__ import annotations

import logging

import torch
from PIL import Image, ImageDraw

from evaluation.config import load_config
from evaluation.inputs import list_objects


def _load(path, *overrides):
    cfg = load_config(overrides=[f"inputs.path={path}", "inputs.size=40", *overrides])
    (ref,) = list_objects(cfg.inputs)
    return ref.load()


def _box(alpha: torch.Tensor) -> tuple[int, int]:
    ys, xs = torch.nonzero(alpha > 0.5, as_tuple=True)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_non_square_images_are_padded_not_squashed(tmp_path):
    image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((25, 5, 55, 35), fill=(30, 200, 30, 255))  # a 31 px circle
    image.save(tmp_path / "wide.png")
    obj = _load(tmp_path / "wide.png", "inputs.recenter=false")
    assert obj.reference.shape == (4, 40, 40)
    height, width = _box(obj.reference[3])
    assert abs(height - width) <= 1 and 14 <= width <= 17  # still a circle, at half size
    assert obj.reference[3, :8].max() == 0 and obj.reference[3, -8:].max() == 0  # the padding
    recentred = _load(tmp_path / "wide.png")
    height, width = _box(recentred.reference[3])
    assert abs(height - width) <= 1 and width >= 32  # recentring keeps the aspect too


def test_rgb_without_alpha_gets_a_background_estimate_and_a_warning(tmp_path, caplog):
    image = Image.new("RGB", (48, 48), (250, 250, 250))
    ImageDraw.Draw(image).rectangle((10, 20, 25, 40), fill=(200, 30, 30))
    image.save(tmp_path / "photo.png")
    with caplog.at_level(logging.WARNING, logger="evaluation.inputs"):
        obj = _load(tmp_path / "photo.png", "inputs.recenter=false")
    assert any("background estimated" in w for w in obj.warnings)
    assert any("background estimated" in r.message for r in caplog.records)
    alpha = obj.reference[3]
    assert alpha[0].max() < 0.1 and alpha[-1].max() < 0.1  # border colour -> background
    assert alpha[int(30 / 48 * 40), int(17 / 48 * 40)] > 0.9  # the red box is the object
    assert obj.source["alpha"] is False


def test_a_known_pose_refers_to_the_image_as_given(tmp_path):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((4, 4, 20, 20), fill=(20, 20, 200, 255))  # off-centre
    image.save(tmp_path / "posed.png")
    pose = "{elevation_deg: 10, azimuth_deg: 30, fov_deg: 40, relative_radius: 0.9}"
    obj = _load(tmp_path / "posed.png", f"inputs.reference_pose={pose}")
    assert obj.reference_pose["azimuth_deg"] == 30 and obj.reference_pose["distance"] > 0
    # the conditioning image is recentred; the one scored at the pose is the image as given
    as_given = obj.pose_reference[3]
    height, width = _box(as_given)
    assert 9 <= height <= 12 and as_given[:, 20:].max() == 0  # 17 px at 40/64, top-left
    centred = obj.reference[3]
    assert _box(centred)[0] >= 30 and centred[20, 20] > 0.9
    assert not torch.allclose(obj.reference, obj.pose_reference)

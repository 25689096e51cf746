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


def test_the_pose_score_compares_with_the_image_as_given(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from eval_helpers import SphereField, tiny_config

    from evaluation.evaluate import Evaluator
    from evaluation.export import render_cameras
    from evaluation.inputs import EvalObject, recenter, resize_rgba
    from evaluation.metrics import build_clip_scorer
    from evaluation.views import CameraBatch
    from models.cameras import distance_for_fov

    cfg = tiny_config()
    field = SphereField(radius=0.3)
    pose = {"elevation_deg": 10.0, "azimuth_deg": 30.0, "fov_deg": 40.0}
    pose["distance"] = float(distance_for_fov(40.0, 0.9))
    keys = ("elevation_deg", "azimuth_deg", "fov_deg", "distance")
    render = render_cameras(field, None, CameraBatch(*(torch.tensor([pose[k]]) for k in keys)),
                            32, cfg)  # fmt: skip
    given = torch.cat([render["rgb"][0].permute(2, 0, 1), render["alpha"][0][None]])
    recentred = resize_rgba(recenter(given, 0.85), 32)  # what conditions the model
    obj = EvalObject("posed", recentred, reference_pose=pose, pose_reference=given)
    evaluator = SimpleNamespace(
        cfg=cfg,
        clip=build_clip_scorer(cfg.metrics.clip),
        lpips=None,
        multiview_score=lambda *_: {},
    )
    state = SimpleNamespace(field=field, occupancy=None)
    right = Evaluator.score(evaluator, obj, state, tmp_path)
    wrong = Evaluator.score(evaluator, replace(obj, pose_reference=recentred), state, tmp_path)
    assert right["psnr"] > 40 and right["ssim"] > 0.99  # the render at the pose is that image
    assert wrong["psnr"] < right["psnr"] - 15  # the recentred crop is misaligned with the pose

"""Metrics: CLIP cosine, PSNR/SSIM against their formulas, LPIPS offline handling, and the
report's unit choice leaving the CLIP score itself unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.config import Cfg, load_config
from evaluation.metrics import (
    build_clip_scorer,
    build_lpips,
    clip_entry,
    image_scores,
    psnr,
    ssim,
)
from evaluation.report_rows import summarise, table_rows


@pytest.fixture(scope="module")
def scorer():
    return build_clip_scorer(load_config(overrides=["metrics.clip.backbone=tiny"]).metrics.clip)


def test_identical_images_have_cosine_one(scorer):
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    result = scorer.similarity(image, image.repeat(3, 1, 1, 1))
    assert result["raw"] == pytest.approx(1.0, abs=1e-5)
    assert result["x100"] == pytest.approx(100.0, abs=1e-3)
    other = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    assert scorer.similarity(image, other)["raw"] < 1.0 - 1e-4


def test_a_random_tower_gives_no_clip_score(scorer):
    assert scorer.meaningful is False and scorer.name == "tiny"
    white, reference = torch.ones(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    entry = clip_entry(scorer, scorer.similarity(reference, white.repeat(2, 1, 1, 1)))
    assert entry["clip_raw"] is None and entry["clip_x100"] is None
    assert entry["clip_per_view"] is None and "not meaningful" in entry["clip_random_tower"]["note"]
    mv = clip_entry(scorer, scorer.similarity(reference, white), prefix="mv_clip")
    assert mv["mv_clip_raw"] is None and "raw" in mv["mv_clip_random_tower"]


def test_psnr_is_the_mean_of_per_view_psnrs():
    target = torch.full((2, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 0.0001 -> 40 dB
    scores = image_scores(pred, target)
    assert scores["psnr_per_view"] == pytest.approx([20.0, 40.0], abs=1e-3)
    assert scores["psnr"] == pytest.approx(30.0, abs=1e-3)  # not 10*log10(1/0.00505) = 22.97
    assert psnr(pred, target) == pytest.approx(30.0, abs=1e-3)
    assert len(scores["ssim_per_view"]) == 2


def test_psnr_of_a_known_perturbation_matches_the_formula():
    target = 0.1 + 0.8 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shifted = target + 0.05  # stays inside [0, 1]: MSE is exactly 0.0025
    assert psnr(shifted, target) == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-3)
    noise = 0.02 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    noisy = target + noise
    mses = ((noisy - target) ** 2).flatten(1).mean(1).tolist()  # per view
    expected = sum(10 * math.log10(1 / m) for m in mses) / len(mses)
    assert psnr(noisy, target) == pytest.approx(expected, abs=1e-3)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-6)
    assert ssim(noisy, target) < 0.999


def test_clip_score_does_not_depend_on_the_report_unit():
    results = [
        {"id": "a", "clip_raw": 0.81, "psnr": 20.0, "mv_clip_raw": None, "clip_backbone": "B"},
        {"id": "b", "clip_raw": 0.64, "psnr": None, "mv_clip_raw": 0.5, "clip_backbone": "B"},
        {"id": "c", "clip_raw": 0.73, "psnr": 18.0, "mv_clip_raw": 0.7, "clip_backbone": "B"},
    ]
    raw, x100 = table_rows(results, "raw"), table_rows(results, "x100")
    for r, h, res in zip(raw, x100, results):
        assert r["clip"] == res["clip_raw"] and h["clip"] == pytest.approx(100 * r["clip"])
        assert r["psnr"] == h["psnr"]  # other metrics untouched
    assert [r["id"] for r in sorted(raw, key=lambda r: r["clip"])] == [
        h["id"] for h in sorted(x100, key=lambda r: r["clip"])
    ]
    s_raw, s_x100 = summarise(raw), summarise(x100)
    assert s_x100["clip"]["mean"] == pytest.approx(100 * s_raw["clip"]["mean"])
    assert s_x100["clip"]["std"] == pytest.approx(100 * s_raw["clip"]["std"])
    assert s_raw["mv_clip"]["n"] == 2 and s_raw["psnr"]["n"] == 2
    # sample standard deviation (n - 1), as papers report it
    assert s_raw["clip"]["std"] == pytest.approx(float(torch.tensor([0.81, 0.64, 0.73]).std()))
    assert summarise(raw[:1])["clip"] == {"mean": 0.81, "std": None, "n": 1}


def test_lpips_is_skipped_with_a_reason_when_weights_are_absent(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache: nothing to load offline
    try:
        metric, reason = build_lpips(Cfg({"net": "squeeze", "backbone_weights": None}))
    finally:
        torch.hub.set_dir(old)
    assert metric is None and "squeezenet1_1" in reason and "backbone_weights" in reason
    image = torch.rand(1, 3, 32, 32)
    assert image_scores(image, image, metric)["lpips"] is None
    with pytest.raises(FileNotFoundError, match="metrics.lpips.backbone_weights"):
        build_lpips(Cfg({"net": "squeeze", "backbone_weights": str(tmp_path / "missing.pth")}))


def test_lpips_from_a_local_backbone_file(tmp_path):
    import torchvision

    weights = tmp_path / "squeeze_backbone.pth"  # stands in for the ImageNet file (same keys)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    metric, name = build_lpips(Cfg({"net": "squeeze", "backbone_weights": str(weights)}))
    assert metric is not None and name == "LPIPS-squeeze"
    a = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    b = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    same, diff = image_scores(a, a, metric)["lpips"], image_scores(a, b, metric)["lpips"]
    assert same == pytest.approx(0.0, abs=1e-6) and diff > same


def test_clip_backbone_errors_name_the_key(tmp_path):
    cfg = load_config(overrides=["metrics.clip.backbone=NoSuchNet"]).metrics.clip
    with pytest.raises(ValueError, match="metrics.clip.backbone"):
        build_clip_scorer(cfg)
    missing = str(tmp_path / "nope.bin")
    cfg = load_config(overrides=[f"metrics.clip.local_path={missing}"]).metrics.clip
    with pytest.raises(FileNotFoundError, match="metrics.clip.local_path"):
        build_clip_scorer(cfg)

"""Learning works, and would fail if a camera convention broke.

The tiny preset's VAE is pretrained on the rendered samples (training.pretrain_vae), the tiny
model is trained (stage 1, from the latent cache) on 2 rendered objects, and then, in pixel space
against the ground-truth renders at the objects' own poses (evaluation.multiview_score):

* its views beat the untrained model's (passes), and should beat the same model's with the
  cameras rotated by one view (a strict xfail while issue 12 is open).

SDS with the trained prior against the initial blob at the ground-truth poses
(evaluation.sds_gt_score) is run and scored by the demo (tests/test_demo.py); at this budget its
margin over the blob was marginal and load-dependent (+0.01 to +0.05 IoU), so it is not asserted
here until issue 12 makes it clear.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import objects_shard, tiny_config

from evaluation.multiview_score import load_ground_truth, score_conditions
from models.bundle import load_model
from training.latent_cache import cache_latents
from training.pretrain_vae import pretrain_vae
from training.train import run

# Named, strongly view-dependent objects: the shards' object order follows the render workers'
# finishing order, so "the first two" was a different pair from run to run (and a near-symmetric
# pair makes the rotated-camera comparison meaningless).
KEYS = ("front_marker", "car")
STEPS = 400


@pytest.fixture(scope="module")
def trained(rendered_shards, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("learning")
    vae = tmp / "vae"
    metrics = pretrain_vae([str(rendered_shards)], vae, steps=150, progress=False)
    shards = tmp / "two"
    objects_shard(rendered_shards, shards, KEYS)
    cache = tmp / "cache"
    counts = cache_latents([str(shards)], str(vae), cache, 32, "white", 100)
    assert counts == {"written": len(KEYS), "skipped": 0}
    out = tmp / "run"
    config = tiny_config(
        out, cache, "data.cached=true", f"model.init={vae}", f"train.max_steps={STEPS}", "train.lr=3e-3",
        "train.cfg_dropout=0", "train.multiview_ratio=1.0", "train.schedule=constant", "ema.enabled=false",
        f"checkpoint.every_n_steps={STEPS}", "log.logger=none", "data.batch_size=2",
    )  # fmt: skip
    trainer = run(config)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    model = trainer.lightning_module.frozen.model.eval()
    return {"vae": metrics, "shards": shards, "out": out, "losses": losses, "model": model}


def test_vae_pretraining_reconstructs(trained):
    metrics = trained["vae"]
    print("VAE:", metrics)
    assert metrics["train_psnr"] > 18.0, metrics  # the random VAE: ~6 dB
    assert load_model(trained["out"] / "base_model").vae.scaling_factor == pytest.approx(
        metrics["scaling_factor"]
    )


@pytest.fixture(scope="module")
def view_scores(trained) -> dict:
    """PSNR and silhouette IoU at the GT poses per condition (evaluation.multiview_score)."""
    objects = load_ground_truth([str(trained["shards"])], 32, list(KEYS))
    base = load_model(trained["out"] / "base_model").eval()
    results = score_conditions(
        trained["model"], base, objects, steps=10, guidance=1.0, seeds=(0, 100, 200)
    )
    scores = {name: (s["psnr"], s["iou"]) for name, s in results["conditions"].items()}
    print("PSNR, silhouette IoU at the GT poses:", scores)
    return scores


def test_trained_model_beats_the_untrained_one(trained, view_scores):
    losses = trained["losses"]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    trained_psnr, trained_iou = view_scores["trained"]
    assert trained_psnr > view_scores["untrained"][0] + 3.0, view_scores
    assert trained_iou > view_scores["untrained"][1] + 0.1, view_scores


# Not reached yet at the demo's CPU budget (issue 12 is open): the trained tiny model draws an
# average object in image space. strict=True: the day it passes, the marker must go. The camera
# convention itself is guarded in latent space by tests/training/test_learning_latent.py.
OPEN = "issue 12 open: the tiny model ignores its camera/condition in image space at this budget"


@pytest.mark.xfail(strict=True, reason=OPEN)
def test_rotated_cameras_lose(view_scores):
    # A cube's silhouette is the same from the 4 azimuths: the colours (PSNR) tell the sides apart.
    assert view_scores["trained"][0] > view_scores["cameras rotated"][0] + 0.5, (
        "the trained tiny model's views at the GT poses are no better than with the cameras "
        f"rotated by one view (issue 12, item 6: open): {view_scores}"
    )

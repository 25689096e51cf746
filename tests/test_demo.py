"""`make demo` is the end-to-end test: the whole pipeline on the built-in samples (at the
smallest settings: whether the short demo run learns is tests/training/test_learning.py's job),
then its outputs checked as a user would look at them, then a rerun that resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run([*DEMO, "--out", str(out)], cwd=ROOT, env=env, check=True)
    return out


# Every step at its smallest: the pipeline and its files, not the quality (tests/training/test_learning.py).
DEMO = [
    sys.executable,
    "scripts/demo.py",
    "--res",
    "32",
    "--vae-steps",
    "20",
    "--encoder-steps",
    "20",
]
DEMO += ["--stage1-steps", "20", "--stage2-steps", "10", "--sds-steps", "6", "--sample-steps", "3"]
DEMO += ["--photometric-steps", "4", "--no-sds-compile", "--quads", "2", "--seed", "1"]


def _not_blank(path: Path, min_std: float = 5.0) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert image.size > 0 and image.std() > min_std, f"{path} looks blank (std {image.std():.2f})"
    return image


def test_demo_shards_are_readable(demo_out: Path):
    from data_prep.summary import iter_samples

    samples = list(iter_samples(demo_out / "shards" / "train"))
    assert len(samples) == 9  # every built-in sample but the held-out one
    for sample in samples:
        meta = (
            sample["meta.json"]
            if isinstance(sample["meta.json"], dict)
            else json.loads(sample["meta.json"])
        )
        views = [sample[f"{i:03d}.png"] for i in range(len(meta["azimuth_deg"]))]
        assert all(view.shape[-1] == 4 and view[..., 3].max() > 0 for view in views)


def test_demo_checkpoints_and_export_load(demo_out: Path):
    from models.bundle import load_model

    for stage in ("stage1", "stage2"):
        checkpoints = sorted((demo_out / stage / "checkpoints").glob("*.ckpt"))
        assert checkpoints, f"{stage}: no checkpoint"
        state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
        assert state["global_step"] > 0
    for kind in ("fp32", "ema"):
        model = load_model(demo_out / "model" / kind)
        assert all(torch.isfinite(p).all() for p in model.unet.parameters())
    fp32 = load_model(demo_out / "model" / "fp32").unet.state_dict()
    ema = load_model(demo_out / "model" / "ema").unet.state_dict()
    assert any(not torch.equal(fp32[k], ema[k]) for k in fp32)  # the EMA is its own weights
    # --seed reaches both stages and SDS; stage 2 keeps its config's reference-frame dropout
    for stage in ("stage1", "stage2"):
        config = yaml.safe_load((demo_out / stage / "config.yaml").read_text())
        assert config["train"]["seed"] == 1
    assert config["stage2"]["ref_dropout"] == 0.5
    sds_config = yaml.safe_load((demo_out / "eval" / "config.yaml").read_text())
    assert sds_config["seed"] == 1 and sds_config["renderer"]["surface_fill"] == 1.0
    # shaded from 0.375 to 0.75 of the run, then the albedo finish on the frozen shape
    material = sds_config["material"]
    assert (material["ambient_only_steps"], material["albedo_finish_steps"]) == (0.375, 0.25)
    field = torch.load(demo_out / "eval" / "objects" / "front_marker" / "field.pt",
                       map_location="cpu", weights_only=True)["field"]  # fmt: skip
    assert any(key.startswith("geometry.") for key in field)


def test_demo_report_has_finite_scores(demo_out: Path):
    evaluation = demo_out / "eval"
    results = json.loads((evaluation / "results.json").read_text())
    rows = results["objects"] if isinstance(results, dict) else results
    assert [row["id"] for row in rows] == ["front_marker"]
    assert math.isfinite(rows[0]["psnr"])  # the shard gives the reference pose
    assert rows[0].get("clip") is None  # no CLIP number from the random tiny tower
    assert (evaluation / "index.html").is_file()
    summary = json.loads((demo_out / "demo_summary.json").read_text())
    assert all(Path(path).exists() for path in summary["results"].values())


def test_demo_scores_views_and_sds_at_ground_truth_poses(demo_out: Path):
    vae = json.loads((demo_out / "vae_model" / "vae_metrics.json").read_text())
    assert math.isfinite(vae["heldout_psnr"]) and vae["heldout_views"] == 10
    scores = json.loads((demo_out / "multiview" / "scores.json").read_text())
    assert set(scores["conditions"]) == {
        "trained", "untrained", "cameras rotated", "other reference"
    }  # fmt: skip
    # At a held-out quad (cameras no training step saw), and again without the reference frame
    # (the 4 noisy views alone: how SDS queries the prior).
    assert scores["cameras"] == "held-out quad" and scores["reference_frame"] == "model default"
    free = scores["without_reference_frame"]
    assert free["reference_frame"] == "without" and set(free["conditions"]) == set(
        scores["conditions"]
    )
    for condition in [*scores["conditions"].values(), *free["conditions"].values()]:
        assert len(condition["per_object"]) == len(scores["objects"]) == 4
        assert all(len(o["psnr"]) == len(o["iou"]) == 4 for o in condition["per_object"])
        assert math.isfinite(condition["psnr"]) and 0.0 <= condition["iou"] <= 1.0
    sds = json.loads((demo_out / "sds_scores.json").read_text())
    assert sds["object"] == "front_marker" and sds["sds_steps"] == 6
    conditions = ("sds", "initial blob", "opaque sphere", "photometric fit", "analytic object")
    for name in conditions:
        assert len(sds[name]["per_view"]["iou"]) == 4 and math.isfinite(sds[name]["fg_psnr"])
        assert 0 <= sds[name]["faces_correct"] <= sds[name]["faces_seen"] <= 5
    assert sds["analytic object"]["mean_iou"] > 0.85  # the renderer's cameras are Blender's
    assert (demo_out / "eval" / "objects" / "front_marker" / "sds_log.jsonl").is_file()
    prior = json.loads((demo_out / "prior_at_truth.json").read_text())  # SDS's ceiling
    assert prior["views"] == sds["scored_views"] and set(prior["timesteps"]) == {
        "50", "150", "300", "500", "800"
    }  # fmt: skip
    assert all(math.isfinite(e["fg_psnr"]) for e in prior["timesteps"].values())
    assert set(prior["sds_object"]["timesteps"]) == set(prior["timesteps"])  # over SDS's renders
    figure = _not_blank(demo_out / "demo.png")
    assert figure.shape[0] > 6 * 32  # ground truth, 3 sampled rows, SDS and blob rows


def test_demo_rerun_resumes(demo_out: Path):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(
        [*DEMO, "--out", str(demo_out)], cwd=ROOT, env=env, check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    assert "VAE already pretrained" in done
    assert "already cached" in done
    assert "0 rendered" in done


def test_demo_pictures_are_not_blank(demo_out: Path):
    import imageio.v3 as iio
    import trimesh

    _not_blank(demo_out / "contact_sheet.png")
    _not_blank(demo_out / "training_loss.png")
    _not_blank(demo_out / "samples" / "car_views.png")
    _not_blank(demo_out / "multiview" / "views.png")
    obj = demo_out / "eval" / "objects" / "front_marker"
    for view in sorted((obj / "views").glob("*.png")):
        _not_blank(view, min_std=1.0)
    frames = iio.imread(obj / "turntable.mp4")
    assert frames.shape[0] >= 8 and frames.std() > 1.0
    mesh = trimesh.load(obj / "mesh" / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0


def test_demo_report_page_shows_figures_and_scores(demo_out: Path):
    import re

    page = (demo_out / "index.html").read_text()
    for ident in ("figure", "views", "views_without_reference", "sds", "prior_at_truth",
                  "pretraining"):  # fmt: skip
        assert f"id='{ident}'" in page, ident
    for name in ("cameras rotated", "other reference", "untrained", "initial blob"):
        assert name in page, name
    sources = re.findall(r"src='([^']+)'", page)
    assert "demo.png" in sources and "multiview/views.png" in sources
    assert all((demo_out / src).is_file() for src in sources), sources
    assert not re.search(r"clip[^<]*\d", page, re.IGNORECASE)  # no CLIP number from the tiny tower

"""``make export``, ``sample-views``, ``finetune``, ``pretrain-vae``, ``eval`` and
``cache-latents`` given no input, a path that does not exist or a folder that is not what they
read: one line naming the variable and what to pass, a non-zero exit, nothing written (no
traceback, and no random model sampled or evaluated in place of a forgotten one)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PIL import Image
from train_helpers import ROOT


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", "setup", *args, f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    ours = [
        line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert len(ours) == 1 and ours[0].startswith("error: "), result.stderr
    return ours[0]


@pytest.fixture
def places(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    image = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), "red").save(image)
    return {
        "nowhere": tmp_path / "nowhere",
        "empty": empty,
        "model": tiny_model_dir,
        "image": image,
        "out": tmp_path / "out",
    }


def test_make_export_without_a_usable_checkpoint(places):
    out = f"OUT={places['out']}"
    cases = {
        (): "error: nothing to export: pass CKPT=",
        (f"CKPT={places['nowhere']}",): f"CKPT {places['nowhere']} does not exist: pass CKPT=",
        (f"CKPT={places['empty']}",): "is a folder with no complete checkpoint (no checkpoints/",
        (f"CKPT={places['model']}",): "is a model folder already, nothing to export",
        (f"CKPT={places['image']}",): "ref.png is not a checkpoint",
    }
    for args, message in cases.items():
        assert message in _error_line(_make("export", *args, out)), args
        assert not places["out"].exists()


def test_make_sample_views_without_a_usable_model_or_image(places):
    image, out = f"IMAGE={places['image']}", f"OUT={places['out'] / 'grid.png'}"
    cases = {
        (image,): "error: no model: pass MODEL=<model folder>",
        (f"MODEL={places['model']}",): "error: no reference image: pass IMAGE=",
        (
            image,
            f"MODEL={places['nowhere']}",
        ): f"MODEL (--model) {places['nowhere']} does not exist",
        (image, f"MODEL={places['empty']}"): "is a folder with no model.json and no unet/ + vae/",
        (image, f"MODEL={places['image']}"): "ref.png is a file (a published .pt/.ckpt: make conv",
        (f"IMAGE={places['nowhere']}", f"MODEL={places['model']}"): "IMAGE (--image) ",
    }
    for args, message in cases.items():
        line = _error_line(_make("sample-views", *args, out))
        assert message in line, (args, line)
        assert "random:tiny" in line or "IMAGE" in line  # says how to ask for a random model
        assert not places["out"].exists()


def test_make_finetune_and_pretrain_vae_without_their_inputs(places, rendered_shards):
    out = f"OUT={places['out']}"
    cases = {
        ("finetune", f"DATA={places['nowhere']}"): f"error: data.train: shards {places['nowhere']}",
        (
            "finetune",
            f"DATA={places['empty']}",
        ): f"error: data.train: no shards found in {places['empty']}",
        (
            "finetune",
            f"DATA={rendered_shards}",
            f"INIT={places['nowhere']}",
        ): f"error: model.init (INIT): {places['nowhere']} does not exist",
        ("pretrain-vae", f"DATA={places['nowhere']}"): "error: DATA (--data): shards ",
    }
    for args, message in cases.items():
        line = _error_line(_make(*args, out, "LAUNCHER=local"))
        assert line.startswith(message), (args, line)
        assert not places["out"].exists(), args


def test_make_eval_and_cache_latents_without_their_inputs(places):
    images = places["empty"] / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), "red").save(images / "a.png")
    out = f"OUT={places['out']}"
    cases = {
        ("eval",): "error: no images: pass IMAGES=",
        ("eval", f"IMAGES={places['nowhere']}", f"MODEL={places['model']}"): (
            f"error: inputs.path: {places['nowhere']} does not exist"
        ),
        ("eval", f"IMAGES={images}"): "error: no model to evaluate: pass MODEL=<model folder>",
        ("cache-latents",): "error: no shards: pass DATA=",
        ("cache-latents", f"DATA={places['nowhere']}"): f"error: shards {places['nowhere']}",
    }
    for args, message in cases.items():
        line = _error_line(_make(*args, out, "LAUNCHER=local"))
        assert line.startswith(message), (args, line)
        assert not places["out"].exists(), args

"""Failures: one unreadable image is recorded (reason in the report) while the others finish and
the run exits non-zero; a failing GPU worker still leaves a report; an empty input folder is an
error; a changed model is detected by content."""

from __future__ import annotations

import json
import shutil

import pytest
from eval_helpers import TINY_OVERRIDES
from PIL import Image, ImageDraw

from evaluation import fingerprint, run
from evaluation.config import load_config
from evaluation.inputs import list_objects


def _args(images, out, *extra):
    return ["--config", "configs/eval_tiny.yaml", "--images", str(images), "--out", str(out),
            "--gpus", "none", "--no-progress", *TINY_OVERRIDES, "sds.steps=1",
            "metrics.multiview.enabled=false", *extra]  # fmt: skip


def test_one_bad_image_is_recorded_and_the_others_finish(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 32, 32), fill=(200, 40, 40, 255))
    image.save(images / "good.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 8)
    with pytest.raises(SystemExit, match=r"1 object\(s\) failed: broken"):
        run.main(_args(images, out))
    assert (out / "objects" / "good" / "result.json").is_file()
    failure = json.loads((out / "objects" / "broken" / "failed.json").read_text())
    assert "cannot read the image" in failure["error"] and "broken.png" in failure["error"]
    report = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in report["objects"]] == ["good"]
    assert [f["id"] for f in report["failed"]] == ["broken"] and report["missing"] == []
    page = (out / "index.html").read_text()
    assert "<h2>Failed</h2>" in page and "cannot read the image" in page
    assert "broken: ValueError:" in (out / "results.md").read_text()
    # a failed object has no result to protect: a rerun retries it, even with other settings
    with pytest.raises(SystemExit, match=r"1 object\(s\) failed: broken"):
        run.main(_args(images, out, "inputs.limit=1", "sds.guidance_scale=7.5"))


def test_a_failing_gpu_worker_still_leaves_a_report(tmp_path, monkeypatch):
    codes = iter([0, 3])

    class FakeChild:
        def __init__(self, args, env):
            self.code = next(codes)

        def wait(self):
            return self.code

    monkeypatch.setattr(run.subprocess, "Popen", FakeChild)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(images / "a.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="a GPU worker failed with exit code 3"):
        run.main(["--images", str(images), "--out", str(out), "--gpus", "0,1", "model.size=tiny"])
    assert (out / "index.html").is_file()
    assert json.loads((out / "results.json").read_text())["missing"] == ["a"]


def test_an_empty_or_missing_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(SystemExit) as exit_info:
            run.main(["--images", str(folder), "--out", str(tmp_path / "out"), "model.size=tiny"])
        message = str(exit_info.value.code)
        assert message.startswith("error: inputs.path") and "\n" not in message, message
        assert str(folder) in message
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start
    cfg = load_config(overrides=[f"inputs.path={tmp_path / 'empty'}", "inputs.kind=shards"])
    with pytest.raises(ValueError, match="no shards"):
        list_objects(cfg.inputs)


def test_the_model_fingerprint_follows_the_weights_not_the_folder(tiny_model_dir, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, copy)
    cfg = load_config(overrides=[f"model.path={tiny_model_dir}"])
    moved = load_config(overrides=[f"model.path={copy}"])
    same = fingerprint.make(moved, fingerprint.model_identity(moved), "d")
    original = fingerprint.make(cfg, fingerprint.model_identity(cfg), "d")
    assert fingerprint.changes(original, same) == {}  # moving a folder changes nothing
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one byte of the weights
    weights.write_bytes(bytes(data))
    changed = fingerprint.make(moved, fingerprint.model_identity(moved), "d")
    diff = fingerprint.changes(original, changed)
    assert list(diff) == ["model"] and "identity.unet/diffusion_pytorch_model" in diff["model"][0]
    other_image = fingerprint.make(cfg, fingerprint.model_identity(cfg), "e")
    assert list(fingerprint.changes(original, other_image)) == ["reference"]


def test_speed_settings_do_not_change_a_result_but_unknown_keys_do():
    assert fingerprint.group_of("speed.compile") is None
    assert fingerprint.group_of("sds.unet_compile") is None
    assert fingerprint.group_of("renderer.eval_chunk_rays") is None  # a memory setting
    assert fingerprint.group_of("sds.steps") == "steps"
    assert fingerprint.group_of("inputs.path") is None and fingerprint.group_of("inputs.size")
    assert fingerprint.group_of("renderer.some_new_option") == "sds"  # never silently ignored


def test_no_model_says_what_to_pass(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(images / "a.png")
    with pytest.raises(SystemExit, match="pass MODEL=<model folder>.*model.size=tiny"):
        run.main(["--images", str(images), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_print_config_shows_values_and_their_sources(tmp_path, capsys):
    user = tmp_path / "mine.yaml"
    user.write_text("sds:\n  guidance_scale: 7.5\n")
    run.main(
        ["--config", str(user), "--images", "pics", "--steps", "12", "seed=3", "--print-config"]
    )
    lines = capsys.readouterr().out.splitlines()

    def line(key):
        return next(row for row in lines if row.strip().startswith(f"{key}:"))

    assert "7.5" in line("guidance_scale") and str(user) in line("guidance_scale")
    assert "12" in line("steps") and "command-line flag" in line("steps")
    assert "3" in line("seed") and "command line" in line("seed")
    assert "configs/eval.yaml" in line("loss")
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(SystemExit, match="unknown config key 'sds.stepz'"):
        run.main(["--images", "pics", "sds.stepz=3", "--print-config"])

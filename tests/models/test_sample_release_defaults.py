"""Multi-view sampling as released: a stage-2 model folder samples with its clean reference frame
unless told not to, and under the legacy Isotropic3D camera flag the sampler's cameras are the
released ``get_camera``'s (models.cameras.legacy_sampling_cameras), not the SDS ones."""

from __future__ import annotations

import json
import shutil

import torch

from models.bundle import load_model
from models.cameras import legacy_sampling_cameras
from models.sample import main, sample_views


def _sample(model, **kwargs):
    image = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    return sample_views(model, image, steps=2, image_size=16, progress=False, **kwargs)


def _folder_with(tiny_model_dir, tmp_path, source=None, legacy=None):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    if source:
        meta["source"].update(source)
    if legacy is not None:
        meta["preset"]["cameras"]["legacy_double_radians"] = legacy
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_a_stage_two_folder_samples_with_its_reference_frame(tiny_model_dir, tmp_path, capsys):
    stage2 = load_model(_folder_with(tiny_model_dir, tmp_path, {"stage": 2, "weights": "ema"}))
    auto = _sample(stage2, seed=1)
    assert auto.used_reference_frame is True
    forced = _sample(stage2, seed=1, use_reference_frame=True)
    assert torch.equal(auto.images, forced.images)
    off = _sample(stage2, seed=1, use_reference_frame=False)
    assert off.used_reference_frame is False and (off.images - auto.images).abs().max() > 1e-4
    stage1 = load_model(tiny_model_dir)  # random init, no stage recorded
    assert _sample(stage1).used_reference_frame is False

    image = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGBA", (32, 32), (200, 20, 20, 255)).save(image)
    common = ["--image", str(image), "--steps", "2", "--image-size", "16", "--device", "cpu"]
    main([*common, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "a.png")])
    assert "with the reference frame" in capsys.readouterr().out
    main([*common, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "b.png"),
          "--no-reference-frame"])  # fmt: skip
    assert "without the reference frame" in capsys.readouterr().out


def test_legacy_flag_samples_at_the_released_get_camera_cameras(tiny_model_dir, tmp_path):
    legacy = load_model(_folder_with(tiny_model_dir, tmp_path, legacy=True))
    result = _sample(legacy, elevation_deg=15.0)
    assert torch.allclose(result.cameras, legacy_sampling_cameras(15.0, [0, 90, 180, 270]))
    # ... which are not the SDS cameras of the same flag (frames 1-3 differ in elevation)
    sds = legacy.cameras(torch.full((4,), 15.0), torch.tensor([0.0, 90.0, 180.0, 270.0]))
    assert torch.allclose(result.cameras[0], sds[0], atol=1e-6)
    assert not torch.allclose(result.cameras[1:], sds[1:], atol=1e-5)
    plain = _sample(load_model(tiny_model_dir), elevation_deg=15.0)
    assert not torch.allclose(plain.cameras, result.cameras, atol=1e-3)

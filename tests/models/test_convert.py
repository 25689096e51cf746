"""Checkpoint import/export against the exact key/shape lists of the published checkpoints.

Full-size tensors would need 5-6 GB, so every fixture tensor is a view into one shared random
buffer at its own offset: the shapes are the real ones and every tensor's values differ, while
the memory stays ~256 MB. The target model is built on the meta device and filled by assignment.
"""

import json
from pathlib import Path

import pytest
import torch

from models.bundle import build_model, load_model
from models.convert import (
    ISOTROPIC3D_TEXT_LEFTOVERS,
    SCHEDULE_BUFFERS,
    export_checkpoint,
    import_checkpoint,
    main,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = {
    "mvdream": ("mvdream_sd21_base_4view.keys.json", {"schedule_buffers": 12, "text_encoder": 294}),
    "isotropic3d": (
        "isotropic3d_ckpt.keys.json",
        {"schedule_buffers": 12, "text_tower_leftovers": 6},
    ),
}


def _fixture_state(name: str) -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / name).read_text())["tensors"]
    largest = max(torch.Size(s).numel() for s in shapes.values())
    buffer = torch.randn(largest + 8 * 1024 * 1024, generator=torch.Generator().manual_seed(0))
    state = {}
    for i, (key, shape) in enumerate(sorted(shapes.items())):
        numel = torch.Size(shape).numel()
        offset = (i * 7919) % (buffer.numel() - numel)
        state[key] = buffer[offset : offset + numel].view(shape)
    return state


def _assign(model, imported):
    model.unet.load_state_dict(imported.unet, strict=True, assign=True)
    model.vae.model.load_state_dict(imported.vae, strict=True, assign=True)
    if imported.image_encoder is not None:
        model.image_encoder.visual.load_state_dict(imported.image_encoder, strict=True, assign=True)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_published_layout_maps_exactly_and_round_trips(fmt):
    fixture, ignored_counts = CASES[fmt]
    state = _fixture_state(fixture)
    model = build_model("sd21-base", device="meta", with_image_encoder=fmt == "isotropic3d")
    imported = import_checkpoint(state, fmt, model)

    # Every key is mapped or deliberately ignored, and the ignore lists are exactly the known ones.
    assert {k: len(v) for k, v in imported.ignored.items()} == ignored_counts
    assert set(imported.ignored["schedule_buffers"]) == set(SCHEDULE_BUFFERS)
    if fmt == "isotropic3d":
        assert set(imported.ignored["text_tower_leftovers"]) == set(ISOTROPIC3D_TEXT_LEFTOVERS)
    visual = imported.image_encoder or {}
    assert len(imported.unet) == 690 and len(imported.vae) == 248
    assert len(visual) == (392 if fmt == "isotropic3d" else 0)
    ignored = {k for keys in imported.ignored.values() for k in keys}
    assert len(imported.unet) + len(imported.vae) + len(visual) + len(ignored) == len(state)

    # Every shape matches the model (the camera MLP included).
    _assign(model, imported)
    assert model.unet.class_embedding.linear_1.weight.shape == (1280, 16)
    torch.testing.assert_close(
        model.unet.class_embedding.linear_2.bias,
        state["model.diffusion_model.camera_embed.2.bias"],
    )

    # Export gives back exactly the mapped keys, shapes and values of the original file ...
    exported = export_checkpoint(model, fmt)
    assert set(exported) == set(state) - ignored
    for key, value in exported.items():
        assert value.shape == state[key].shape, key
        assert torch.equal(value, state[key]), key

    # ... and re-importing the export gives identical tensors.
    again = import_checkpoint(exported, fmt, model)
    for part in ("unet", "vae", "image_encoder"):
        first, second = getattr(imported, part) or {}, getattr(again, part) or {}
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), part


def _tiny_ldm_file(tmp_path, fmt, extra_keys):
    model = build_model("tiny", seed=3)
    state = dict(export_checkpoint(model, fmt))
    state.update({k: torch.randn(1000) for k in SCHEDULE_BUFFERS})
    state.update(extra_keys)
    path = tmp_path / f"{fmt}.ckpt"
    torch.save(state, path)
    return model, path


def test_cli_isotropic3d_conversion_keeps_everything_and_the_legacy_flag(tmp_path):
    leftovers = {k: torch.randn(3) for k in ISOTROPIC3D_TEXT_LEFTOVERS}
    model, path = _tiny_ldm_file(tmp_path, "isotropic3d", leftovers)
    out = tmp_path / "converted"
    main(
        [
            "--format",
            "isotropic3d",
            "--checkpoint",
            str(path),
            "--out",
            str(out),
            "--preset",
            "tiny",
        ]
    )
    loaded = load_model(out)
    assert loaded.legacy_double_radians
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    report = json.loads((out / "conversion_report.json").read_text())
    assert sorted(report["ignored"]["text_tower_leftovers"]) == sorted(leftovers)

    exported = tmp_path / "back.safetensors"
    main(["--format", "isotropic3d", "--export", str(out), "--out", str(exported)])
    from safetensors.torch import load_file

    back, original = load_file(str(exported)), torch.load(path, weights_only=True)
    assert set(back) == set(original) - set(SCHEDULE_BUFFERS) - set(leftovers)
    assert all(torch.equal(back[k], original[k]) for k in back)


def test_cli_mvdream_conversion_of_a_preset_without_encoder_tag_saves_a_seeded_encoder(tmp_path):
    """MVDream brings no image encoder: sd21-base records open_clip's tag; tiny names none, so a
    seeded random tower is saved with the model (as a tiny preset init has), and it loads."""
    text = {"cond_stage_model.model.token_embedding.weight": torch.randn(5, 4)}
    model, path = _tiny_ldm_file(tmp_path, "mvdream", text)
    out, again = tmp_path / "converted", tmp_path / "again"
    main(["--format", "mvdream", "--checkpoint", str(path), "--out", str(out)])  # preset: shapes
    main(
        ["--format", "mvdream", "--checkpoint", str(path), "--out", str(again), "--preset", "tiny"]
    )
    meta = json.loads((out / "model.json").read_text())
    assert meta["image_encoder_weights"] == "image_encoder" and meta["source"]["preset"] == "tiny"
    first, second = load_model(out).image_encoder, load_model(again).image_encoder
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key  # seeded: the same tower
    assert meta["preset"]["cameras"]["legacy_double_radians"] is False
    loaded = load_model(out, load_image_encoder=False)
    for key, value in model.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


def test_unknown_keys_and_bad_shapes_are_errors(tmp_path):
    model = build_model("tiny", seed=0)
    state = export_checkpoint(model, "mvdream")
    with pytest.raises(KeyError, match="model_ema.decay"):
        import_checkpoint({**state, "model_ema.decay": torch.zeros(())}, "mvdream", model)
    bad = dict(state)
    bad["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(ValueError, match="out.2.weight"):
        import_checkpoint(bad, "mvdream", model)
    with pytest.raises(ValueError, match="format"):
        import_checkpoint(state, "sd15", model)


class _Payload:
    """Any class outside torch's weights-only allow-list stands for code in a pickle."""


def test_checkpoints_never_unpickle_code(tmp_path):
    import pickle

    from models.checkpoint_io import load_state_dict_file

    path = tmp_path / "evil.ckpt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_file(path)
    torch.save({"weight": torch.zeros(2), "step": 3}, path)
    with pytest.raises(ValueError, match="flat state dict"):
        load_state_dict_file(path)
    torch.save({"state_dict": {"weight": torch.ones(2)}}, path)  # Lightning-style wrapper
    assert torch.equal(load_state_dict_file(path)["weight"], torch.ones(2))

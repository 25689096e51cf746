"""What a weights file or folder holds is read from its content, not its name: safetensors and
PyTorch saves by their bytes, MVDream vs Isotropic3D by their keys, the preset by the tensors'
shapes (the published files' exact shapes pick sd21-base), a diffusers folder by its component
configs. A wrong FORMAT for a published file is refused instead of silently dropping its image
tower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.bundle import build_model, load_model
from models.checkpoint_io import CheckpointError, file_kind, load_state_dict_file, tensor_shapes
from models.convert import (
    SCHEDULE_BUFFERS,
    convert,
    export_checkpoint,
    preset_for_shapes,
    published_format,
)
from models.detect import DIFFUSERS_FOLDER, MODEL_FOLDER, folder_kind, load_diffusers_folder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def published_state(model, fmt: str) -> dict[str, torch.Tensor]:
    """``model`` in the original LDM layout with what the published files carry besides: the
    schedule buffers, and MVDream's text tower (which the import ignores)."""
    state = export_checkpoint(model, fmt)
    state |= {name: torch.rand(10) for name in SCHEDULE_BUFFERS}
    if fmt == "mvdream":
        state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.rand(
            96, 32
        )
    return state


@pytest.mark.parametrize("name", ["mvdream_sd21_base_4view", "isotropic3d_ckpt"])
def test_the_published_files_shapes_pick_their_format_and_sd21_base(name):
    tensors = json.loads((FIXTURES / f"{name}.keys.json").read_text())["tensors"]
    shapes = {k: tuple(v) for k, v in tensors.items()}
    fmt = published_format(shapes)
    assert fmt == name.split("_")[0]
    assert preset_for_shapes(shapes, fmt, name) == "sd21-base"


def test_a_published_file_is_read_by_content_whatever_its_suffix(tmp_path):
    model = build_model("tiny", seed=3)
    mvdream = tmp_path / "looks_like_isotropic3d.ckpt"  # the old rule: .ckpt = Isotropic3D
    torch.save(published_state(model, "mvdream"), mvdream)
    iso = tmp_path / "weights.pt"  # the old rule: .pt = MVDream
    torch.save(published_state(model, "isotropic3d"), iso)
    stensors = tmp_path / "really_safetensors.pt"
    save_file({k: v.contiguous() for k, v in published_state(model, "mvdream").items()}, stensors)
    legacy = tmp_path / "old_format.bin"
    torch.save(published_state(model, "isotropic3d"), legacy, _use_new_zipfile_serialization=False)
    expected = {mvdream: "mvdream", iso: "isotropic3d", stensors: "mvdream", legacy: "isotropic3d"}
    kinds = {
        mvdream: "torch-zip",
        iso: "torch-zip",
        stensors: "safetensors",
        legacy: "torch-legacy",
    }
    for path, fmt in expected.items():
        assert file_kind(path) == kinds[path], path
        shapes = tensor_shapes(path)
        assert published_format(shapes) == fmt, path
        assert preset_for_shapes(shapes, fmt, str(path)) == "tiny", path
    back = load_model(convert(stensors, "mvdream", tmp_path / "back"), load_image_encoder=False)
    for key, value in model.unet.state_dict().items():
        assert torch.equal(back.unet.state_dict()[key], value), key  # bit-exact
    assert back.source["preset"] == "tiny"
    with pytest.raises(
        CheckpointError, match="holds an isotropic3d checkpoint.*FORMAT=isotropic3d"
    ):
        convert(iso, "mvdream", tmp_path / "wrong")  # would drop the image tower silently
    assert not (tmp_path / "wrong").exists()


def test_shapes_of_no_preset_are_reported_with_the_closest_one(tmp_path):
    state = published_state(build_model("tiny"), "mvdream")
    key = "model.diffusion_model.out.2.weight"
    state[key] = torch.zeros(4, 16, 3, 3)
    with pytest.raises(CheckpointError, match=rf"fit no model preset.*closest tiny.*{key}"):
        preset_for_shapes({k: tuple(v.shape) for k, v in state.items()}, "mvdream", "f.pt")


def test_files_that_are_no_checkpoint_name_the_file_and_the_problem(tmp_path):
    import zipfile

    empty, text, other_zip = tmp_path / "empty.ckpt", tmp_path / "notes.pt", tmp_path / "a.ckpt"
    empty.write_bytes(b"")
    text.write_text("hello")
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "not weights")
    cut = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:100])
    problems = {
        empty: "empty.ckpt is empty",
        text: "notes.pt is not a checkpoint: neither a safetensors file nor a PyTorch save",
        other_zip: r"a.ckpt is a zip archive but not a PyTorch save \(no data.pkl; it holds readme",
        cut: "cut.safetensors cannot be read",
    }
    for path, message in problems.items():
        with pytest.raises(CheckpointError, match=message):
            load_state_dict_file(path)


def test_a_diffusers_folder_without_model_json_loads_bit_exact(tiny_model_dir, tmp_path):
    folder = tmp_path / "components"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("model.json"))
    assert folder_kind(tiny_model_dir) == MODEL_FOLDER and folder_kind(folder) == DIFFUSERS_FOLDER
    assert folder_kind(tmp_path) is None
    ours, theirs = load_model(tiny_model_dir), load_diffusers_folder(folder)
    assert theirs.preset == ours.preset  # rebuilt from unet/, vae/, scheduler/, image_encoder/
    for a, b in [(ours.unet, theirs.unet), (ours.vae, theirs.vae)]:
        for key, value in a.state_dict().items():
            assert torch.equal(b.state_dict()[key], value), key
    for key, value in ours.image_encoder.state_dict().items():
        assert torch.equal(theirs.image_encoder.state_dict()[key], value), key
    shutil.rmtree(folder / "image_encoder")  # the tiny preset names no pretrained encoder
    with pytest.raises(CheckpointError, match="no image encoder weights"):
        load_diffusers_folder(folder)

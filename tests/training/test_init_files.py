"""A checkpoint of ours that cannot be used is reported as such, naming the file and what is
wrong, by ``model.init`` and by ``make export``'s command (one line, no traceback, nothing
written): a truncated file, a zip that is not a PyTorch save, a save without its weights, one
missing UNet tensors. None of them is handed to an importer that would blame the format."""

from __future__ import annotations

import shutil
import zipfile

import pytest
import torch

from models.checkpoint_io import CheckpointError
from training.export import main as export_main
from training.model_init import resolve_init


@pytest.fixture(scope="module")
def damaged(stage1_run, tmp_path_factory):
    """Copies of the stage-1 run's checkpoint, each damaged one way, inside a copy of the run
    (so the base model is found as for the real one)."""
    run = tmp_path_factory.mktemp("damaged_run")
    shutil.copytree(stage1_run["out"] / "base_model", run / "base_model")
    folder = run / "checkpoints"
    folder.mkdir()
    saved = sorted((stage1_run["out"] / "checkpoints").glob("*.ckpt"))[-1]
    whole = folder / "whole.ckpt"
    shutil.copy(saved, whole)
    data = whole.read_bytes()
    (folder / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(folder / "zip.ckpt", "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    content = torch.load(whole, weights_only=True)
    torch.save({k: v for k, v in content.items() if k != "state_dict"}, folder / "noweights.ckpt")
    keys = sorted(content["state_dict"])
    kept = {k: v for k, v in content["state_dict"].items() if k not in keys[::10]}
    torch.save({**content, "state_dict": kept}, folder / "missing.ckpt")
    return {"folder": folder, "missing": len(keys[::10]), "unet": len(keys)}


PROBLEMS = {
    "cut": r"cut.ckpt cannot be read: a damaged or incomplete zip archive",
    "zip": r"zip.ckpt is a zip archive but not a PyTorch save \(no data.pkl; it holds notes/",
    "noweights": r"noweights.ckpt is a training checkpoint of this stack without its model weights",
}


def test_damaged_checkpoints_of_ours_name_the_file_and_the_problem(damaged, tmp_path):
    folder = damaged["folder"]
    assert resolve_init(str(folder / "whole.ckpt"), 0, workdir=tmp_path).unet is not None
    problems = {
        **PROBLEMS,
        "missing": rf"missing.ckpt: {damaged['missing']} of the UNet's {damaged['unet']} tensors "
        "are missing",
    }
    for name, message in problems.items():
        with pytest.raises(CheckpointError, match=message):
            resolve_init(str(folder / f"{name}.ckpt"), 0, workdir=tmp_path)
        out = tmp_path / f"export-{name}"
        with pytest.raises(SystemExit) as exited:
            export_main([str(folder / f"{name}.ckpt"), "--out", str(out)])
        line = str(exited.value)
        assert line.startswith("error: ") and "\n" not in line, line
        assert f"{name}.ckpt" in line
        assert not out.exists()  # nothing written
    assert not list(tmp_path.glob("imported-*"))  # no importer ran


def test_training_with_a_damaged_init_stops_with_one_line(damaged, rendered_shards, tmp_path):
    import json

    from train_helpers import FAST, TINY, run_cli

    result = run_cli(
        [
            "-m", "training.train", "--config", str(TINY), *FAST, f"out={tmp_path / 'run'}",
            f"data.train={json.dumps([str(rendered_shards)])}",
            f"model.init={damaged['folder'] / 'cut.ckpt'}",
        ]
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: " in result.stderr and "cut.ckpt cannot be read" in result.stderr

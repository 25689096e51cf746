"""``model.init`` given a ``.ckpt`` file: our own checkpoint that cannot be read is reported as
damaged, not handed to the Isotropic3D importer (which would blame the format)."""

from __future__ import annotations

import shutil

import pytest

from training.model_init import resolve_init


def test_a_truncated_checkpoint_of_ours_is_reported_as_damaged(stage1_run, tmp_path):
    saved = sorted((stage1_run["out"] / "checkpoints").glob("*.ckpt"))[-1]
    whole = tmp_path / "whole.ckpt"
    shutil.copy(saved, whole)
    assert resolve_init(str(whole), 0, workdir=tmp_path).unet is not None  # readable: ours
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.ckpt cannot be read.*damaged or incomplete"):
        resolve_init(str(cut), 0, workdir=tmp_path)
    assert not list(tmp_path.glob("imported-*"))  # no importer ran

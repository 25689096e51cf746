"""``model.init`` (INIT=) is detected by content: our model folder, a diffusers folder, an MVDream
or Isotropic3D state dict whatever its suffix (the preset from its shapes), our training
checkpoint (even named .pt), a run folder; and any of these as ``hf:org/name[/file][@revision]``
from a Hugging Face hub cache laid out as huggingface_hub lays it out, online (cache fallback when
the hub cannot be reached) or with HF_HUB_OFFLINE; not cached and offline is one clear message."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from hub_cache import put_in_hub_cache
from train_helpers import ROOT

from models.bundle import load_model
from models.checkpoint_io import CheckpointError
from models.convert import export_checkpoint
from models.hub import HubUnavailable
from training.checkpoint_read import read_checkpoint
from training.init_detect import PRESET, TRAINING, detect_init
from training.model_init import PRESETS, resolve_init

REPO = "isotropic3d-tests/tiny"


def _same_unet(a, b) -> None:
    state = b.unet.state_dict()
    for key, value in a.unet.state_dict().items():
        assert torch.equal(state[key], value), key


def _mvdream_file(model, path):
    torch.save(export_checkpoint(model, "mvdream"), path)
    return path


def test_each_kind_is_detected_by_content(stage1_run, tiny_model_dir, tmp_path):
    out = stage1_run["out"]
    saved = sorted((out / "checkpoints").glob("*.ckpt"))[-1]
    renamed = tmp_path / "stage1_weights.pt"  # ours, under MVDream's suffix
    shutil.copy(saved, renamed)
    diffusers = tmp_path / "components"
    shutil.copytree(tiny_model_dir, diffusers, ignore=shutil.ignore_patterns("model.json"))
    base = load_model(tiny_model_dir)
    mvdream = _mvdream_file(base, tmp_path / "mvdream_named.ckpt")
    found = {
        "tiny": (PRESET, None),
        "random:sd21-base": (PRESET, None),
        str(tiny_model_dir): ("model-folder", tiny_model_dir),
        str(diffusers): ("diffusers-folder", diffusers),
        str(renamed): (TRAINING, renamed),
        str(out): (TRAINING, saved),  # a run folder: its newest checkpoint
        str(out / "checkpoints"): (TRAINING, saved),
        str(mvdream): ("mvdream", mvdream),
    }
    for init, (kind, path) in found.items():
        source = detect_init(init, PRESETS)
        assert (source.kind, source.path) == (kind, path), init
    assert detect_init(str(mvdream), PRESETS).preset == "tiny"  # from the shapes

    ema = read_checkpoint(saved).ema
    params = dict(resolve_init(str(renamed), 0, workdir=tmp_path).unet.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in ema.items())  # our EMA, not an import
    _same_unet(base, resolve_init(str(diffusers), 0, workdir=tmp_path))
    _same_unet(base, resolve_init(str(mvdream), 0, workdir=tmp_path))  # converted as tiny
    assert (tmp_path / "imported-mvdream_named" / "model.json").is_file()

    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not_a_model is a folder that holds no model"):
        detect_init(str(empty), PRESETS)
    stray = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, stray)
    with pytest.raises(CheckpointError, match=r"other.pt holds 1 tensors in no layout"):
        detect_init(str(stray), PRESETS)
    with pytest.raises(FileNotFoundError, match=r"model.init \(INIT\): .*nowhere does not exist"):
        detect_init(str(tmp_path / "nowhere"), PRESETS)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A temporary HF_HOME whose hub cache holds the tiny model in each layout INIT accepts."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    diffusers = tmp_path / "diffusers"
    shutil.copytree(tiny_model_dir, diffusers, ignore=shutil.ignore_patterns("model.json"))
    model = load_model(tiny_model_dir)
    other = _mvdream_file(model, tmp_path / "other.pt")
    mvdream = _mvdream_file(model, tmp_path / "sd-v2.1-base-4view.pt")
    put_in_hub_cache(cache, f"{REPO}-folder", {".": tiny_model_dir, "README.md": mvdream})
    put_in_hub_cache(cache, f"{REPO}-diffusers", {".": diffusers})
    put_in_hub_cache(cache, f"{REPO}-mvdream", {"sd-v2.1-base-4view.pt": mvdream})
    put_in_hub_cache(cache, f"{REPO}-two", {"a.pt": mvdream, "b.ckpt": other})
    first = put_in_hub_cache(cache, f"{REPO}-tagged", {"model.pt": mvdream}, revision="v1")
    return {"cache": cache, "model": model, "v1": first}


def test_hub_ids_resolve_from_the_cache_offline(hub_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hub_cache["model"]
    for init, kind in [
        (f"hf:{REPO}-folder", "model-folder"),
        (f"hf:{REPO}-diffusers", "diffusers-folder"),
        (f"hf:{REPO}-mvdream", "mvdream"),  # one weights file: that file
        (f"hf:{REPO}-two/b.ckpt", "mvdream"),  # a path in the repository, detected by content
        (f"hf:{REPO}-tagged@v1", "mvdream"),
        (f"hf:{REPO}-tagged@{hub_cache['v1']}", "mvdream"),
    ]:
        source = detect_init(init, PRESETS)
        assert source.kind == kind, init
        assert hub_cache["cache"] in source.path.parents, init
    for init in (f"hf:{REPO}-folder", f"hf:{REPO}-diffusers", f"hf:{REPO}-mvdream"):
        _same_unet(model, resolve_init(init, 0, workdir=tmp_path))
    with pytest.raises(CheckpointError, match=rf"2 weights files \(a.pt, b.ckpt\).*hf:{REPO}-two/"):
        detect_init(f"hf:{REPO}-two", PRESETS)
    with pytest.raises(HubUnavailable) as missing:
        detect_init("hf:MVDream/MVDream/sd-v2.1-base-4view.pt@main", PRESETS)
    message = str(missing.value)
    assert "HF_HUB_OFFLINE is set" in message and str(hub_cache["cache"]) in message
    assert "hf download MVDream/MVDream sd-v2.1-base-4view.pt --revision main" in message
    with pytest.raises(CheckpointError, match="is not a hub id"):
        detect_init("hf:MVDream", PRESETS)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections refused


def test_without_network_the_hub_client_falls_back_to_its_cache(hub_cache, tmp_path):
    """Not offline by setting: the hub is asked, cannot be reached, and the cache answers (a
    fresh process, so huggingface_hub reads HF_HOME and HF_ENDPOINT as a user's run would)."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")},
        "HF_HOME": str(hub_cache["cache"].parent),
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "PYTHONPATH": str(ROOT),
    }
    script = (
        "import sys; from training.init_detect import detect_init; "
        "from training.model_init import PRESETS; from models.checkpoint_io import CheckpointError\n"
        "for init in sys.argv[1:]:\n"
        "    try: print(detect_init(init, PRESETS).kind)\n"
        "    except CheckpointError as error: print('error:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, f"hf:{REPO}-folder", f"hf:{REPO}-mvdream", "hf:org/absent"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["model-folder", "mvdream"]
    assert lines[2].startswith("error: hf:org/absent: not in the Hugging Face cache")
    assert "the hub cannot be reached" in lines[2] and "hf download org/absent" in lines[2]

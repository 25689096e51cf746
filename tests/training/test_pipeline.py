"""Stage 1 -> checkpoint -> stage 2 initialised from it -> export -> the sampler loads the export.
Also: what a checkpoint holds (UNet + fp32 EMA, no frozen VAE/encoder), keep-last-N, logging."""

from __future__ import annotations

import json

import torch
from train_helpers import run_cli, tiny_config

from models.bundle import load_model
from models.sample import sample_views
from training.checkpoint_read import read_checkpoint
from training.checkpoint_resolve import latest_checkpoint
from training.skipped_data import read_skipped
from training.train import run


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_stage1_checkpoint_content_and_keep_last(stage1_run):
    out = stage1_run["out"]
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step=00000008.ckpt"]  # every 4 steps, keep_last=1
    raw = torch.load(out / "checkpoints" / kept[0], map_location="cpu", weights_only=True)
    assert raw["global_step"] == 8
    assert raw["state_dict"] and all(k.startswith("unet.") for k in raw["state_dict"])
    module = stage1_run["trainer"].lightning_module
    trainable = [p for p in module.unet.parameters() if p.requires_grad]
    (optimizer,) = raw["optimizer_states"]
    assert len(optimizer["state"]) == len(trainable)  # frozen VAE/encoder are not optimised
    ema = raw["weight_ema"]["shadow"]
    assert len(ema) == len(trainable) and all(t.dtype == torch.float32 for t in ema.values())
    ours = read_checkpoint(out / "checkpoints" / kept[0])
    live = {n: p.detach() for n, p in module.unet.named_parameters()}
    assert all(torch.equal(ours.unet[n], live[n]) for n in ema)
    assert any(not torch.equal(ema[n], live[n]) for n in ema)  # the EMA lags the weights
    assert raw["lr_schedulers"][0]["last_epoch"] == 8


def test_stage1_logs_branches_throughput_skips_and_samples(stage1_run, corrupt_shards):
    out = stage1_run["out"]
    records = _metrics(out)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {r["multiview"] for r in records} == {True, False}  # both branches ran
    logged = [r for r in records if "perf/images_per_s" in r]
    assert logged and all(r["perf/images_per_s"] > 0 for r in logged)
    assert logged[-1]["data/skipped"] > 0  # the damaged shard was read: skipped and counted
    named = {(r["shard"], r["key"]) for r in read_skipped(out)}  # and named in the run folder
    damaged = str(corrupt_shards["shard"])
    assert named and named <= {(damaged, key) for key in corrupt_shards["broken"]}, named
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss/multiview", "loss/single", "lr", "perf/images_per_s", "data/skipped"} <= set(
        tags["scalars"]
    )
    assert "samples" in tags["images"]
    grids = sorted(p.name for p in (out / "samples").iterdir())  # also as files in the run folder
    assert grids == ["step_00000004.png", "step_00000008.png"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["config"]["train"]["max_steps"] == 8 and info["environment"]["world_size"] == 1
    assert len(info["environment"]["git"]["commit"]) == 40
    assert info["environment"]["packages"]["torch"] == torch.__version__.split("+")[0]
    logged = (out / "tensorboard" / "hparams.yaml").read_text()  # what TensorBoard was sent
    assert "environment" in logged and info["environment"]["git"]["commit"] in logged


def test_stage2_from_stage1_then_export_then_sampler(stage1_run, rendered_shards, tmp_path):
    stage1_ckpt = latest_checkpoint(stage1_run["out"])
    stage1 = read_checkpoint(stage1_ckpt)
    out = tmp_path / "stage2"
    config = tiny_config(
        out,
        rendered_shards,
        f"model.init={stage1_run['out'] / 'checkpoints'}",
        "train.max_steps=3",
        "checkpoint.every_n_steps=3",
        "train.multiview_ratio=0.5",
        "stage2.ref_dropout=0.5",
        stage=2,
    )
    assert config.stage == 2
    run(config)
    assert {r["multiview"] for r in _metrics(out)} == {True, False}  # both stage-2 branches ran
    start = load_model(out / "base_model")  # the weights stage 2 started from = stage-1 EMA
    for name, tensor in start.unet.state_dict().items():
        if name in stage1.ema:
            assert torch.equal(tensor, stage1.ema[name]), name

    export = tmp_path / "export"
    result = run_cli(["-m", "training.export", str(out), "--out", str(export)])
    assert result.returncode == 0, result.stderr[-3000:]
    final = read_checkpoint(latest_checkpoint(out))
    assert final.run_config["stage"] == 2 and final.step == 3
    for kind, weights in (("fp32", final.unet), ("ema", final.ema)):
        model = load_model(export / kind)
        state = model.unet.state_dict()
        assert all(torch.equal(state[n], weights[n]) for n in weights)
        views = sample_views(model, torch.rand(3, 32, 32), steps=2, image_size=32, progress=False)
        assert views.images.shape == (4, 3, 32, 32) and torch.isfinite(views.images).all()
        # What it trained on, for SDS: the renders' framing, the VAE latent, the reference.
        source = json.loads((export / kind / "model.json").read_text())["source"]
        assert source["camera_distance_range"] == [0.9, 1.1] and source["fov_range"] == [15, 60]
        assert source["vae_latent"] == "sample" and source["reference_resolution"] == 32
        assert source["reference_dropout"] == 0.5 and model.source == source


def test_make_export_writes_the_original_layout_one_variable_away(stage1_run, tmp_path):
    import subprocess
    import sys

    from train_helpers import ROOT

    from models.convert import convert

    out = tmp_path / "export"
    result = subprocess.run(
        ["make", "-s", "-o", "setup", "export", f"CKPT={stage1_run['out']}", f"OUT={out}",
         "LAYOUT=mvdream", f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "ema" / "unet" / "config.json").is_file() and (out / "ema.pt").is_file()
    back = load_model(
        convert(out / "ema.pt", "mvdream", tmp_path / "back", preset="tiny"),
        load_image_encoder=False,
    )
    exported = load_model(out / "ema")
    for part in ("unet", "vae"):  # bit-exact round trip of every component the layout holds
        state = getattr(back, part).state_dict()
        for key, value in getattr(exported, part).state_dict().items():
            assert torch.equal(state[key], value), (part, key)

"""Loggers users can follow: one W&B run per run folder across requeues, and MFU from the peak of
the GPU model actually present (PCIe, NVL and SXM parts differ)."""

from __future__ import annotations

import os

from train_helpers import TINY

from training.callbacks import peak_tflops_of
from training.config import load_config
from training.run_logging import wandb_run_id, wandb_settings


def test_wandb_run_id_follows_the_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "stage1 big"
    run.mkdir(parents=True)
    first = wandb_run_id(run)
    monkeypatch.chdir(tmp_path)
    assert wandb_run_id("runs/stage1 big") == first  # a requeue from another working folder
    assert wandb_run_id(str(run) + os.sep) == first
    assert first.startswith("stage1-big-") and all(c.isalnum() or c in "-_" for c in first)
    assert wandb_run_id(tmp_path / "runs" / "stage2") != first
    config = load_config(TINY, ["log.logger=wandb", "log.wandb_project=mine"])
    settings = wandb_settings(config, run)
    assert settings["id"] == first and settings["resume"] == "allow"
    assert settings["project"] == "mine" and settings["save_dir"] == str(run)


def test_mfu_peak_is_looked_up_by_the_exact_gpu_model():
    assert peak_tflops_of("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert peak_tflops_of("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_of("NVIDIA H100 NVL") == 835.0
    assert peak_tflops_of("NVIDIA H200") == 989.0
    assert peak_tflops_of("NVIDIA GH200 480GB") == 989.0
    assert peak_tflops_of("NVIDIA A100-SXM4-80GB") == peak_tflops_of("NVIDIA A100 80GB PCIe")
    assert peak_tflops_of("NVIDIA L40S") == 362.0 and peak_tflops_of("NVIDIA L40") == 181.0
    assert peak_tflops_of("NVIDIA A10") == 125.0 and peak_tflops_of("NVIDIA L4") == 121.0
    assert peak_tflops_of("Some Future GPU") == 0.0  # unknown: no made-up MFU

"""What a run tells its loggers: a stable identity (a requeued SLURM job resumes the same W&B run),
and at the start the resolved config and the environment (package versions, git commit, world
size, devices), also written to ``run_info.json`` in the run folder for runs without a logger."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from training.config import RunConfig, to_dict

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "pytorch-lightning", "diffusers", "deepspeed", "open_clip_torch", "webdataset")
RUN_INFO = "run_info.json"


def wandb_run_id(out: str | Path) -> str:
    """The W&B run id of a run folder: its name plus a hash of its absolute path. Every restart
    of the same folder (a requeue, a resume by hand) logs into the same W&B run."""
    folder = Path(out).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.name).strip("-")[:40] or "run"
    return f"{name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"


def wandb_settings(config: RunConfig, out: Path) -> dict[str, Any]:
    """Keyword arguments of Lightning's WandbLogger for this run (resumed when the id exists)."""
    return {
        "project": config.log.wandb_project,
        "save_dir": str(out),
        "name": out.name,
        "id": wandb_run_id(out),
        "resume": "allow",
    }


def make_logger(config: RunConfig, out: Path):
    if config.log.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(str(out), name="tensorboard", version="")
    if config.log.logger == "wandb":
        from pytorch_lightning.loggers import WandbLogger  # needs `pip install wandb`

        return WandbLogger(**wandb_settings(config, out))
    return False


def git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git binary, or a hung file system
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip()) if commit else None}


def environment(world_size: int, num_nodes: int) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git": git_commit(),
        "world_size": world_size,
        "num_nodes": num_nodes,
        "host": socket.gethostname(),
        "cuda": torch.version.cuda,
        "gpus": gpus,
    }


class RunInfo(pl.Callback):
    """At the start of fit (rank 0): the resolved config and the environment to every logger as
    hyper-parameters, and to ``run_info.json``."""

    def __init__(self, config: RunConfig, out: str | Path) -> None:
        self.config, self.out = config, Path(out)

    def on_fit_start(self, trainer: pl.Trainer, module: Any) -> None:
        if not trainer.is_global_zero:
            return
        info = {
            "config": to_dict(self.config),
            "environment": environment(trainer.world_size, trainer.num_nodes),
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(info)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / RUN_INFO).write_text(json.dumps(info, indent=1, default=str) + "\n")

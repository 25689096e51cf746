"""The initial weights are read from storage once, by rank 0, and broadcast: two DDP ranks on
gloo start from a model folder; rank 1 reads no weight file and still starts from the same UNet,
VAE and image encoder as rank 0 (the frozen networks are not wrapped by DDP, so only the
broadcast can bring them)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from train_helpers import FAST, ROOT

from models.bundle import load_model

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sums(model) -> dict[str, float]:
    parts = {"unet": model.unet, "vae": model.vae, "image_encoder": model.image_encoder}
    return {
        name: float(sum(p.double().sum() for p in part.state_dict().values()))
        for name, part in parts.items()
    }


def test_two_ranks_read_the_initial_model_once(rendered_shards, tiny_model_dir, tmp_path):
    from training import launch

    args = [
        "--stage", "1", "--no-slurm", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "--data", str(rendered_shards),
        "--out", str(tmp_path / "run"), "--nodes", "1", "--gpus", "2",
        "--init", str(tiny_model_dir), *FAST, "train.max_steps=2", "log.logger=none",
        "ema.enabled=true",
    ]  # fmt: skip
    (command,) = launch.plan(launch.parse(args)).commands
    at = command.index("training.train")
    command = [*command[: at - 1], str(HERE / "read_counting_train.py"), *command[at + 1 :]]
    log = tmp_path / "reads"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "READ_LOG": str(log), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    reads = {rank: Path(f"{log}.{rank}") for rank in (0, 1)}
    assert reads[0].is_file() and "read_weights" in reads[0].read_text()
    assert not reads[1].exists(), reads[1].read_text()  # rank 1 read no weight file
    expected = _sums(load_model(tiny_model_dir))
    for rank in (0, 1):
        sums = json.loads(Path(f"{log}.{rank}.sums").read_text())
        assert sums == expected, (rank, sums, expected)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]

"""Real multi-process training on CPU: DDP on gloo with 2 processes on one node, and a 2-node
torchrun simulation (node ranks 0 and 1 on 127.0.0.1), both through training.launch. Every rank
finishes the same number of steps and sees different samples."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import torch
from train_helpers import FAST, ROOT

from training import launch

STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_args(shards, out, *extra: str) -> list[str]:
    return [
        "--stage", "1", "--no-slurm", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "--data", str(shards), "--out", str(out), *extra,
        *FAST, f"train.max_steps={STEPS}", f"checkpoint.every_n_steps={STEPS}", "log.logger=none",
    ]  # fmt: skip


def _check_ranks(out) -> None:
    """Rank 0 writes the one metrics.jsonl, with every rank's samples per step."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    assert not (out / "metrics.rank1.jsonl").exists()
    samples = {
        rank: [(k, tuple(v)) for x in lines for k, v in zip(x["keys"][rank], x["views"][rank])]
        for rank in (0, 1)
    }
    assert samples[0] != samples[1]
    assert (out / "checkpoints" / f"step={STEPS:08d}.ckpt").is_file()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_ddp_two_processes_on_gloo(rendered_shards, tmp_path):
    out = tmp_path / "ddp"
    args = [
        "-m",
        "training.launch",
        *_launch_args(rendered_shards, out, "--nodes", "1", "--gpus", "2"),
    ]
    result = subprocess.run(
        [launch.sys.executable, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "terminate called" not in result.stderr  # a rank aborted at exit (see below)
    assert "torch.distributed.run" in result.stdout and "--nproc-per-node=2" in result.stdout
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    _check_ranks(out)


def test_two_node_torchrun_simulation(rendered_shards, tmp_path):
    out = tmp_path / "two_nodes"
    plan = launch.plan(
        launch.parse(_launch_args(rendered_shards, out, "--nodes", "2", "--gpus", "1"))
    )
    assert plan.mode == "torchrun" and len(plan.commands) == 2
    assert "--node-rank=0" in plan.commands[0] and "--node-rank=1" in plan.commands[1]
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd in plan.commands
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    _check_ranks(out)


def test_process_group_is_released_before_exit():
    """training.train destroys the process group when it ends: gloo's threads outliving it
    aborted rank 0 of a finished DDP run at interpreter exit (SIGABRT; seen in CI)."""
    from training.train import release_process_group

    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    release_process_group()
    assert not torch.distributed.is_initialized()
    release_process_group()  # nothing to release: a no-op


def test_launcher_prints_other_node_commands(tmp_path):
    """torchrun on 8 nodes: this node runs rank 0, the others' commands are printed. (The SLURM
    script is tested on a real local cluster: tests/cluster.)"""
    result = subprocess.run(
        [launch.sys.executable, "-m", "training.launch", "--stage", "2", "--nodes", "8", "--gpus", "8",
         "--launcher", "torchrun", "--master-addr", "10.0.0.1", "--dry-run", "train.lr=1e-5"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for rank in range(1, 8):
        assert f"--node-rank={rank} --master-addr=10.0.0.1" in result.stdout
    assert (
        "strategy.num_nodes=8 strategy.devices=8" in result.stdout
        and "train.lr=1e-5" in result.stdout
    )


def _skipped(out) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["data/skipped"] for r in lines if "data/skipped" in r}


def test_skipped_sample_count_is_summed_over_ranks_and_kept_on_resume(corrupt_shards, tmp_path):
    """Each rank counts its own loader's corrupt samples: the checkpoint keeps their sum and a
    resumed run goes on from it (it used to restore rank 0's count on every rank: x world size)."""
    runs = {}
    for name, stops in (("whole", (6,)), ("resumed", (4, 6))):
        out = tmp_path / name
        for steps in stops:
            args = _launch_args(corrupt_shards["folder"], out, "--nodes", "1", "--gpus", "2")
            args += [f"train.max_steps={steps}", "checkpoint.every_n_steps=4",
                     "log.every_n_steps=1", "data.exact_resume=true"]  # fmt: skip
            result = subprocess.run(
                [launch.sys.executable, "-m", "training.launch", *args],
                cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = _skipped(out)
    whole, resumed = runs["whole"], runs["resumed"]
    assert whole[6] > 0 and sorted(whole) == list(range(1, 7))
    saved = torch.load(
        tmp_path / "resumed" / "checkpoints" / "step=00000004.ckpt", weights_only=True
    )["data_skipped"]
    assert saved == whole[4]  # the sum over both ranks at step 4
    assert resumed[6] == whole[6] and resumed[5] == whole[5]

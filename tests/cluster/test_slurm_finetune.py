"""``make finetune`` on a real (local, two-node) SLURM cluster: stage 1 then stage 2 under
DeepSpeed on CPU, one task per node, submitted in one command and chained by the cluster; the job
a GPU-less login node submits for STAGE=2 NODES=8; requests the partition cannot meet; and the
launcher's choice of SLURM only when a controller answers."""

from __future__ import annotations

import json
import subprocess

import torch
from cluster_helpers import FAST, job_ids, make, wait_done

from cluster import slurm
from training.checkpoint_files import is_complete
from training.checkpoint_read import read_checkpoint

STEPS = 4


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_stage1_then_stage2_on_two_nodes_under_deepspeed(slurm_env, rendered_shards, tmp_path):
    out = tmp_path / "run"
    settings = [*FAST, f"train.max_steps={STEPS}", "checkpoint.every_n_steps=2"]
    result = make(
        "finetune", "STAGE=1+2", "NODES=2", "GPUS=1", "CONFIG=tiny", f"DATA={rendered_shards}",
        f"OUT={out}", f"ARGS={' '.join(settings)}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    # printed before submitting: config, nodes x GPUs, global batch; then id, log, follow, cancel
    assert "configs/stage1-tiny.yaml" in text and "configs/stage2-tiny.yaml" in text
    assert "2 node(s) x 1 GPU(s) = 2 task(s)" in text and "global batch 4 objects" in text
    first, second = job_ids(text)
    assert f"scancel {first}" in text and f"tail -f {out}/stage1/slurm/" in text
    assert f"(after job {first})" in text
    states = wait_done([first, second])
    logs = {s: next((out / f"stage{s}" / "slurm").glob("*.out")).read_text() for s in (1, 2)}
    assert [states[i]["JobState"] for i in (first, second)] == ["COMPLETED"] * 2, logs
    assert states[second]["StartTime"] >= states[first]["EndTime"]  # afterok: after stage 1
    for stage in (1, 2):
        log, run = logs[stage], out / f"stage{stage}"
        assert "task 0 on n1" in log and "task 1 on n2" in log  # one task per node
        assert "initializing deepspeed distributed" in log and "MEMBER: 2/2" in log
        records = _metrics(run)
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))
        keys = list(zip(*[r["keys"] for r in records]))
        assert len(keys) == 2 and keys[0] != keys[1]  # two ranks on different samples
        final = run / "checkpoints" / f"step={STEPS:08d}.ckpt"
        assert final.is_dir() and is_complete(final)  # a DeepSpeed folder, marked complete
    # stage 2 started from the stage-1 run (its EMA weights), as the chained job was told
    config = (out / "stage2" / "config.yaml").read_text()
    assert f"init: {out}/stage1" in config and "stage: 2" in config
    assert read_checkpoint(out / "stage2" / "checkpoints" / f"step={STEPS:08d}.ckpt").step == STEPS


def test_gpu_less_login_node_submits_the_sd21_base_job_with_the_partitions_gpus(
    slurm_env, rendered_shards, tmp_path
):
    assert not torch.cuda.is_available()  # this host is the login node without a GPU
    init = tmp_path / "stage1-export"  # a model folder, as far as the submit-time check reads it
    init.mkdir()
    (init / "model.json").write_text("{}")
    out = tmp_path / "stage2"
    # the settings as Make variables and as the config's slurm.* keys (the variables win)
    keys = "slurm.account=vision slurm.qos=low slurm.extra=[--comment=stage2] slurm.time=1:00:00"
    result = make(
        "finetune", "STAGE=2", "NODES=8", f"DATA={rendered_shards}", f"INIT={init}", f"OUT={out}",
        "PARTITION=local", "QOS=high", "TIME=4:00:00", "CONSTRAINT=a100|h100",
        "SBATCH_ARGS=--mem=0 --exclusive", f"ARGS=--dry-run {keys}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "configs/stage2-sd21-base.yaml" in text
    assert "8 node(s) x 2 GPU(s) = 16 task(s) (partition local, gpu:2)" in text
    assert "global batch 256 objects (16 per device x 16 tasks)" in text
    script = (out / "slurm" / "stage2.sbatch").read_text()
    for line in (
        "#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2",
        "#SBATCH --partition=local", "#SBATCH --account=vision", "#SBATCH --time=4:00:00",
        "#SBATCH --qos=high", "#SBATCH --constraint=a100|h100", "#SBATCH --comment=stage2",
        "#SBATCH --mem=0", "#SBATCH --exclusive",
        "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        "strategy.num_nodes=8 strategy.devices=2",
    ):  # fmt: skip
        assert line in script, line
    assert "--qos=low" not in script and "--time=1:00:00" not in script
    assert "NCCL_ASYNC_ERROR_HANDLING=1" not in script.replace("TORCH_NCCL_", "")
    assert script in text and "dry run: not submitted" in text
    assert "submitted" not in text.lower().replace("not submitted", "")
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30).stdout
    assert "isotropic3d-stage2" not in queue


def test_requests_the_partition_cannot_meet_are_explained(slurm_env, rendered_shards, tmp_path):
    base = ["finetune", "CONFIG=tiny", f"DATA={rendered_shards}", f"OUT={tmp_path}"]
    result = make(*base, "GPUS=4", "ARGS=--dry-run")
    assert result.returncode != 0
    assert "partition local has 2 GPUs per node (gpu:2); GPUS=4 cannot be met" in result.stderr
    # a bad key stops on the submitting host, before anything is queued
    result = make(*base, "ARGS=train.lrr=1e-4")
    assert result.returncode != 0 and "unknown config key 'train.lrr'" in result.stderr
    result = make(*base, "DATA=/nonexistent/shards")
    assert result.returncode != 0 and "/nonexistent/shards" in result.stderr
    result = make(*base, "INIT=/nonexistent/model")
    assert result.returncode != 0 and "model.init (INIT): /nonexistent/model" in result.stderr
    # LAUNCHER= overrides the guess: a local run although a controller answers
    result = make(*base, "LAUNCHER=local", "ARGS=--dry-run")
    assert result.returncode == 0 and "Running: " in result.stdout
    assert "-m training.train" in result.stdout and "sbatch" not in result.stdout


def test_sbatch_alone_is_not_a_cluster(slurm_cluster, monkeypatch, tmp_path):
    """Installed SLURM clients with no controller (or one that is down): local runs stay local."""
    down = tmp_path / "down.conf"  # the local cluster's config, pointing at a port nobody serves
    text = slurm_cluster.conf.read_text()
    port = next(x for x in text.splitlines() if x.startswith("SlurmctldPort="))
    down.write_text(text.replace(port, "SlurmctldPort=9"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for conf in (down, tmp_path / "absent.conf"):
        monkeypatch.setenv("SLURM_CONF", str(conf))
        assert slurm.controller_answers(timeout=10) is False
    assert slurm.choose_launcher("auto", multi=False) == "local"
    assert slurm.choose_launcher("auto", multi=True) == "torchrun"
    result = make("finetune", "LAUNCHER=slurm", f"OUT={tmp_path}", "ARGS=--dry-run")
    assert result.returncode != 0 and "no SLURM controller answers" in result.stderr

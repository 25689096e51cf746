"""Trustworthy resume: a damaged or foreign checkpoint is named and passed over for the newest
readable one (an explicit one is refused with the reason); rank 0's choice is the one every rank
resumes from, and its failure reaches every rank; pruning never deletes the checkpoint being
resumed nor the last complete one. (``resume: none`` under SLURM with Lightning's ``hpc_ckpt``
present: tests/cluster/test_slurm_srun.py; DeepSpeed markers: test_deepspeed.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import tiny_config

from training.checkpoint_prune import guarded, prune_signal_checkpoints, stale_checkpoints
from training.checkpoint_resolve import resolve_resume, signal_checkpoints
from training.resume import ResumeError, agree, resumed_path
from training.train import run

BASE = [
    "checkpoint.every_n_steps=2", "checkpoint.keep_last=5", "log.logger=none",
    "log.every_n_steps=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def four_steps(rendered_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_choice") / "run"
    run(tiny_config(out, rendered_shards, *BASE, "train.max_steps=4"))
    return out


def _copy(run_folder, tmp_path):
    return shutil.copytree(run_folder, tmp_path / "run")


def test_damaged_and_foreign_checkpoints_are_named_and_skipped(
    four_steps, rendered_shards, tmp_path, capsys
):
    out = _copy(four_steps, tmp_path)
    periodic = out / "checkpoints"
    newest = periodic / "step=00000004.ckpt"
    whole = newest.read_bytes()
    newest.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    foreign = {"state_dict": {"w": torch.zeros(2)}, "global_step": 6}  # another project's file
    torch.save(foreign, periodic / "step=00000006.ckpt")
    (periodic / "step=00000008.ckpt").write_bytes(b"not a checkpoint at all")
    (out / "hpc_ckpt_1.ckpt").write_bytes(b"garbage")  # unreadable step: ordered oldest
    assert signal_checkpoints(out) == [out / "hpc_ckpt_1.ckpt"]
    logged: list[str] = []
    assert resolve_resume("auto", out, logged.append) == str(periodic / "step=00000002.ckpt")
    assert [line.split(": ")[1].split("/")[-1] for line in logged] == [
        "step=00000008.ckpt", "step=00000006.ckpt", "step=00000004.ckpt",
    ]  # fmt: skip
    assert "cannot be read" in logged[0] and "not a checkpoint of this training stack" in logged[1]
    assert "cannot be read" in logged[2]
    with pytest.raises(ValueError, match=r"step=00000004.ckpt cannot be read"):
        resolve_resume(str(newest), out)  # asked for by name: refused with the reason

    trainer = run(tiny_config(out, rendered_shards, *BASE, "train.max_steps=5"))
    assert resumed_path(trainer) == str(periodic / "step=00000002.ckpt")
    assert "skipping" in capsys.readouterr().out  # named in the run's log, no stack trace
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4, 5]  # the second run resumed at step 2
    with pytest.raises(ResumeError, match="cannot be read"):
        run(tiny_config(out, rendered_shards, *BASE, f"checkpoint.resume={newest}"))


def test_pruning_never_deletes_the_resumed_or_the_last_complete_checkpoint(four_steps, tmp_path):
    out = _copy(four_steps, tmp_path)
    periodic = out / "checkpoints"
    two, four = periodic / "step=00000002.ckpt", periodic / "step=00000004.ckpt"
    assert stale_checkpoints(periodic, 1) == [two]
    assert guarded([two], out) == [two]
    assert guarded([two], out, [two]) == []  # the checkpoint being resumed stays
    (periodic / "step=00000006.ckpt").mkdir()  # a DeepSpeed save cut short: unmarked
    four.rename(periodic / "step=00000004.ckpt.partial")  # and a DDP save cut short
    assert stale_checkpoints(periodic, 1)[0] == two
    assert guarded(stale_checkpoints(periodic, 1), out) == [periodic / "step=00000004.ckpt.partial"]
    # signal-time checkpoints (keep_last=1): the resumed older one is not pruned
    for n in (1, 2):
        shutil.copy(two, out / f"hpc_ckpt_{n}.ckpt")
    assert prune_signal_checkpoints(out, 1, [out / "hpc_ckpt_1.ckpt"]) == []
    assert prune_signal_checkpoints(out, 1) == [out / "hpc_ckpt_1.ckpt"]
    assert two.is_file() and (out / "hpc_ckpt_2.ckpt").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _broadcast(obj, src):
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def _agree_worker(rank: int, port: int, folders: list[str], results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = folders[rank]  # each rank's own view of the run folder
        chosen = agree(lambda: resolve_resume("auto", mine), _broadcast, rank == 0)
        try:
            agree(lambda: resolve_resume(f"{mine}/gone.ckpt", mine), _broadcast, rank == 0)
            failed = None
        except ResumeError as error:
            failed = str(error)
        with open(f"{results}/rank{rank}.json", "w") as stream:
            json.dump({"chosen": chosen, "failed": failed}, stream)
    finally:
        dist.destroy_process_group()


def test_every_rank_resumes_from_rank_zeros_choice(four_steps, tmp_path):
    """Two gloo ranks whose views of the run differ (rank 1 already sees a newer checkpoint, as a
    node of a shared file system may): both resume from the one rank 0 chose."""
    zero, one = tmp_path / "view0", tmp_path / "view1"
    shutil.copytree(four_steps, one)
    shutil.copytree(four_steps, zero)
    (zero / "checkpoints" / "step=00000004.ckpt").unlink()
    mp.spawn(_agree_worker, args=(_free_port(), [str(zero), str(one)], str(tmp_path)), nprocs=2)
    answers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = str(zero / "checkpoints" / "step=00000002.ckpt")
    assert [a["chosen"] for a in answers] == [expected, expected]
    assert all("gone.ckpt does not exist" in a["failed"] for a in answers)  # no rank hangs

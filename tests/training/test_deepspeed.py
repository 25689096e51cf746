"""The GPU default path run for real on CPU: Lightning + DeepSpeed (DeepSpeed's CPU accelerator,
gloo), bf16, 2 ranks. A 2-node torchrun simulation under ZeRO-2 (stage 1) and a 2-rank ZeRO-3 run
(stage 2) train, write sharded checkpoints marked complete, export to fp32/ and ema/ model folders
that load, and a run whose newest save was cut short resumes from the last complete checkpoint on
the uninterrupted run's loss curve. The weight EMA is each rank's EMA of its fp32 master partition:
while it tracks the weights its export equals the fp32 export bit for bit (a bf16-based EMA would
not), each rank holds about 1/world of it, and a resume restores it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest
import torch
from train_helpers import FAST, ROOT

from models.bundle import load_model
from training.checkpoint_files import COMPLETE, DS_TAG, EMA_SHARD, is_complete, safe_load
from training.checkpoint_read import read_checkpoint
from training.checkpoint_resolve import latest_checkpoint
from training.export import export

STEPS = 4
EMA_START = 3  # steps 1-2 the EMA tracks the weights, steps 3-4 it averages
SETTINGS = [
    *FAST, "log.every_n_steps=1", f"train.max_steps={STEPS}", "checkpoint.every_n_steps=2",
    "checkpoint.keep_last=5", "data.exact_resume=true", "log.logger=none",
    "strategy.name=deepspeed", f"ema.start_step={EMA_START}",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}


def _launch(shards, out, stage: int, nodes: int, *extra: str) -> str:
    """training.launch on 127.0.0.1 (``nodes`` torchrun agents, 2 ranks in all); the log."""
    from training import launch

    args = [
        "--stage", str(stage), "--no-slurm", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "--data", str(shards), "--out", str(out),
        "--nodes", str(nodes), "--gpus", str(2 // nodes), *SETTINGS, *extra,
    ]  # fmt: skip
    commands = launch.plan(launch.parse(args)).commands
    procs = [
        subprocess.Popen(
            c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c in commands
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(x[-4000:] for x in logs)
    return "\n".join(logs)


def _losses(out) -> dict[int, float]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}  # a replayed step overwrites the cut one


@pytest.fixture(scope="module")
def zero2_run(rendered_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_zero2")
    log = _launch(rendered_shards, out, 1, 2)
    return {"out": out, "log": log}


def test_two_node_zero2_bf16_trains_and_marks_complete_checkpoints(zero2_run):
    out = zero2_run["out"]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    ranks = list(zip(*[r["keys"] for r in records]))  # per rank, its objects of every step
    assert len(ranks) == 2 and ranks[0] != ranks[1]  # the ranks trained on different samples
    assert not (out / "metrics.rank1.jsonl").exists()  # one JSONL, rank 0's
    for step in (2, 4):
        folder = out / "checkpoints" / f"step={step:08d}.ckpt"
        marker = json.loads((folder / COMPLETE).read_text())
        files = marker["files"]
        # each rank's own files, as that rank reported them (gathered, not listed from the folder)
        assert marker["world_size"] == 2 and [sorted(r) for r in marker["ranks"]] == [
            ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt",
             "weight_ema_rank_0.pt"],
            ["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "weight_ema_rank_1.pt"],
        ]  # fmt: skip
        shards = sorted(f for f in files if f.endswith("optim_states.pt"))
        assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
        assert is_complete(folder)
        client = safe_load(folder / DS_TAG / "mp_rank_00_model_states.pt")
        assert client["ds_config"]["bf16"]["enabled"] and client["global_step"] == step
        # the periodic checkpoint is taken after its step's EMA update, not one behind
        assert client["weight_ema"]["updates"] == max(0, step - EMA_START + 1)
        _check_ema_partitions(folder, files)


def _check_ema_partitions(folder, files) -> None:
    """Each rank saved its own EMA partition (listed by the marker), about half the model."""
    names = [EMA_SHARD.format(rank=r) for r in (0, 1)]
    assert set(names) <= set(files)
    sizes = [sum(t.numel() for t in safe_load(folder / DS_TAG / n)["groups"]) for n in names]
    total = sum(t.numel() for t in read_checkpoint(folder).ema.values())
    assert sum(sizes) >= total and all(size <= total // 2 + 1024 for size in sizes), sizes


def _check_export(checkpoint, tmp_path, ema_tracks: bool = False) -> None:
    """``ema_tracks``: the EMA still tracks the weights, so its export is the fp32 export exactly
    (the EMA is taken from the fp32 masters, not from the bf16-rounded module weights)."""
    ours = read_checkpoint(checkpoint)
    written = export(checkpoint, tmp_path / "export")
    assert set(written) == {"fp32", "ema"}
    fp32, ema = load_model(written["fp32"]), load_model(written["ema"])
    trainable = [n for n, p in fp32.unet.named_parameters() if p.requires_grad]
    assert sorted(ours.ema) == sorted(trainable)
    for name, tensor in ours.ema.items():  # the exported EMA is the EMA held in training
        assert torch.equal(dict(ema.unet.named_parameters())[name], tensor)
    trained = dict(fp32.unet.named_parameters())
    assert all(torch.equal(trained[n], t) for n, t in ours.unet.items() if n in trained)
    assert all(t.dtype == torch.float32 for t in ours.unet.values())  # fp32 masters, merged
    same = [torch.equal(trained[n], ema.unet.state_dict()[n]) for n in ours.ema]
    assert all(same) if ema_tracks else not all(same)


def test_export_from_zero2_shards(zero2_run, tmp_path):
    _check_export(latest_checkpoint(zero2_run["out"]), tmp_path / "averaged")
    tracking = zero2_run["out"] / "checkpoints" / "step=00000002.ckpt"
    _check_export(tracking, tmp_path / "tracking", ema_tracks=True)


def test_a_folder_missing_an_ema_partition_is_not_complete(zero2_run, tmp_path):
    folder = tmp_path / "step=00000004.ckpt"
    shutil.copytree(latest_checkpoint(zero2_run["out"]), folder)
    assert is_complete(folder)
    (folder / DS_TAG / EMA_SHARD.format(rank=1)).unlink()
    assert not is_complete(folder)


def test_completeness_needs_every_ranks_confirmation_and_readable_shards(zero2_run, tmp_path):
    """A marker missing a rank's confirmation, a shard shorter than its rank wrote it (another
    node's write not finished on shared storage), or a damaged shard: never resumed from."""
    from training.checkpoint_resolve import resolve_resume

    out = tmp_path / "run"
    shutil.copytree(zero2_run["out"], out)
    newest = out / "checkpoints" / f"step={STEPS:08d}.ckpt"
    marker = json.loads((newest / COMPLETE).read_text())
    (newest / COMPLETE).write_text(json.dumps({**marker, "ranks": marker["ranks"][:1]}))
    assert not is_complete(newest)  # world size 2, one rank confirmed
    (newest / COMPLETE).write_text(json.dumps(marker))
    shard = newest / DS_TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    assert not is_complete(newest)  # shorter than rank 1 reported it
    marker["ranks"][1][shard.name] = shard.stat().st_size  # a marker that agrees: damaged data
    (newest / COMPLETE).write_text(json.dumps(marker))
    assert is_complete(newest)
    logged: list[str] = []
    previous = out / "checkpoints" / "step=00000002.ckpt"
    assert resolve_resume("auto", out, logged.append) == str(previous)
    assert len(logged) == 1 and str(newest) in logged[0] and "cannot be read" in logged[0]


def test_zero3_stage2_from_zero2_stage1_trains_and_exports(zero2_run, rendered_shards, tmp_path):
    out = tmp_path / "zero3"
    init = f"model.init={zero2_run['out']}"  # stage 2 starts from the ZeRO-2 stage-1 run
    tracks = "ema.start_step=100"  # the EMA tracks the weights all run
    _launch(rendered_shards, out, 2, 1, "strategy.zero_stage=3", "train.max_steps=2", init, tracks)
    assert (out / f"imported-step={STEPS:08d}.ckpt-ema" / "model.json").is_file()
    latest = latest_checkpoint(out)
    assert latest.name == "step=00000002.ckpt" and is_complete(latest)
    assert (latest / DS_TAG / "zero_pp_rank_1_mp_rank_00_model_states.pt").is_file()
    _check_ema_partitions(latest, json.loads((latest / COMPLETE).read_text())["files"])
    _check_export(latest, tmp_path, ema_tracks=True)


def test_cut_save_is_passed_over_and_resume_continues_the_loss_curve(
    zero2_run, rendered_shards, tmp_path
):
    reference = zero2_run["out"]
    out = tmp_path / "cut"
    shutil.copytree(reference, out)
    # What kill -9 during the step-4 save leaves: rank 1's shard missing (marker not yet
    # written) and a DDP-style .partial file; the step-4 lines were not logged yet.
    cut = out / "checkpoints" / f"step={STEPS:08d}.ckpt"
    (cut / COMPLETE).unlink()
    (cut / DS_TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (out / "checkpoints" / "step=00000009.ckpt.partial").write_bytes(b"truncated")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert latest_checkpoint(out).name == "step=00000002.ckpt"
    for rank in (0, 1):  # shift the saved EMA partitions: the resumed EMA must carry the shift
        shard = out / "checkpoints" / "step=00000002.ckpt" / DS_TAG / EMA_SHARD.format(rank=rank)
        state = safe_load(shard)
        torch.save({"groups": [t + 1.0 for t in state["groups"]]}, shard)
        marker_file = shard.parents[1] / COMPLETE  # the marker records the sizes the ranks wrote
        marker = json.loads(marker_file.read_text())
        marker["ranks"][rank][shard.name] = shard.stat().st_size
        marker_file.write_text(json.dumps(marker))
    log = _launch(rendered_shards, out, 1, 1)
    assert "Restoring states from the checkpoint" in log
    resumed, expected = _losses(out), _losses(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    worst = max(abs(resumed[s] - expected[s]) for s in range(1, STEPS + 1))
    print(f"DeepSpeed resume vs uninterrupted: max |loss difference| = {worst:.3g}")
    for step in range(3, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), step
    final = latest_checkpoint(out)  # Lightning saves beside the cut folder (``-v1``)
    assert final != cut and is_complete(final) and read_checkpoint(final).step == STEPS
    # EMA_4 = d3 d4 EMA_2 + ...: the restored partitions' shift survives scaled by d3 d4
    from training.ema import decay_at

    decay = read_checkpoint(final).run_config["ema"]["decay"]
    kept = decay_at(decay, 3) * decay_at(decay, 4)
    ema, reference_ema = read_checkpoint(final).ema, read_checkpoint(cut_reference(reference)).ema
    for name, tensor in ema.items():
        shift = tensor - reference_ema[name]
        torch.testing.assert_close(shift, torch.full_like(shift, kept), atol=1e-4, rtol=0)


def cut_reference(reference):
    return reference / "checkpoints" / f"step={STEPS:08d}.ckpt"


def test_bf16_true_lightning_step(rendered_shards, tmp_path):
    """Lightning's bf16-true casts the UNet to bf16 with no autocast: the step must feed it bf16."""
    from train_helpers import tiny_config

    from training.train import run

    config = tiny_config(
        tmp_path, rendered_shards, "train.precision=bf16-true", "train.max_steps=2",
        "checkpoint.every_n_steps=2", "log.logger=none", "model.init=tiny", stage=2,
    )  # fmt: skip
    trainer = run(config)
    assert trainer.global_step == 2
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2] and all(0 < v < 10 for v in losses.values())


class _Planted:
    """Unpickling this runs code (touches a file): what a hostile checkpoint would carry."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


@pytest.mark.parametrize("which", ["model", "optimizer"])
def test_foreign_deepspeed_folder_never_unpickles_code(zero2_run, tmp_path, which):
    import pickle

    folder = tmp_path / "foreign"
    shutil.copytree(latest_checkpoint(zero2_run["out"]), folder)
    ran = tmp_path / "code-ran"
    name = (
        "mp_rank_00_model_states.pt"
        if which == "model"
        else "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    )
    state = torch.load(folder / DS_TAG / name, weights_only=False)  # our own file, as written
    state["planted"] = _Planted(ran)
    torch.save(state, folder / DS_TAG / name)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(folder)
    assert not ran.exists()


def test_init_from_a_zero_folder_is_converted_once_by_rank_0(zero2_run, tmp_path):
    """The other ranks wait for rank 0's model folder instead of each merging the shards."""
    import threading

    from training.init_detect import DEEPSPEED, detect_init
    from training.model_init import PRESETS, resolve_init

    source = latest_checkpoint(zero2_run["out"])
    assert source.suffix == ".ckpt" and source.is_dir()  # named like a file: read by content
    for init in (source, zero2_run["out"], zero2_run["out"] / "checkpoints"):
        found = detect_init(str(init), PRESETS)
        assert (found.kind, found.path) == (DEEPSPEED, source), init
    waited: dict = {}
    other = threading.Thread(
        target=lambda: waited.update(model=resolve_init(str(source), 0, True, tmp_path, rank=1))
    )
    other.start()
    other.join(timeout=2.0)
    assert other.is_alive() and not list(tmp_path.iterdir())  # rank 1 waits, writes nothing
    first = resolve_init(str(source), 0, True, tmp_path, rank=0)
    other.join(timeout=60)
    assert not other.is_alive()
    assert [p.name for p in tmp_path.iterdir()] == [f"imported-{source.name}-ema"]  # renamed in
    ema = read_checkpoint(source).ema
    for model in (first, waited["model"]):
        params = dict(model.unet.named_parameters())
        assert all(torch.equal(params[n], t) for n, t in ema.items())

"""Reading training checkpoints (DDP ``.ckpt`` files and DeepSpeed ZeRO directories), resolving
``model.init`` and ``checkpoint.resume``, and exporting to the model folder format."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import time
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning_fabric.utilities.cloud_io import _atomic_save
from pytorch_lightning.plugins.io import TorchCheckpointIO

from models.bundle import MultiViewDiffusion, build_model, load_model, save_model

PRESETS = ("tiny", "sd21-base")
RANDOM_PREFIX = "random:"  # model.init=random:sd21-base: an explicit random init (debugging)
BASE_MODEL = "base_model"  # run folder: frozen parts + initial UNet, written once at start
CHECKPOINTS = "checkpoints"
DS_TAG = "checkpoint"  # the tag Lightning's DeepSpeed strategy saves under
COMPLETE = "complete.json"  # in a DeepSpeed folder: written once every rank's shard is on disk
EMA_SHARD = "weight_ema_rank_{rank}.pt"  # in a DeepSpeed folder: each rank's EMA partition
SIGNAL_PREFIX = "hpc_ckpt_"  # Lightning's SLURM signal-time checkpoints, in the run folder


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary name, then rename: a run killed while saving never leaves a truncated
    checkpoint for ``resume: auto`` to pick (DDP/single; DeepSpeed writes its own folders)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        _atomic_save(checkpoint, partial)
        os.replace(partial, path)


@dataclass
class TrainingCheckpoint:
    unet: dict[str, torch.Tensor]  # fp32 UNet weights
    ema: dict[str, torch.Tensor] | None  # fp32 weight EMA (trainable tensors only)
    run_config: dict
    step: int
    path: Path


# The rank-0 model-state file: ZeRO-1/2 name, then ZeRO-3 name (client state lives in it).
DS_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def _deepspeed_model_file(path: Path) -> Path | None:
    found = [path / DS_TAG / name for name in DS_MODEL_FILES if (path / DS_TAG / name).exists()]
    return found[0] if found else None


def is_deepspeed_checkpoint(path: Path) -> bool:
    return path.is_dir() and _deepspeed_model_file(path) is not None


def _unet_key(key: str) -> str | None:
    key = key.removeprefix("_forward_module.")  # Lightning's DeepSpeed wrapper (older runs)
    return key[len("unet.") :] if key.startswith("unet.") else None


def _unet_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_unet_key(k): v.float() for k, v in state.items() if _unet_key(k) is not None}


def _deepspeed_safe_globals() -> list:
    """The few plain-data DeepSpeed classes its checkpoint files pickle (a loss scaler, an enum,
    a named tuple): allow-listed for ``weights_only`` loading, so no other global, and no code, is
    ever unpickled from a folder, ours or foreign."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, **kwargs) -> dict:
    """``torch.load`` with ``weights_only=True`` and DeepSpeed's plain-data classes allowed."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def _rank_of(name: str) -> int | None:
    match = re.search(r"zero_pp_rank_(\d+)_", name) or re.search(
        r"weight_ema_rank_(\d+)\.pt$", name
    )
    return int(match.group(1)) if match else None


def _with_ema_partition(state: dict, optim_file: Path) -> dict:
    """An optimizer shard with its fp32 master partition replaced by the same rank's weight EMA
    partition (same layout), so DeepSpeed's merger rebuilds the EMA as it rebuilds the weights."""
    from deepspeed.checkpoint.constants import FP32_FLAT_GROUPS, SINGLE_PARTITION_OF_FP32_GROUPS

    shard = optim_file.parent / EMA_SHARD.format(rank=_rank_of(optim_file.name))
    if not shard.is_file():
        raise FileNotFoundError(f"weight EMA partition {shard} missing (for {optim_file.name})")
    groups = safe_load(shard)["groups"]
    optim = state["optimizer_state_dict"]
    key = next(k for k in (SINGLE_PARTITION_OF_FP32_GROUPS, FP32_FLAT_GROUPS) if k in optim)
    if [t.shape for t in groups] != [t.shape for t in optim[key]]:
        raise ValueError(f"{shard}: partition shapes differ from {optim_file.name}'s fp32 groups")
    optim[key] = groups
    return state


@contextlib.contextmanager
def _weights_only_zero_to_fp32(ema: bool = False):
    """DeepSpeed's shard merger (``zero_to_fp32``) loads every file with ``weights_only=False``;
    run it with weights-only loads instead (the merging logic stays DeepSpeed's). ``ema``: merge
    the per-rank weight EMA partitions in place of the fp32 master partitions."""
    from deepspeed.utils import zero_to_fp32

    def load(file, *args, **kwargs):
        kwargs.pop("weights_only", None)
        kwargs.pop("map_location", None)
        kwargs.pop("mmap", None)
        # Memory-mapped: only the fp32 master partitions are read, not the Adam moments beside
        # them (10 GB of a 14 GB shard at sd21-base size).
        state = safe_load(file, mmap=True, **kwargs)
        if ema and str(file).endswith("optim_states.pt"):
            state = _with_ema_partition(state, Path(file))
        return state

    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch.__dict__)
    proxy.load = load
    zero_to_fp32.torch = proxy
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = torch


def mark_complete(path: str | Path) -> None:
    """Called on rank 0 after every rank has returned from its part of a DeepSpeed save: record
    the shard files, written to a temporary name and renamed, so a folder is complete or unmarked."""
    folder = Path(path) / DS_TAG
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".pt")
    marker = Path(path) / COMPLETE
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps({"files": files}))
    os.replace(partial, marker)


def is_complete(path: Path) -> bool:
    """A checkpoint ``resume: auto`` may pick: a whole file (``.partial`` names are writes in
    progress), or a DeepSpeed folder whose marker lists shards that all exist, one optimizer
    shard per rank."""
    if path.name.endswith(".partial"):
        return False
    if path.is_file():
        return True
    marker = path / COMPLETE
    if not (path.is_dir() and marker.is_file()):
        return False
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return False
    optim = [f for f in files if f.endswith("optim_states.pt")]
    ranks = {_rank_of(f) for f in optim}
    whole = bool(optim) and ranks == set(range(len(optim)))
    ema = {_rank_of(f) for f in files if f.startswith("weight_ema_rank_")}
    whole = whole and ema in (set(), ranks)  # an EMA partition per rank, or none kept
    return whole and all((path / DS_TAG / f).is_file() for f in files)


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """UNet weights, EMA and run config of a DDP checkpoint file or a DeepSpeed ZeRO directory
    (stage 1-3: the fp32 master weights are gathered from the per-rank optimizer shards)."""
    path = Path(path)
    ema_state = None
    if is_deepspeed_checkpoint(path):
        client = safe_load(_deepspeed_model_file(path))
        with _weights_only_zero_to_fp32() as zero_to_fp32:
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
        if client.get("weight_ema", {}).get("partitioned"):
            with _weights_only_zero_to_fp32(ema=True) as zero_to_fp32:
                ema_state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                    str(path), tag=DS_TAG
                )
    elif path.is_file():
        client = torch.load(path, map_location="cpu", weights_only=True)
        state = client["state_dict"]
    else:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint file nor a DeepSpeed checkpoint folder"
        )
    if "run_config" not in client:
        raise ValueError(f"{path} is not a checkpoint of this training stack (no run_config)")
    ema = client.get("weight_ema")
    unet = _unet_only(state)
    if ema_state is not None:  # merged from the ZeRO partitions: the optimised tensors only
        trained = {_unet_key(n) for group in client["param_shapes"] for n in group}
        ema = {k: v for k, v in _unet_only(ema_state).items() if k in trained}
    elif ema is not None:
        ema = {k: v.float() for k, v in ema["shadow"].items()}
    return TrainingCheckpoint(
        unet=unet,
        ema=ema,
        run_config=client["run_config"],
        step=int(client.get("global_step", 0)),
        path=path,
    )


def run_folder(checkpoint: TrainingCheckpoint) -> Path:
    """The run folder of a checkpoint: next to its checkpoints/ folder, else the recorded out."""
    for parent in checkpoint.path.parents:
        if (parent / BASE_MODEL).is_dir():
            return parent
    return Path(checkpoint.run_config["out"])


def model_from_checkpoint(
    checkpoint: TrainingCheckpoint, use_ema: bool, base: str | Path | None = None
) -> MultiViewDiffusion:
    """The run's base model (frozen VAE/encoder) with the checkpoint's UNet (EMA or raw)."""
    model = load_model(base or run_folder(checkpoint) / BASE_MODEL)
    unet_state = model.unet.state_dict()
    weights = checkpoint.ema if use_ema and checkpoint.ema is not None else checkpoint.unet
    merged = {
        k: weights.get(k, v).float() for k, v in unet_state.items()
    }  # frozen UNet buffers kept
    missing = set(checkpoint.unet) - set(unet_state)
    if missing:
        raise ValueError(
            f"checkpoint UNet tensors unknown to the base model: {sorted(missing)[:5]}"
        )
    model.unet.load_state_dict(merged)
    return model


def convert_once(target: Path, make, rank: int, timeout: float = 3600.0) -> Path:
    """Rank 0 writes the model folder ``target`` into a temporary folder renamed into place; the
    other ranks wait for it (polling the shared file system) instead of racing to write it."""
    if (target / "model.json").is_file():
        return target
    if rank == 0:
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        os.replace(tmp, target)
        return target
    deadline = time.monotonic() + timeout
    while not (target / "model.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"model.init: rank 0 did not finish writing {target}")
        time.sleep(1.0)
    return target


def resolve_init(
    init: str,
    seed: int,
    use_ema: bool = True,
    workdir: str | Path | None = None,
    rank: int = 0,
) -> MultiViewDiffusion:
    """``model.init``: a preset name (random init), our model folder, a training checkpoint of
    this stack (e.g. stage 1 for stage 2), or an MVDream ``.pt`` / Isotropic3D ``.ckpt`` file
    (converted by models.convert into ``workdir``; MVDream brings no image encoder, so the open_clip
    weights come from the preset's pretrained tag). Conversions run once, on ``rank`` 0."""
    init = init.removeprefix(RANDOM_PREFIX)  # training.train allows a bare preset for tiny only
    if init in PRESETS or init.endswith((".yaml", ".yml")):
        model = build_model(init, seed=seed)
        if model.image_encoder is not None:
            # A random encoder is not the pretrained one its preset names: save its weights with
            # the run (base_model) instead of pointing at the hub tag (no network on many nodes).
            model.preset["image_encoder"]["pretrained"] = None
            model.image_encoder.section["pretrained"] = None
        return model
    path = Path(init)
    if (path / "model.json").is_file():
        return load_model(path)
    if path.is_dir() and not is_deepspeed_checkpoint(path):  # a run or checkpoints folder: newest
        latest = latest_checkpoint(path.parent if path.name == CHECKPOINTS else path)
        if latest is None:
            raise FileNotFoundError(f"model.init: no checkpoint found under {path}")
        path = latest
    if is_deepspeed_checkpoint(path):  # shards merged once into a model folder (rank 0)
        target = (
            Path(workdir or path.parent) / f"imported-{path.name}-{'ema' if use_ema else 'fp32'}"
        )
        make = lambda tmp: save_model(  # noqa: E731
            model_from_checkpoint(read_checkpoint(path), use_ema), tmp, source={"init": str(path)}
        )
        return load_model(convert_once(target, make, rank))
    if path.is_file() and path.suffix == ".ckpt" and _is_ours(path):
        return model_from_checkpoint(read_checkpoint(path), use_ema)
    if path.is_file():  # a published checkpoint: convert once into the run folder, then load
        from models.convert import convert

        fmt = "isotropic3d" if path.suffix == ".ckpt" else "mvdream"
        target = Path(workdir or path.parent) / f"imported-{path.stem}"
        make = lambda tmp: convert(path, fmt, tmp, preset="sd21-base")  # noqa: E731
        return load_model(convert_once(target, make, rank))
    raise FileNotFoundError(
        f"model.init: {init!r} is not a preset ({', '.join(PRESETS)}), a model folder or a checkpoint"
    )


def _is_ours(path: Path) -> bool:
    """Whether a ``.ckpt`` file is a training checkpoint of this stack. A file that cannot be read
    at all (truncated, damaged) is reported as such here rather than handed to the Isotropic3D
    importer, whose error would blame the format; a readable file that weights-only loading
    refuses (pickled objects) is a foreign checkpoint, left to the importers."""
    try:
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError:  # objects weights-only refuses: a foreign format
        return False
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"model.init: {path} cannot be read ({type(error).__name__}: {error}); the file is "
            "damaged or incomplete (an interrupted save or copy?)"
        ) from error
    return isinstance(state, dict) and "run_config" in state


def step_of(path: Path) -> int:
    match = re.search(r"step=?(\d+)", path.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete periodic checkpoint under ``folder/checkpoints``."""
    folder = Path(folder) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if step_of(p) >= 0 and is_complete(p)]
    return max(found, key=step_of) if found else None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was taken at, read from the checkpoint (weights-only)."""
    if path.is_dir():
        model_file = _deepspeed_model_file(path)
        return int(safe_load(model_file, mmap=True).get("global_step", -1)) if model_file else -1
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def signal_checkpoints(out: str | Path) -> list[Path]:
    """Complete SLURM signal-time checkpoints in the run folder, oldest first by step."""
    out = Path(out)
    found = (
        [p for p in out.glob(f"{SIGNAL_PREFIX}*.ckpt") if is_complete(p)] if out.is_dir() else []
    )
    number = lambda p: int(re.sub(r"\D", "", p.stem) or 0)  # noqa: E731  (Lightning's N)
    return sorted(found, key=lambda p: (checkpoint_step(p), number(p)))


def prune_signal_checkpoints(out: str | Path, keep_last: int) -> None:
    """``checkpoint.keep_last`` applies to signal-time checkpoints too (rank 0, at start)."""
    for old in signal_checkpoints(out)[:-keep_last]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def resolve_resume(resume: str, out: str | Path) -> str | None:
    """``auto``: the newest complete checkpoint, periodic or SLURM signal-time, by step."""
    if resume == "none":
        return None
    if resume == "auto":
        candidates = [p for p in [latest_checkpoint(out), *signal_checkpoints(out)[-1:]] if p]
        if not candidates:
            return None
        return str(max(candidates, key=checkpoint_step))
    if not Path(resume).exists():
        raise FileNotFoundError(f"checkpoint.resume: {resume} does not exist")
    return resume


def export(
    checkpoint_path: str | Path, out: str | Path, base: str | Path | None = None
) -> dict[str, Path]:
    """Write ``out/fp32`` (trained weights) and ``out/ema`` (weight EMA, if kept) model folders."""
    checkpoint = read_checkpoint(checkpoint_path)
    out = Path(out)
    source = {
        "training_checkpoint": str(checkpoint.path),
        "step": checkpoint.step,
        "stage": checkpoint.run_config["stage"],
    }
    written = {
        "fp32": save_model(
            model_from_checkpoint(checkpoint, False, base), out / "fp32", source=source
        )
    }
    if checkpoint.ema is not None:
        model = model_from_checkpoint(checkpoint, True, base)
        written["ema"] = save_model(model, out / "ema", source={**source, "weights": "ema"})
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a training checkpoint to model folders.")
    parser.add_argument(
        "checkpoint", help="a .ckpt file, a DeepSpeed checkpoint folder or a run folder (latest)"
    )
    parser.add_argument(
        "--out", required=True, help="destination; gets fp32/ and ema/ model folders"
    )
    parser.add_argument(
        "--base", default=None, help="base model folder (default: the run's base_model)"
    )
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    if path.is_dir() and not is_deepspeed_checkpoint(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise SystemExit(f"no checkpoint under {path / CHECKPOINTS}")
        path = latest
    for kind, folder in export(path, args.out, args.base).items():
        print(f"{kind}: {folder}")


if __name__ == "__main__":
    main()

"""Reading training checkpoints (DDP ``.ckpt`` files and DeepSpeed ZeRO directories), resolving
``model.init`` and ``checkpoint.resume``, and exporting to the model folder format."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning_fabric.utilities.cloud_io import _atomic_save
from pytorch_lightning.plugins.io import TorchCheckpointIO

from models.bundle import MultiViewDiffusion, build_model, load_model, save_model

PRESETS = ("tiny", "sd21-base")
BASE_MODEL = "base_model"  # run folder: frozen parts + initial UNet, written once at start
CHECKPOINTS = "checkpoints"
DS_TAG = "checkpoint"  # the tag Lightning's DeepSpeed strategy saves under


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


def _unet_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("_forward_module.")  # Lightning's DeepSpeed wrapper (older runs)
        if key.startswith("unet."):
            out[key[len("unet.") :]] = value.float()
    return out


def _load_deepspeed_client_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # DeepSpeed stores a few Python objects of its own in this file (and loads it with
        # weights_only=False itself); it is one our own run wrote, so read it the same way.
        warnings.warn(
            f"{path}: not loadable with weights_only=True ({error}); trusting DeepSpeed's file",
            stacklevel=2,
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """UNet weights, EMA and run config of a DDP checkpoint file or a DeepSpeed ZeRO directory
    (stage 1-3: the fp32 master weights are gathered from the per-rank optimizer shards)."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        client = _load_deepspeed_client_state(_deepspeed_model_file(path))
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
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
    return TrainingCheckpoint(
        unet=_unet_only(state),
        ema=None if ema is None else {k: v.float() for k, v in ema["shadow"].items()},
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


def resolve_init(
    init: str, seed: int, use_ema: bool = True, workdir: str | Path | None = None
) -> MultiViewDiffusion:
    """``model.init``: a preset name (random init), our model folder, a training checkpoint of
    this stack (e.g. stage 1 for stage 2), or an MVDream ``.pt`` / Isotropic3D ``.ckpt`` file
    (converted by models.convert into ``workdir``; MVDream brings no image encoder, so the open_clip
    weights come from the preset's pretrained tag)."""
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
    if is_deepspeed_checkpoint(path) or (
        path.is_file() and path.suffix == ".ckpt" and _is_ours(path)
    ):
        return model_from_checkpoint(read_checkpoint(path), use_ema)
    if path.is_file():  # a published checkpoint: convert once into the run folder, then load
        from models.convert import convert

        fmt = "isotropic3d" if path.suffix == ".ckpt" else "mvdream"
        target = Path(workdir or path.parent) / f"imported-{path.stem}"
        if not (target / "model.json").is_file():
            convert(path, fmt, target, preset="sd21-base")
        return load_model(target)
    raise FileNotFoundError(
        f"model.init: {init!r} is not a preset ({', '.join(PRESETS)}), a model folder or a checkpoint"
    )


def _is_ours(path: Path) -> bool:
    try:
        return "run_config" in torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a foreign checkpoint format: leave it to the importers
        return False


def step_of(path: Path) -> int:
    match = re.search(r"step=?(\d+)", path.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(folder: str | Path) -> Path | None:
    folder = Path(folder) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [
        p
        for p in folder.iterdir()
        if step_of(p) >= 0 and (p.is_file() or is_deepspeed_checkpoint(p))
    ]
    return max(found, key=step_of) if found else None


def resolve_resume(resume: str, out: str | Path) -> str | None:
    if resume == "none":
        return None
    if resume == "auto":
        latest = latest_checkpoint(out)
        return str(latest) if latest else None
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

"""Export a training checkpoint to model folders (``make export``): ``OUT/fp32`` with the trained
weights and ``OUT/ema`` with the weight EMA, when the run kept one.

``python -m training.export CHECKPOINT --out OUT [--base MODEL_FOLDER]``
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from models.bundle import save_model
from models.checkpoint_io import CheckpointError
from models.detect import folder_kind
from training.checkpoint_files import CHECKPOINTS, is_deepspeed_checkpoint
from training.checkpoint_read import read_checkpoint
from training.checkpoint_resolve import latest_checkpoint
from training.model_init import model_from_checkpoint


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
        **checkpoint.training_data,  # camera_distance_range, vae_latent...: training.data_record
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


CKPT_HELP = "pass CKPT=<a training checkpoint (.ckpt file or DeepSpeed folder) or a run folder>"


def find_checkpoint(arg: str) -> Path:
    """The checkpoint ``CKPT`` names (a run or checkpoints/ folder: its newest complete one);
    a one-line error for anything else, before anything is written."""
    path = Path(arg)
    if not path.exists():
        raise FileNotFoundError(f"CKPT {arg} does not exist: {CKPT_HELP}")
    if path.is_file() or is_deepspeed_checkpoint(path):
        return path
    if folder_kind(path):
        raise CheckpointError(
            f"CKPT {arg} is a model folder already, nothing to export: use it as MODEL= or INIT="
        )
    run = path.parent if path.name == CHECKPOINTS else path
    latest = latest_checkpoint(run)
    if latest is None:
        raise CheckpointError(
            f"CKPT {arg} is a folder with no complete checkpoint (no {CHECKPOINTS}/step=*): "
            f"{CKPT_HELP}"
        )
    return latest


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
    try:
        written = export(find_checkpoint(args.checkpoint), args.out, args.base)
    except (CheckpointError, FileNotFoundError, pickle.UnpicklingError) as error:
        raise SystemExit(f"error: {error}") from None
    for kind, folder in written.items():
        print(f"{kind}: {folder}")


if __name__ == "__main__":
    main()

"""Export a training checkpoint to model folders (``make export``): ``OUT/fp32`` with the trained
weights and ``OUT/ema`` with the weight EMA, when the run kept one.

``python -m training.export CHECKPOINT --out OUT [--base MODEL_FOLDER]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bundle import save_model
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

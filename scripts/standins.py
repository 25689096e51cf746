"""Local stand-ins, in the published layouts, for the full-size weights the smoke run needs offline.

* ``sd-v2.1-base-4view.pt``: MVDream's checkpoint as published (a bare ``{key: fp32 tensor}``
  pickle, the 1244 keys and shapes of ``tests/fixtures/mvdream_sd21_base_4view.keys.json``).
* ``open_clip_vit_h14.bin``: open_clip ViT-H-14 (``laion2b_s32b_b79k``) as the hub serves it, a
  whole-CLIP state dict (vision and text towers), read through ``$ISOTROPIC3D_OPENCLIP_CHECKPOINT``.
* ``open_clip_vit_l14.bin``: the scorer's open_clip ViT-L-14, the same layout
  (``metrics.clip.local_path``).

Tensors are random at the scale of a fresh initialisation (unit-variance layer outputs; norm
scales 1, biases 0), so the full-size forward passes stay finite. Each file is written to a
temporary name and renamed, one at a time, so at most one file's tensors are in memory.

    python scripts/standins.py --out DIR [--only mvdream,vit-h,vit-l]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MVDREAM_KEYS = ROOT / "tests" / "fixtures" / "mvdream_sd21_base_4view.keys.json"
FILES = {
    "mvdream": "sd-v2.1-base-4view.pt",
    "vit-h": "open_clip_vit_h14.bin",
    "vit-l": "open_clip_vit_l14.bin",
}


class RandomPool:
    """Standard-normal values for many tensors: slices of one seeded pool, scaled into new
    tensors (drawing 2.3 billion fresh normals would take most of a minute on two cores)."""

    def __init__(self, seed: int, size: int = 1 << 26) -> None:
        self.pool = torch.randn(size, generator=torch.Generator().manual_seed(seed))
        self.offset = 0

    def normal(self, shape: tuple[int, ...], scale: float) -> torch.Tensor:
        n = math.prod(shape)
        if self.offset + n > self.pool.numel():
            self.offset = 0
        values = self.pool[self.offset : self.offset + n]
        self.offset += n + 7919  # a prime stride: neighbouring tensors do not repeat each other
        return (values * scale).reshape(shape)


def random_like_init(name: str, shape: tuple[int, ...], pool: RandomPool) -> torch.Tensor:
    """A tensor of ``shape`` at initialisation scale for a parameter called ``name``."""
    if len(shape) == 0:
        return torch.tensor(math.log(1 / 0.07))  # CLIP's logit_scale
    if len(shape) == 1:
        leaf = name.rsplit(".", 1)[-1]
        if "bias" in leaf:
            return torch.zeros(shape)
        if leaf == "weight":  # norms
            return torch.ones(shape)
        return pool.normal(shape, 0.02)  # embeddings, schedule buffers
    return pool.normal(shape, 1 / math.sqrt(math.prod(shape[1:])))


def mvdream_shapes() -> dict[str, tuple[int, ...]]:
    tensors = json.loads(MVDREAM_KEYS.read_text())["tensors"]
    return {key: tuple(shape) for key, shape in tensors.items()}


def open_clip_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    import open_clip
    from open_clip.model import CLIP

    with torch.device("meta"):  # shapes only, no memory
        model = CLIP(**open_clip.get_model_config(model_name))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def write(shapes: dict[str, tuple[int, ...]], path: Path, seed: int) -> Path:
    pool = RandomPool(seed)
    state = {key: random_like_init(key, shape, pool) for key, shape in shapes.items()}
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def make(out: str | Path, only: list[str] | None = None) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    makers = {
        "mvdream": mvdream_shapes,
        "vit-h": lambda: open_clip_shapes("ViT-H-14"),
        "vit-l": lambda: open_clip_shapes("ViT-L-14"),
    }
    written = {}
    for seed, (name, shapes) in enumerate(makers.items()):
        if only and name not in only:
            continue
        path = out / FILES[name]
        written[name] = path if path.is_file() else write(shapes(), path, seed)
        print(f"{name}: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the files")
    parser.add_argument("--only", default=None, help=f"comma list of {', '.join(FILES)}")
    args = parser.parse_args(argv)
    make(args.out, args.only.split(",") if args.only else None)


if __name__ == "__main__":
    main()

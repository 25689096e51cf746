"""Reading tensors from checkpoint files without ever unpickling code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a torch pickle.

    Pickles are read with ``weights_only=True`` (plain tensors and containers only) and
    ``mmap=True`` so multi-GB checkpoints are paged in lazily instead of copied into RAM.
    A Lightning-style ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors")
    return dict(state)

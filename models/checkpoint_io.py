"""Reading tensors from checkpoint files without ever unpickling code, and telling what a file is
by its bytes, not its name: a ``.ckpt`` may hold a safetensors file or an MVDream state dict.

Every failure is a :class:`CheckpointError` whose message names the file and what is wrong with
it (truncated, not a checkpoint, a zip that is not a PyTorch save, pickled objects), so a command
line can print it as one line instead of a traceback.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"  # torch.save's default (zip) serialisation
TORCH_LEGACY = "torch-legacy"  # torch.save(_use_new_zipfile_serialization=False), old files
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # a protocol-2 pickle of torch's magic


class CheckpointError(ValueError):
    """A weights file or folder that cannot be used; the message says which and why."""


class UnsafeCheckpoint(CheckpointError, pickle.UnpicklingError):
    """A pickle holding objects other than tensors and plain containers: never unpickled."""


def file_kind(path: str | Path) -> str:
    """``safetensors``, ``torch-zip`` or ``torch-legacy`` from the file's first bytes; a
    :class:`CheckpointError` naming the file for anything else (empty, another format, a zip
    archive that is not a PyTorch save)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        raise CheckpointError(f"{path} is empty (an interrupted save or copy?)")
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        (length,) = struct.unpack("<Q", head[:8])
        if 8 + length > size:
            raise CheckpointError(
                f"{path} is a truncated safetensors file: its header alone needs {8 + length} "
                f"bytes, the file has {size} (an interrupted save or copy?)"
            )
        return SAFETENSORS
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} cannot be read: a damaged or incomplete zip archive (a PyTorch save "
                "ends with its directory: an interrupted save or copy?)"
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(
                f"{path} is a zip archive but not a PyTorch save (no data.pkl; it holds "
                f"{', '.join(names[:3]) or 'nothing'}{' ...' if len(names) > 3 else ''})"
            )
        return TORCH_ZIP
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    raise CheckpointError(
        f"{path} is not a checkpoint: neither a safetensors file nor a PyTorch save "
        f"(it starts with {head[:16]!r})"
    )


def read_file(path: str | Path, mmap: bool = True) -> Any:
    """A PyTorch or safetensors file's content, weights-only (safetensors: its tensors dict).
    Zip saves are memory-mapped: a multi-GB checkpoint is paged in as tensors are used."""
    path = Path(path)
    kind = file_kind(path)
    if kind == SAFETENSORS:
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error type
            raise CheckpointError(
                f"{path} cannot be read ({error}); the file is damaged or incomplete"
            ) from error
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=mmap and kind == TORCH_ZIP
        )
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpoint(
            f"{path} holds pickled Python objects besides tensors, which are never unpickled "
            f"here (weights-only loading: {str(error).splitlines()[0]}). If you trust the file, "
            "re-save its tensors: torch.save(torch.load(f, weights_only=False)['state_dict'], out)"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, struct.error) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} cannot be read ({type(error).__name__}: {first}); the file is damaged or "
            "incomplete (an interrupted save or copy?)"
        ) from error


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a weights file without reading the tensors where the format allows
    (safetensors: its header); a wrapped ``{"state_dict": ...}`` is unwrapped."""
    if file_kind(path) == SAFETENSORS:
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as error:  # safetensors raises its own error type
            raise CheckpointError(f"{path}: unreadable safetensors header ({error})") from error
    return {k: tuple(v.shape) for k, v in _flat(read_file(path), path).items()}


def _flat(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors")
    return dict(state)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a safetensors file or a torch pickle, told apart by content.

    Pickles are read with ``weights_only=True`` (plain tensors and containers only) and
    memory-mapped so multi-GB checkpoints are paged in lazily instead of copied into RAM.
    A Lightning-style ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _flat(read_file(path), path)

"""Deterministic split of one object list across machines (SLURM arrays, torchrun, flags)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def partition_from_env(
    index: int | None = None, count: int | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """(index, count) from explicit flags, else ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``,
    else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    env = os.environ if env is None else env
    if index is None and count is None:
        for id_key, count_key in (
            ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
            ("RANK", "WORLD_SIZE"),
        ):
            if id_key in env and count_key in env:
                index, count = int(env[id_key]), int(env[count_key])
                if id_key.startswith("SLURM") and "SLURM_ARRAY_TASK_MIN" in env:
                    index -= int(env["SLURM_ARRAY_TASK_MIN"])  # arrays may start at 1
                break
    index = 0 if index is None else index
    count = 1 if count is None else count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition index {index} is outside 0..{count - 1}")
    return index, count


def take_partition(items: Sequence[T], index: int, count: int) -> list[T]:
    """Round-robin slice: disjoint across indices, their union is ``items``, sizes differ by <= 1."""
    return list(items[index::count])

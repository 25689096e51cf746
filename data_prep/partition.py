"""Deterministic split of one object list across machines (SLURM arrays, torchrun, flags).

A SLURM array task's id *is* its partition index (arrays start at 0). The partition count comes
from ``--part-count``, else from the output folder (each partition's manifest records it), else
from the array (its highest id + 1): resubmitting one task (``sbatch --array=7 render.sbatch``)
then renders partition 7 of the original layout, not partition 0 of a one-task array."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def partition_from_env(
    index: int | None = None,
    count: int | None = None,
    env: Mapping[str, str] | None = None,
    recorded: int | None = None,
) -> tuple[int, int]:
    """(index, count) from explicit flags, else ``SLURM_ARRAY_TASK_ID`` (the index) with the count
    from the flag, the folder's ``recorded`` layout or the array, else ``RANK``/``WORLD_SIZE``,
    else (0, 1)."""
    env = os.environ if env is None else env
    if index is None and "SLURM_ARRAY_TASK_ID" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"])
        if count is None and recorded is None:
            if int(env.get("SLURM_ARRAY_TASK_MIN", 0)) > 0:
                raise ValueError(
                    f"array task {index}: array ids are partition indices, so an array starts at "
                    "0 (--array=0-N); or pass --part-count N"
                )
            count = int(env.get("SLURM_ARRAY_TASK_MAX", env.get("SLURM_ARRAY_TASK_COUNT", 1)))
            count += 1 if "SLURM_ARRAY_TASK_MAX" in env else 0
    elif index is None and count is None and "RANK" in env and "WORLD_SIZE" in env:
        index, count = int(env["RANK"]), int(env["WORLD_SIZE"])
    count = count if count is not None else recorded
    index = 0 if index is None else index
    count = 1 if count is None else count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition index {index} is outside 0..{count - 1} ({count} partitions)")
    return index, count


def take_partition(items: Sequence[T], index: int, count: int) -> list[T]:
    """Round-robin slice: disjoint across indices, their union is ``items``, sizes differ by <= 1."""
    return list(items[index::count])

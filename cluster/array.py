"""Which share of the work a process takes: explicit flags, a SLURM array task, or torchrun's
``RANK``/``WORLD_SIZE``. One rule for every job that splits work this way (the render array,
evaluation workers).

A SLURM array task's id *is* its partition index (arrays start at 0). The partition count comes
from the flag, else from what the output folder recorded (``recorded``), else from the array (its
highest id + 1): resubmitting one task (``sbatch --array=7 job.sbatch`` of an 8-task array) then
takes partition 7 of the original layout, not partition 0 of a one-task array.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


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
                    "0 (--array=0-N); or pass the partition count (--part-count / --world-size)"
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

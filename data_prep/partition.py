"""Deterministic split of one object list across machines (SLURM arrays, torchrun, flags).

Which partition a process renders is ``cluster.array.partition_from_env`` (the rule every split job
shares); the count recorded by the output folder is each partition's manifest's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from cluster.array import partition_from_env

__all__ = ["partition_from_env", "take_partition"]

T = TypeVar("T")


def take_partition(items: Sequence[T], index: int, count: int) -> list[T]:
    """Round-robin slice: disjoint across indices, their union is ``items``, sizes differ by <= 1."""
    return list(items[index::count])

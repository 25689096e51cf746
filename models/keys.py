"""The one check of a config section's keys, shared by every model preset section."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_keys(
    section: Mapping[str, Any],
    required: Iterable[str],
    where: str,
    optional: Iterable[str] = (),
    prefix: str = "",
    noun: str = "keys",
) -> None:
    """Raise ``ValueError`` naming every missing and every unknown key of ``section``
    (``prefix`` is prepended to the names, e.g. ``"sampling."``)."""
    required = tuple(required)
    allowed = (*required, *optional)
    missing = [f"{prefix}{k}" for k in required if k not in section]
    unknown = [f"{prefix}{k}" for k in section if k not in allowed]
    if missing or unknown:
        raise ValueError(f"{where}: missing {noun} {missing}, unknown {noun} {unknown}")

"""The configured source: ``config.source`` -> a :class:`~data_prep.sources.Source`.

Kept apart from ``sources`` so that no import circle forms: ``objaverse_source`` builds on
``sources``, and this module imports both.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.config import RenderConfig
from data_prep.sources import FolderSource, SampleSource, Source

NAMED_SOURCES = ("samples", "objaverse", "objaverse-xl")


def check_source(config: RenderConfig) -> None:
    """A source that is neither a named one nor an existing folder: ValueError naming it."""
    if config.source not in NAMED_SOURCES and not Path(config.source).is_dir():
        raise ValueError(
            f"source {config.source!r} is neither 'objaverse', 'objaverse-xl', 'samples' nor an "
            "existing folder"
        )


def make_source(config: RenderConfig) -> Source:
    check_source(config)
    if config.source == "samples":
        return SampleSource(Path(config.out) / "_samples")
    if config.source == "objaverse":
        from data_prep.objaverse_source import ObjaverseSource

        return ObjaverseSource(config.objaverse)
    if config.source == "objaverse-xl":
        from data_prep.objaverse_xl import ObjaverseXLSource

        return ObjaverseXLSource(config.objaverse)
    return FolderSource(config.source)

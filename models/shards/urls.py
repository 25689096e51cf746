"""Shard sources as users give them (folders, globs, brace patterns, URLs) -> shard URLs."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import webdataset as wds


def expand_shard_urls(sources: list[str]) -> list[str]:
    """Local folders (all ``*.tar`` inside), globs, brace patterns, ``pipe:`` and http(s) URLs.
    A source that names nothing (a missing path, an empty folder, a glob matching no file) is a
    FileNotFoundError naming it."""
    if not sources:
        raise FileNotFoundError("no shards given (data.train / DATA is empty)")
    urls: list[str] = []
    for source in sources:
        if source.startswith(("pipe:", "http://", "https://", "gs://")):
            found = wds.shardlists.expand_urls(source)
        elif os.path.isdir(source):
            found = sorted(glob.glob(os.path.join(source, "**", "*.tar"), recursive=True))
            if not found:
                raise FileNotFoundError(f"no shards found in {source}: the folder has no *.tar")
        elif any(c in source for c in "*?["):
            found = sorted(glob.glob(source))
            if not found:
                raise FileNotFoundError(f"no shards found in {source}: the pattern matches nothing")
        else:
            found = wds.shardlists.expand_urls(source)
            missing = [u for u in found if not Path(u).exists()]
            if missing:
                what = (
                    "does not exist"
                    if len(found) == 1
                    else f"{len(missing)} of its {len(found)} files do not exist, e.g. {missing[0]}"
                )
                raise FileNotFoundError(f"shards {source}: {what}")
        urls.extend(found)
    return urls

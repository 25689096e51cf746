"""A Hugging Face hub cache written the way huggingface_hub writes it, for tests without network:
``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<path>`` as relative links to the
blobs, ``refs/<revision>`` holding the commit."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def put_in_hub_cache(
    cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main"
) -> str:
    """Store ``files`` ({path in repo: local file or folder}) as one commit of ``repo_id`` under
    ``revision``; returns the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    flat = {}
    for name, source in files.items():
        if source.is_dir():
            flat |= {f"{name}/{p.relative_to(source)}": p for p in source.rglob("*") if p.is_file()}
        else:
            flat[name] = source
    digest = hashlib.sha1(repr(sorted((k, p.read_bytes()) for k, p in flat.items())).encode())
    commit = digest.hexdigest()
    for name, source in flat.items():
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit

"""Weights named by a Hugging Face hub id: ``hf:org/name[/path/in/repo][@revision]``.

Resolved through huggingface_hub's own cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``): a cached snapshot is used as it is, so a node without network (or
with ``HF_HUB_OFFLINE=1``, where the hub is never asked) loads what another machine downloaded
into a shared cache. Without a path, a repository holding our model folder or a diffusers folder
resolves to its snapshot folder, one holding a single weights file to that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from models.checkpoint_io import CheckpointError

HUB_PREFIX = "hf:"
WEIGHT_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin", ".safetensors")  # only to pick among files


class HubUnavailable(CheckpointError, FileNotFoundError):
    """The repository is neither cached nor reachable (or does not exist)."""


@dataclass(frozen=True)
class HubId:
    repo_id: str
    filename: str | None
    revision: str | None

    def download_command(self) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{' ' + self.filename if self.filename else ''}{revision}"


def parse_hub_id(spec: str) -> HubId:
    """``hf:org/name[/path][@revision]`` -> its parts; ValueError for anything else."""
    body = spec.removeprefix(HUB_PREFIX)
    body, at, revision = body.partition("@")
    parts = [p for p in body.split("/") if p]
    if not spec.startswith(HUB_PREFIX) or len(parts) < 2 or (at and not revision):
        raise CheckpointError(
            f"{spec!r} is not a hub id: write hf:org/name, hf:org/name@revision or "
            "hf:org/name/file.ckpt"
        )
    return HubId("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (its own constants are
    fixed when it is imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub(spec: str) -> Path:
    """The local path of a hub id's weights (downloaded into the cache when the hub answers)."""
    hub = parse_hub_id(spec)
    cache, local_only = hub_cache_dir(), offline()
    try:
        if hub.filename:
            return Path(
                hf_hub_download(
                    hub.repo_id,
                    hub.filename,
                    revision=hub.revision,
                    cache_dir=cache,
                    local_files_only=local_only,
                )
            )
        folder = Path(
            snapshot_download(
                hub.repo_id, revision=hub.revision, cache_dir=cache, local_files_only=local_only
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        why = "HF_HUB_OFFLINE is set" if local_only else "the hub cannot be reached"
        raise HubUnavailable(
            f"{spec}: not in the Hugging Face cache ({cache}) and {why}. On a machine with "
            f"network run `{hub.download_command()}` (with HF_HOME set as here, or copy "
            f"{cache.name}/models--{hub.repo_id.replace('/', '--')} into {cache}), or download "
            "the files and pass their local path instead"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise HubUnavailable(f"{spec}: {type(error).__name__} on the hub ({error})") from error
    except HFValidationError as error:
        raise CheckpointError(f"{spec!r} is not a valid hub id ({error})") from error
    return _repository_weights(folder, spec)


def _repository_weights(folder: Path, spec: str) -> Path:
    """The snapshot folder if it is a model folder (model.json, or unet/ + vae/); else its one
    weights file."""
    if (folder / "model.json").is_file() or (folder / "unet").is_dir():
        return folder
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(files) == 1:
        return files[0]
    names = ", ".join(str(p.relative_to(folder)) for p in files[:5]) or "no weights file"
    raise CheckpointError(
        f"{spec}: the repository holds no model folder and {len(files)} weights files ({names})"
        f"; name one: {spec.split('@')[0]}/<file>"
    )

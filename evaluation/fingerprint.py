"""What makes an object's result what it is: the model, the reference, the SDS settings, the step
count, the exports and the scorer. ``result.json`` stores it; a rerun compares it with the
current run and skips, rescores, recomputes or refuses, naming what changed.

Every config key belongs to one group (longest matching prefix); keys that change nothing in a
result (input folder, device, report layout) belong to none. A key not listed here counts as an
SDS setting, so a new option can never be silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# key prefix -> group; None = does not change a result
GROUP_OF = {
    "model": "model",
    "model.path": None,  # where the folder is does not matter; its content (identity) does
    "inputs": "reference",
    "inputs.path": None,
    "inputs.kind": None,
    "inputs.limit": None,
    "device": None,
    "report": None,
    "speed": None,  # compile / bf16 proposal pass / logging: same results within float error
    "sds.unet_compile": None,
    "renderer.eval_chunk_rays": None,  # memory only: the no-grad renders are exact per ray
    "sds.steps": "steps",
    "export": "exports",
    "metrics": "scorer",
}
DEFAULT_GROUP = "sds"  # seed, precision, field, material, renderer, cameras, sds, optim, ...
GROUPS = ("model", "reference", "sds", "steps", "exports", "scorer")
# Groups a field checkpoint depends on: another value makes the optimised field another one.
FIELD_GROUPS = ("model", "reference", "sds")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def group_of(key: str) -> str | None:
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in GROUP_OF:
            return GROUP_OF[prefix]
    return DEFAULT_GROUP


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Size and three 1 MiB samples (start, middle, end): tells weight files apart without
    reading gigabytes."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            handle.seek(offset)
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def model_identity(cfg) -> dict[str, Any]:
    """The model's content: ``model.json`` and its weight files (not where the folder lives)."""
    if not cfg.model.path:
        return {"random": cfg.model.size, "seed": cfg.seed}
    folder = Path(cfg.model.path)
    meta = folder / "model.json"
    identity: dict[str, Any] = {
        "model_json": hashlib.sha256(meta.read_bytes()).hexdigest()[:16] if meta.is_file() else None
    }
    for weights in sorted(folder.rglob("*.safetensors")):  # component folders (unet/, vae/...)
        identity[weights.relative_to(folder).as_posix()] = file_digest(weights)
    return identity


def settings(cfg, identity: dict[str, Any], reference_digest: str | None) -> dict[str, Any]:
    """Flat ``key -> value`` of everything that makes a result, keys prefixed by group."""
    flat = {}
    for key, value in flatten(cfg.to_dict()).items():
        group = group_of(key)
        if group is not None:
            flat[f"{group}:{key}"] = value
    for key, value in identity.items():
        flat[f"model:identity.{key}"] = value
    flat["reference:digest"] = reference_digest
    return flat


def groups(flat: dict[str, Any]) -> dict[str, str]:
    """One short hash per group."""
    out = {}
    for group in GROUPS:
        items = sorted((k, v) for k, v in flat.items() if k.split(":", 1)[0] == group)
        out[group] = hashlib.sha256(json.dumps(items, default=str).encode()).hexdigest()[:12]
    return out


def make(cfg, identity: dict[str, Any], reference_digest: str | None) -> dict[str, Any]:
    flat = settings(cfg, identity, reference_digest)
    return {"groups": groups(flat), "settings": flat}


def changes(stored: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, list[str]]:
    """Changed groups -> ``"key: old -> new"`` lines (empty when nothing changed). A result
    without a fingerprint (older runs) counts as changed in every group."""
    if not stored or "groups" not in stored:
        return {g: ["no fingerprint recorded (result from an older version)"] for g in GROUPS}
    out: dict[str, list[str]] = {}
    old, new = stored.get("settings", {}), current["settings"]
    for group in GROUPS:
        if stored["groups"].get(group) == current["groups"][group]:
            continue
        lines = []
        for key in sorted(set(old) | set(new)):
            if key.split(":", 1)[0] == group and old.get(key) != new.get(key):
                name = key.split(":", 1)[1]
                lines.append(f"{name}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}")
        out[group] = lines or ["changed"]
    return out

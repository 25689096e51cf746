"""The report's rows: one per evaluated object in the report's units, the mean and spread of
each metric, the runs (model, steps, scorer, config) they mix, and how a value is written. Used
by the files (``evaluation/report.py``) and the page (``evaluation/report_html.py``) alike.
"""

from __future__ import annotations

import math

# (column, result key, lower is better)
METRICS = [
    ("clip", "clip_raw", False),
    ("psnr", "psnr", False),
    ("ssim", "ssim", False),
    ("lpips", "lpips", True),
    ("mv_clip", "mv_clip_raw", False),
    ("mv_psnr", "mv_psnr", False),
    ("mv_ssim", "mv_ssim", False),
    ("mv_lpips", "mv_lpips", True),
    ("seconds", "seconds", True),
]
CLIP_COLUMNS = {"clip", "mv_clip"}
NOT_MEANINGFUL = "not meaningful (random-init CLIP tower)"


def clip_meaningful(result: dict) -> bool:
    """False for a random tower, also in results written before it was recorded."""
    provenance = result.get("provenance") or {}
    if "clip_meaningful" in provenance:
        return bool(provenance["clip_meaningful"])
    return result.get("clip_backbone") not in (None, "tiny")


def provenance(result: dict) -> dict:
    """Model, its origin, steps, scorer and config hash of one result."""
    prov = result.get("provenance") or {}
    source = prov.get("model_source") or {}
    origin = ", ".join(
        f"{k} {source[k]}" for k in ("init", "stage", "step", "weights") if k in source
    )
    groups = (result.get("fingerprint") or {}).get("groups") or {}
    config = "/".join(groups.get(g, "?")[:6] for g in ("sds", "exports", "scorer"))
    backbone = result.get("clip_backbone") or "?"
    if not clip_meaningful(result):
        backbone += " (random: CLIP not meaningful)"
    return {
        "model": result.get("model") or prov.get("model") or "?",
        "model_origin": origin,
        "steps": result.get("steps"),
        "clip_backbone": backbone,
        "config": config if groups else "unrecorded",
    }


def table_rows(results: list[dict], clip_unit: str) -> list[dict]:
    """One row per object in the report's unit: CLIP columns are cosines (``raw``) or x100, and
    empty (``None``) when the scoring tower is random."""
    scale = 100.0 if clip_unit == "x100" else 1.0
    rows = []
    for result in results:
        meaningful = clip_meaningful(result)
        row = {"id": result["id"]}
        for column, key, _ in METRICS:
            value = result.get(key)
            if column in CLIP_COLUMNS:
                value = value * scale if value is not None and meaningful else None
            row[column] = value
        row.update(provenance(result))
        mesh = result.get("mesh") or {}
        row["mesh_iso"] = mesh.get("iso_level")
        row["mesh_fallback"] = mesh.get("iso_fallback")
        row["clip_meaningful"] = meaningful
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Mean, sample standard deviation (n - 1; none for n < 2) and n of every metric."""
    summary = {}
    for column, _, _ in METRICS:
        values = [r[column] for r in rows if r.get(column) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        summary[column] = {"mean": mean, "std": std, "n": n}
    return summary


RUN_KEYS = ("model", "model_origin", "steps", "clip_backbone", "config")


def runs(rows: list[dict]) -> list[dict]:
    """Distinct (model, steps, scorer, config) combinations, numbered from 1 in order of first
    appearance, with their object counts (each row's ``run`` is its number)."""
    seen: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in RUN_KEYS)
        entry = seen.setdefault(key, {"run": len(seen) + 1, **{k: row[k] for k in RUN_KEYS}})
        entry["objects"] = entry.get("objects", 0) + 1
        row["run"] = entry["run"]
    return list(seen.values())


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def mean_std(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    std = "" if stats["std"] is None else " ± " + fmt(stats["std"])
    return f"{fmt(stats['mean'])}{std} (n={stats['n']})"


ROW_COLUMNS = [
    "id",
    *[c for c, _, _ in METRICS],
    "steps",
    "run",
    "model",
    "clip_backbone",
    "config",
]

"""The report of an evaluation folder: per-object rows and mean/std as JSON, CSV and Markdown,
plots, a contact sheet and ``index.html`` (``evaluation/report_html.py``).

It is rebuilt from every ``objects/*/result.json`` and ``objects/*/failed.json`` present (plus
``expected.json``, the input's object ids, to name missing ones), so any rank, or a later
``python -m evaluation.report --out DIR``, writes the same complete report. A CLIP number from a
random tower is never a score: its columns stay empty and say why.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on render nodes
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

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


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "objects").glob("*/result.json"))]


def load_failures(out: Path) -> list[dict]:
    """Failed objects without a newer result (a retry that succeeded removes ``failed.json``)."""
    failures = []
    for path in sorted((out / "objects").glob("*/failed.json")):
        if not (path.parent / "result.json").is_file():
            failures.append(json.loads(path.read_text()))
    return failures


def load_expected(out: Path) -> list[str] | None:
    path = out / "expected.json"
    return json.loads(path.read_text())["objects"] if path.is_file() else None


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


def write_tables(out: Path, rows, summary, clip_unit: str, results, failures, missing) -> None:
    all_runs = runs(rows)
    data = {
        "clip_unit": clip_unit,
        "clip_note": "CLIP columns are null where the scoring tower is random: " + NOT_MEANINGFUL,
        "std": "sample standard deviation (n - 1) over objects; n = objects with a value",
        "runs": all_runs,
        "objects": rows,
        "summary": summary,
        "failed": failures,
        "missing": missing,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    extra = ["mesh_iso", "mesh_fallback", "clip_meaningful"]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS + extra, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"CLIP similarity unit: {clip_unit} (mean cosine between the reference and the rendered "
        "views; `-` where the tower is random: " + NOT_MEANINGFUL + "); mv_* = sampled views vs "
        "ground truth; PSNR/SSIM/LPIPS averaged over views; mean ± sample std (n objects).",
        "",
        "| run | model | origin | steps | CLIP backbone | config (sds/exports/scorer) | objects |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in all_runs:
        lines.append(
            f"| {run['run']} | {run['model']} | {run['model_origin']} | {run['steps']} "
            f"| {run['clip_backbone']} | {run['config']} | {run['objects']} |"
        )
    if len(all_runs) > 1:
        lines += ["", f"**Warning:** the means mix {len(all_runs)} runs (see the run column)."]
    lines += ["", "| " + " | ".join(ROW_COLUMNS) + " |", "|" + "---|" * len(ROW_COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in ROW_COLUMNS) + " |" for r in rows]
    means = [mean_std(summary[c]) for c, _, _ in METRICS]
    lines.append("| **mean ± std (n)** | " + " | ".join(means) + " | | | | | |")
    if failures:
        lines += ["", "Failed objects:", ""]
        lines += [f"- {f['id']}: {f['error']}" for f in failures]
    if missing:
        lines += ["", f"Missing (not evaluated yet): {', '.join(missing)}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def write_plots(out: Path, rows: list[dict], clip_unit: str) -> list[Path]:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    paths = []
    for column in ("clip", "psnr", "mv_clip"):
        pairs = [(r["id"], r[column]) for r in rows if r[column] is not None]
        path = plots / f"{column}.png"
        if not pairs:
            path.unlink(missing_ok=True)  # never leave a plot of numbers no longer shown
            continue
        fig, ax = plt.subplots(figsize=(min(40, max(4, 0.4 * len(pairs) + 2)), 3))
        ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color="#4a7bd0")
        unit = f" ({clip_unit})" if column in CLIP_COLUMNS else ""
        ax.set_ylabel(column + unit)
        ax.set_title(f"{column} per object")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def contact_sheet(out: Path, results: list[dict], tile: int = 128) -> Path | None:
    """One row per object: the reference, then its rendered views."""
    rows = []
    for result in results:
        folder = out / "objects" / result["id"]
        files = [folder / "reference.png"] + [folder / f for f in result["files"].get("views", [])]
        rows.append([f for f in files if f.is_file()])
    width = max((len(r) for r in rows), default=0)
    if not width:
        return None
    sheet = Image.new("RGB", (width * tile, len(rows) * tile), "white")
    for y, files in enumerate(rows):
        for x, file in enumerate(files):
            image = Image.open(file).convert("RGBA").resize((tile, tile), Image.LANCZOS)
            sheet.paste(image, (x * tile, y * tile), image)
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


def build_report(out: Path, clip_unit: str = "x100") -> dict:
    """Write every report file into ``out``; returns the summary (with counts)."""
    from evaluation.report_html import write_html

    out = Path(out)
    results, failures = load_results(out), load_failures(out)
    expected = load_expected(out)
    present = {r["id"] for r in results} | {f["id"] for f in failures}
    missing = [i for i in expected if i not in present] if expected is not None else []
    rows = table_rows(results, clip_unit)
    summary = summarise(rows)
    write_tables(out, rows, summary, clip_unit, results, failures, missing)
    write_plots(out, rows, clip_unit)
    contact_sheet(out, results)
    write_html(out, rows, summary, results, failures, missing, clip_unit)
    counts = {"done": len(results), "failed": len(failures), "missing": len(missing)}
    return {**summary, "counts": counts, "clip_meaningful": any(r["clip_meaningful"] for r in rows)}


def console_summary(out: Path, summary: dict, clip_unit: str) -> str:
    """What the run prints: where the report is, the counts, and each metric with n."""
    counts = summary["counts"]
    lines = [
        f"report: {Path(out) / 'index.html'}  ({counts['done']} done, {counts['failed']} "
        f"failed, {counts['missing']} missing)"
    ]
    for column, _, _ in METRICS:
        stats = summary[column]
        if column in CLIP_COLUMNS and not summary["clip_meaningful"]:
            if column == "clip":
                lines.append(f"  clip: {NOT_MEANINGFUL}: no score")
            continue
        if stats["n"]:
            unit = f" ({clip_unit})" if column in CLIP_COLUMNS else ""
            lines.append(f"  {column}{unit}: {mean_std(stats)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the report of an evaluation folder.")
    parser.add_argument("--out", required=True, help="evaluation output folder")
    parser.add_argument("--clip-unit", choices=["raw", "x100"], default="x100")
    args = parser.parse_args(argv)
    summary = build_report(Path(args.out), args.clip_unit)
    print(console_summary(Path(args.out), summary, args.clip_unit))


if __name__ == "__main__":
    main()

"""The report of an evaluation folder: per-object rows and mean/std as JSON, CSV and Markdown,
plots, a contact sheet and ``index.html`` (``evaluation/report_html.py``); the rows and their
statistics come from ``evaluation/report_rows.py``, which both use.

It is rebuilt from every ``objects/*/result.json`` and ``objects/*/failed.json`` present (plus
``expected.json``, the input's object ids, to name missing ones), so any rank, or a later
``python -m evaluation.report --out DIR``, writes the same complete report. A CLIP number from a
random tower is never a score: its columns stay empty and say why.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on render nodes
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from evaluation.report_html import write_html  # noqa: E402
from evaluation.report_rows import (  # noqa: E402
    CLIP_COLUMNS,
    METRICS,
    NOT_MEANINGFUL,
    ROW_COLUMNS,
    fmt,
    mean_std,
    runs,
    summarise,
    table_rows,
)


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

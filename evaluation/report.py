"""The report of an evaluation folder: per-object rows and mean/std as JSON, CSV and Markdown,
plots, a contact sheet and one self-contained HTML page (images and videos embedded).

It is rebuilt from every ``objects/*/result.json`` present, so any rank (or a later
``python -m evaluation.report --out DIR``) writes the same complete report.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
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


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "objects").glob("*/result.json"))]


def table_rows(results: list[dict], clip_unit: str) -> list[dict]:
    """One row per object in the report's unit: CLIP columns are cosines (``raw``) or x100."""
    scale = 100.0 if clip_unit == "x100" else 1.0
    rows = []
    for result in results:
        row = {"id": result["id"]}
        for column, key, _ in METRICS:
            value = result.get(key)
            if value is not None and column in CLIP_COLUMNS:
                value = value * scale
            row[column] = value
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    summary = {}
    for column, _, _ in METRICS:
        values = [r[column] for r in rows if r[column] is not None]
        if not values:
            summary[column] = {"mean": None, "std": None, "count": 0}
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        summary[column] = {"mean": mean, "std": std, "count": len(values)}
    return summary


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def write_tables(out: Path, rows: list[dict], summary: dict, clip_unit: str, results) -> None:
    columns = ["id"] + [c for c, _, _ in METRICS]
    data = {"clip_unit": clip_unit, "objects": rows, "summary": summary, "results": results}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"CLIP similarity unit: {clip_unit} (mean cosine between the reference and the rendered "
        "views); mv_* = sampled views vs ground truth.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join([r["id"]] + [_fmt(r[c]) for c in columns[1:]]) + " |" for r in rows]
    mean = [_fmt(summary[c]["mean"]) + " ± " + _fmt(summary[c]["std"]) for c in columns[1:]]
    lines.append("| **mean ± std** | " + " | ".join(mean) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def write_plots(out: Path, rows: list[dict], clip_unit: str) -> list[Path]:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    paths = []
    for column in ("clip", "psnr", "mv_clip"):
        pairs = [(r["id"], r[column]) for r in rows if r[column] is not None]
        if not pairs:
            continue
        fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(pairs) + 2), 3))
        ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color="#4a7bd0")
        unit = f" ({clip_unit})" if column in CLIP_COLUMNS else ""
        ax.set_ylabel(column + unit)
        ax.set_title(f"{column} per object")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        fig.tight_layout()
        path = plots / f"{column}.png"
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
    if not rows:
        return None
    width = max(len(r) for r in rows)
    sheet = Image.new("RGB", (width * tile, len(rows) * tile), "white")
    for y, files in enumerate(rows):
        for x, file in enumerate(files):
            image = Image.open(file).convert("RGBA").resize((tile, tile), Image.LANCZOS)
            sheet.paste(image, (x * tile, y * tile), image)
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _img(path: Path, size: int = 160) -> str:
    return f'<img src="{_data_uri(path, "image/png")}" width="{size}" title="{html.escape(path.name)}">'


def write_html(out: Path, rows, summary, results, clip_unit: str, embed_video: bool) -> Path:
    head = [c for c, _, _ in METRICS]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Isotropic3D evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        ".obj{border-top:2px solid #888;margin-top:1.5em;padding-top:.5em}"
        ".row img,.row video{margin:2px;vertical-align:top}</style></head><body>",
        f"<h1>Evaluation ({len(rows)} objects)</h1>",
        f"<p>CLIP similarity in unit <b>{clip_unit}</b>: mean cosine between the reference "
        "image and rendered views; mv_* compare sampled views with ground-truth renders.</p>",
        "<table><tr><th>metric</th><th>mean</th><th>std</th><th>n</th></tr>",
    ]
    for column in head:
        s = summary[column]
        parts.append(
            f"<tr><td>{column}</td><td>{_fmt(s['mean'])}</td><td>{_fmt(s['std'])}</td>"
            f"<td>{s['count']}</td></tr>"
        )
    parts.append("</table>")
    for row, result in zip(rows, results):
        folder = out / "objects" / result["id"]
        scores = ", ".join(f"{c} {_fmt(row[c])}" for c in head if row[c] is not None)
        parts.append(f"<div class='obj'><h2>{html.escape(result['id'])}</h2><p>{scores}</p>")
        parts.append("<div class='row'><b>reference</b><br>" + _img(folder / "reference.png"))
        video = folder / "turntable.mp4"
        if video.is_file():
            src = (
                _data_uri(video, "video/mp4")
                if embed_video
                else "objects/" + result["id"] + "/turntable.mp4"
            )
            parts.append(f'<video src="{src}" width="256" autoplay loop muted controls></video>')
        parts.append("</div><div class='row'><b>rendered views</b><br>")
        parts += [_img(folder / f, 128) for f in result["files"].get("views", [])]
        sampled = sorted((folder / "sampled").glob("view_*.png"))
        if sampled:
            parts.append("</div><div class='row'><b>sampled views (diffusion prior)</b><br>")
            parts += [_img(p, 128) for p in sampled]
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
        parts.append(f"</div><ul>{notes}</ul></div>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


def build_report(out: Path, clip_unit: str = "x100", embed_video: bool = True) -> dict:
    """Write every report file into ``out``; returns the summary."""
    out = Path(out)
    results = load_results(out)
    rows = table_rows(results, clip_unit)
    summary = summarise(rows)
    write_tables(out, rows, summary, clip_unit, results)
    write_plots(out, rows, clip_unit)
    contact_sheet(out, results)
    write_html(out, rows, summary, results, clip_unit, embed_video)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the report of an evaluation folder.")
    parser.add_argument("--out", required=True, help="evaluation output folder")
    parser.add_argument("--clip-unit", choices=["raw", "x100"], default="x100")
    parser.add_argument("--link-videos", action="store_true", help="link, not embed, videos")
    args = parser.parse_args(argv)
    summary = build_report(Path(args.out), args.clip_unit, not args.link_videos)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

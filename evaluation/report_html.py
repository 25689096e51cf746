"""``index.html`` of an evaluation folder, for hundreds of objects: runs (model, steps, scorer,
config), mean ± std (n) per metric, one table row per object (sortable by any column: click its
header) with the reference beside its render, normal and textureless views and the sampled view,
links to the mesh and the turntable video, then failed and missing objects and a section per
object with all its views. Images and videos are files next to the page (relative links, lazy
loading), never embedded."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from evaluation.report_rows import CLIP_COLUMNS, METRICS, NOT_MEANINGFUL, fmt, runs

STYLE = """
body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;vertical-align:middle}
th[data-type]{cursor:pointer;background:#eef}th[aria-sort=ascending]::after{content:" \\25b2"}
th[aria-sort=descending]::after{content:" \\25bc"}td.id,td.text{text-align:left}
.warn{color:#a40}.obj{border-top:1px solid #888;margin-top:1em}.obj img{margin:1px}
"""

# Sorting: numbers numerically (empty cells last in both directions), text alphabetically.
SCRIPT = """
document.querySelectorAll('#objects th[data-type]').forEach((th) => {
  th.addEventListener('click', () => {
    const table = th.closest('table'), body = table.tBodies[0];
    const index = Array.from(th.parentNode.children).indexOf(th);
    const descending = th.getAttribute('aria-sort') === 'ascending';
    table.querySelectorAll('th').forEach((h) => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
    const numeric = th.dataset.type === 'num', sign = descending ? -1 : 1;
    const value = (row) => row.children[index].dataset.value;
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === '' || y === '') return (x === '') - (y === '');
      return sign * (numeric ? Number(x) - Number(y) : x.localeCompare(y));
    });
    rows.forEach((row) => body.appendChild(row));
  });
});
"""


def _url(object_id: str, file: str) -> str:
    return quote(f"objects/{object_id}/{file}")


def _img(object_id: str, file: str | None, size: int, title: str) -> str:
    if not file:
        return "-"
    return (
        f'<img src="{_url(object_id, file)}" width="{size}" height="{size}" loading="lazy" '
        f'alt="{html.escape(title)}" title="{html.escape(title)}">'
    )


def _first(result: dict, kind: str) -> str | None:
    files = result.get("files", {}).get(kind) or []
    return files[0] if files else None


def _cell(value, column: str, meaningful: bool) -> str:
    data = "" if value is None else repr(float(value))
    text = fmt(value)
    if value is None and column in CLIP_COLUMNS and not meaningful:
        text = '<span class="warn" title="' + NOT_MEANINGFUL + '">n/m</span>'
    return f'<td data-value="{data}">{text}</td>'


def _links(result: dict) -> str:
    oid, files = result["id"], result.get("files", {})
    links = [
        f'<a href="{_url(oid, f)}">{html.escape(Path(f).suffix[1:])}</a>'
        for f in files.get("mesh", [])
    ]
    links += [f'<a href="{_url(oid, f)}">video</a>' for f in files.get("video", [])]
    return " ".join(links) or "-"


def _runs_table(rows: list[dict]) -> list[str]:
    parts = [
        "<table id='runs'><tr><th>run</th><th>model</th><th>origin</th><th>steps</th>"
        "<th>CLIP backbone</th><th>config (sds/exports/scorer)</th><th>objects</th></tr>"
    ]
    table = runs(rows)
    for run in table:
        cells = [run[k] for k in ("model", "model_origin", "steps", "clip_backbone", "config")]
        parts.append(
            f"<tr><td>{run['run']}</td>"
            + "".join(f"<td class='text'>{html.escape(fmt(c))}</td>" for c in cells)
            + f"<td>{run['objects']}</td></tr>"
        )
    parts.append("</table>")
    if len(table) > 1:
        parts.append(f"<p class='warn'>The means mix {len(table)} runs (see the run column).</p>")
    return parts


def _object_row(row: dict, result: dict, metric_columns: list[str]) -> str:
    oid = result["id"]
    sampled = _first(result, "sampled")
    thumbs = [
        _img(oid, "reference.png", 64, "reference"),
        _img(oid, _first(result, "views"), 64, "render"),
        _img(oid, _first(result, "normal"), 64, "normal"),
        _img(oid, _first(result, "textureless"), 64, "textureless"),
        _img(oid, sampled, 64, "sampled view") if sampled else "-",
    ]
    cells = [f'<td class="id" data-value="{html.escape(oid)}"><a href="#obj-{quote(oid)}">'
             f"{html.escape(oid)}</a></td>"]  # fmt: skip
    cells += [f"<td>{t}</td>" for t in thumbs]
    cells += [_cell(row[c], c, row["clip_meaningful"]) for c in metric_columns]
    cells.append(_cell(row["steps"], "steps", True))
    cells.append(_cell(row["run"], "run", True))
    mesh = fmt(row["mesh_iso"]) + (
        ' <span class="warn">fallback</span>' if row["mesh_fallback"] else ""
    )
    cells.append(
        f'<td data-value="{"" if row["mesh_iso"] is None else row["mesh_iso"]}">{mesh}</td>'
    )
    cells.append(f"<td class='text'>{_links(result)}</td>")
    notes = "; ".join(result.get("notes", []))
    cells.append(f"<td class='text'>{len(result.get('notes', []))}" + (
        f' <span title="{html.escape(notes)}">(hover)</span>' if notes else "") + "</td>")  # fmt: skip
    return f'<tr id="row-{html.escape(oid)}">' + "".join(cells) + "</tr>"


def _object_section(result: dict) -> str:
    oid, files = result["id"], result.get("files", {})
    parts = [f'<div class="obj" id="obj-{html.escape(oid)}"><h3>{html.escape(oid)}</h3>']
    parts.append("<p>" + _img(oid, "reference.png", 128, "reference"))
    for video in files.get("video", []):
        parts.append(
            f'<video src="{_url(oid, video)}" width="128" height="128" controls muted loop '
            'preload="none"></video>'
        )
    parts.append("</p>")
    for kind in ("views", "normal", "textureless", "sampled"):
        if files.get(kind):
            imgs = "".join(_img(oid, f, 96, f"{kind} {i}") for i, f in enumerate(files[kind]))
            parts.append(f"<p><b>{kind}</b><br>{imgs}</p>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
    parts.append(f"<p>{_links(result)}</p><ul>{notes}</ul></div>")
    return "".join(parts)


def write_html(out: Path, rows, summary, results, failures, missing, clip_unit: str) -> Path:
    metric_columns = [c for c, _, _ in METRICS]
    meaningful = any(r["clip_meaningful"] for r in rows)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Isotropic3D evaluation</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation: {len(rows)} object{'' if len(rows) == 1 else 's'}</h1>",
        f"<p id='counts'>{len(rows)} done, {len(failures)} failed, {len(missing)} missing.</p>",
        "<h2>Runs</h2>",
        *_runs_table(rows),
        f"<p>CLIP similarity in unit <b>{clip_unit}</b>: mean cosine between the reference image "
        "and rendered views; mv_* compare sampled views with ground-truth renders. PSNR, SSIM "
        "and LPIPS are averaged over views; std is the sample standard deviation over objects."
        + ("" if meaningful else f" <b class='warn'>CLIP: {NOT_MEANINGFUL}; no CLIP score.</b>")
        + "</p>",
        "<h2>Summary</h2><table id='summary'><tr><th>metric</th><th>mean</th><th>std</th>"
        "<th>n</th></tr>",
    ]
    for column in metric_columns:
        s = summary[column]
        parts.append(
            f"<tr><td class='text'>{column}</td><td>{fmt(s['mean'])}</td><td>{fmt(s['std'])}</td>"
            f"<td>{s['n']}</td></tr>"
        )
    parts.append("</table><h2>Objects</h2><p>Click a column header to sort.</p>")
    head = ['<th data-type="text">id</th>']
    head += [f"<th>{h}</th>" for h in ("reference", "render", "normal", "textureless", "sampled")]
    head += [f'<th data-type="num">{c}</th>' for c in metric_columns]
    head += ['<th data-type="num">steps</th>', '<th data-type="num">run</th>']
    head += ['<th data-type="num">mesh iso</th>']
    head += ["<th>files</th>", "<th>notes</th>"]
    parts.append("<table id='objects'><thead><tr>" + "".join(head) + "</tr></thead><tbody>")
    parts += [_object_row(row, result, metric_columns) for row, result in zip(rows, results)]
    parts.append("</tbody></table>")
    if failures:
        parts.append("<h2>Failed</h2><table id='failed'><tr><th>id</th><th>reason</th></tr>")
        parts += [
            f"<tr><td class='text'>{html.escape(f['id'])}</td>"
            f"<td class='text'>{html.escape(f['error'])}</td></tr>"
            for f in failures
        ]
        parts.append("</table>")
    if missing:
        parts.append(f"<h2>Missing</h2><p id='missing'>{html.escape(', '.join(missing))}</p>")
    parts.append("<h2>Per object</h2>")
    parts += [_object_section(result) for result in results]
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path

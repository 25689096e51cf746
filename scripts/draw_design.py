"""`make design-picture`: draw docs/design.svg, the picture docs/design.md opens with, from the code.

Top: the packages in their layers (scripts/import_graph.py's ``LAYERS``), each with the first
sentence of its ``__init__`` docstring, and one arrow per imported package (``package_edges``, the
number of importing modules on it). An arrow that breaks the layer rule is red. Bottom: one
sample's way from Blender to the loss, each step the module and function that does it; a step
whose function is gone fails the drawing (and the test that keeps the picture current,
tests/test_layers.py). Plain SVG text, written the same way every time: the test compares it
byte for byte.
"""

from __future__ import annotations

import argparse
import ast
import html
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import import_graph as graph  # noqa: E402

PICTURE = graph.ROOT / "docs" / "design.svg"
# Rows top to bottom; in a row, left to right (the flow: render, train, evaluate).
ROWS = [
    ["scripts"],
    ["data_prep", "training", "evaluation"],
    ["models.shards", "models", "cluster"],
]
SCRIPTS_ROLE = "Entry scripts: the demo, benchmarks, the GPU check; they may import any package."
# One sample's way: (what happens, module, function or Class.method)
SAMPLE_PATH = [
    ("poses planned, jobs to Blender workers", "data_prep.render", "render"),
    ("Cycles renders the RGBA views", "data_prep.blender_worker", "render_job"),
    ("views, cameras, meta.json: one sample", "models.shards.format", "build_sample"),
    ("into part-PPP/shard-PPP-NNNNNN.tar", "data_prep.shard_writer", "ShardWriter.add"),
    ("loader worker reads the tar", "models.shards.tar_stream", "tar_samples"),
    ("meta checked, 4 + 1 views decoded", "training.samples", "image_sample"),
    ("uint8 views stacked, shared memory", "training.samples", "collate"),
    ("on the device: resize, composite", "training.batch_transforms", "image_batch"),
    ("VAE latents, CLIP embedding", "training.module", "FineTuneModule.encode_batch"),
    ("noise, multi-view UNet, MSE loss", "training.module", "FineTuneModule.loss_for"),
]
WIDTH, BOX_W, BOX_H, STEP_W, STEP_H = 1100, 270, 72, 206, 72
ROW_TOPS = (40, 150, 320)
GREY, BROKEN = "#555555", "#c0392b"  # an arrow that breaks the layer rule is red
SOURCE_COLOURS = {
    "data_prep": "#2e7d32",
    "training": "#1565c0",
    "evaluation": "#b35900",
}  # the middle rows far apart: room for the arrows and their numbers
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def role(package: str) -> str:
    """The first sentence of the package's ``__init__`` docstring."""
    if package == "scripts":
        return SCRIPTS_ROLE
    init = graph.ROOT / package.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    if not first:
        raise SystemExit(f"{init}: no docstring; its first sentence is the package's role")
    return first.split(". ")[0].rstrip(".") + "."


def defined(module: str, name: str) -> bool:
    """Whether ``module`` defines ``name`` (``Class.method`` too), read from its source."""
    path = graph.ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return False
    scope = ast.parse(path.read_text()).body
    for part in name.split("."):
        found = [n for n in scope if getattr(n, "name", None) == part]
        if not found:
            return False
        scope = getattr(found[0], "body", [])
    return True


def _text(x: float, y: float, text: str, size: int = 12, weight: str = "normal", **kw) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" '
        f'text-anchor="middle" {FONT}{extra}>{html.escape(text)}</text>'
    )


def _box(cx: float, top: float, w: float, h: float, title: str, lines: list[str], fill: str):
    out = [
        f'<rect x="{cx - w / 2:.0f}" y="{top:.0f}" width="{w:.0f}" height="{h:.0f}" rx="6" '
        f'fill="{fill}" stroke="#333"/>',
        _text(cx, top + 17, title, 13, "bold"),
    ]
    out += [_text(cx, top + 33 + 13 * i, line, 10.5) for i, line in enumerate(lines)]
    return out


def _arrow(
    x1: float, y1: float, x2: float, y2: float, colour: str, label: str = "", t: float = 0.5
) -> list[str]:
    out = [
        f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" '
        f'stroke-width="1.5" marker-end="url(#head-{colour[1:]})"/>'
    ]
    if label:
        mx, my = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
        out.append(f'<circle cx="{mx:.0f}" cy="{my:.0f}" r="9" fill="white" stroke="{colour}"/>')
        out.append(_text(mx, my + 4, label, 10, fill=colour))
    return out


def draw(modules: dict[str, graph.Module]) -> str:
    """The SVG text of the picture for ``modules`` (graph.load())."""
    missing = [f"{m}.{f}" for _, m, f in SAMPLE_PATH if not defined(m, f)]
    if missing:
        raise SystemExit(f"scripts/draw_design.py: SAMPLE_PATH names what is gone: {missing}")
    drawn = {p for row in ROWS for p in row}
    nodes = {*graph.LAYERS, graph.SHARED, "scripts"}
    if drawn != nodes:
        raise SystemExit(
            f"scripts/draw_design.py: ROWS {sorted(drawn)} != packages {sorted(nodes)}"
        )
    edges = graph.package_edges(modules)
    centre, top = {}, {}
    for r, row in enumerate(ROWS):
        for i, package in enumerate(row):
            centre[package] = WIDTH * (i + 0.5) / len(row)
            top[package] = ROW_TOPS[r]
    body = [_text(WIDTH / 2, 24, "Packages and their imports (arrows point down only)", 15, "bold")]
    for (a, b), count in sorted(edges.items()):
        if a == "scripts":  # on top of everything: its imports are named in its box
            continue
        colour = BROKEN if graph.rule_broken(a, b) else SOURCE_COLOURS.get(a, GREY)
        down = top[b] > top[a]
        fan = max(min((centre[b] - centre[a]) * 0.22, BOX_W / 2 - 25), 25 - BOX_W / 2)
        x1, x2 = centre[a] + fan, centre[b] - fan  # fanned out over the boxes: labels apart
        y1 = top[a] + (BOX_H if down else 0)
        y2 = top[b] + (0 if down else BOX_H)
        if top[a] == top[b]:  # same row (only in a violation): side to side
            y1 = y2 = top[a] + BOX_H / 2
        t = 0.4 if x1 == x2 else (0.25 if x2 < x1 else 0.75)
        body += _arrow(x1, y1, x2, y2, colour, str(count), t)
    for package in centre:
        fill = {0: "#e8f1fb", 1: "#eaf7e9", 2: "#fdf3e1"}[
            next(r for r, row in enumerate(ROWS) if package in row)
        ]
        lines = textwrap.wrap(role(package), 48)
        if package == "scripts":
            used = sorted(((n, b) for (a, b), n in edges.items() if a == "scripts"), reverse=True)
            lines = textwrap.wrap(SCRIPTS_ROLE, 60) + [
                "imports: " + ", ".join(f"{b} {n}" for n, b in used)
            ]
        body += _box(
            centre[package],
            top[package],
            BOX_W * (1.6 if package == "scripts" else 1),
            BOX_H,
            package,
            lines[:3],
            fill,
        )
    y0 = top[ROWS[-1][0]] + BOX_H + 30
    legend = (
        "numbers: imports (module to module) along the arrow, in the importing package's colour; "
        "data_prep, training and evaluation never import each other (tests/test_layers.py)"
    )
    body.append(_text(WIDTH / 2, y0, legend, 11, fill="#444"))
    y0 += 40
    body.append(_text(WIDTH / 2, y0, "One sample's way from Blender to the loss", 15, "bold"))
    per_row = 5
    for i, (what, module, function) in enumerate(SAMPLE_PATH):
        row, col = divmod(i, per_row)
        col = col if row % 2 == 0 else per_row - 1 - col  # snake: the second row runs back
        cx = WIDTH * (col + 0.5) / per_row
        y = y0 + 18 + row * (STEP_H + 40)
        title = f"{i + 1}. {module.split('.')[0]}"
        lines = [*textwrap.wrap(what, 34)[:2], f"{module.split('.', 1)[1]}.{function}"]
        body += _box(cx, y, STEP_W, STEP_H, title, lines, "#ffffff")
        if i + 1 < len(SAMPLE_PATH):
            next_row, next_col = divmod(i + 1, per_row)
            if next_row == row:
                step = 1 if row % 2 == 0 else -1
                x1 = cx + step * STEP_W / 2
                body += _arrow(
                    x1,
                    y + STEP_H / 2,
                    x1 + step * (WIDTH / per_row - STEP_W),
                    y + STEP_H / 2,
                    GREY,
                )
            else:
                body += _arrow(cx, y + STEP_H, cx, y + STEP_H + 40, GREY)
    height = y0 + 18 + ((len(SAMPLE_PATH) - 1) // per_row + 1) * (STEP_H + 40)
    heads = "".join(
        f'<marker id="head-{c}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#{c}"/></marker>'
        for c in sorted({c[1:] for c in (GREY, BROKEN, *SOURCE_COLOURS.values())})
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
            f'viewBox="0 0 {WIDTH} {height:.0f}">',
            f"<defs>{heads}</defs>",
            f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PICTURE, help="the SVG to write")
    args = parser.parse_args(argv)
    args.out.write_text(draw(graph.load()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

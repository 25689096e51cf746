"""The demo's figure: one training object's ground-truth views, the views the trained model
samples at those poses (and the camera-rotated baseline), and the SDS object's renders there (and
the initial blob's), each row with its PSNR and silhouette IoU. Also the README's picture.

``python scripts/demo_figures.py --demo outputs/demo --object front_marker --out demo.png``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def _mean(values) -> float:
    return float(np.mean(values))


def figure(demo: Path, key: str, dest: Path, scale: int = 3) -> Path:
    mv = json.loads((demo / "multiview" / "scores.json").read_text())
    sds_path = demo / "sds_scores.json"
    sds = json.loads(sds_path.read_text()) if sds_path.exists() else None
    index = mv["objects"].index(key)
    views = demo / "multiview" / "views"
    rows = [("ground truth renders", "", views / f"{key}_ground_truth.png")]
    for condition, label in (("trained", "sampled, trained model"),
                             ("cameras rotated", "cameras rotated (baseline)"),
                             ("untrained", "untrained (baseline)")):  # fmt: skip
        scores = mv["conditions"][condition]["per_object"][index]
        text = f"PSNR {_mean(scores['psnr']):.1f} dB  IoU {_mean(scores['iou']):.2f}"
        rows.append((label, text, views / f"{key}_{condition.replace(' ', '_')}.png"))
    if sds is not None:
        for name, label in (("sds", f"SDS 3D, {sds['sds_steps']} steps"),
                            ("initial blob", "SDS start: the blob")):  # fmt: skip
            text = f"PSNR {sds[name]['mean_psnr']:.1f} dB  IoU {sds[name]['mean_iou']:.2f}"
            rows.append((label, text, demo / f"sds_scores_{name.replace(' ', '_')}.png"))
    strips = [Image.open(path).convert("RGB") for _, _, path in rows]
    # One row height for all (SDS renders come at the export size, samples at the model's 32 px).
    side = strips[0].height * scale
    strips = [
        s.resize(
            (s.width * side // s.height, side),
            Image.NEAREST if side % s.height == 0 else Image.LANCZOS,
        )
        for s in strips
    ]
    label_w, gap = 190, 4
    width = label_w + max(s.width for s in strips)
    canvas = Image.new("RGB", (width, sum(s.height + gap for s in strips) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (4, 4), f"{key}: 4 views at its ground-truth poses (tiny model, CPU demo)", fill="black"
    )
    top = 20
    for (label, text, _), strip in zip(rows, strips):
        draw.text((4, top + 6), label, fill="black")
        draw.text((4, top + 22), text, fill=(80, 80, 80))
        canvas.paste(strip, (label_w, top))
        top += strip.height + gap
    dest.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="outputs/demo", help="the demo's output folder")
    parser.add_argument("--object", default="front_marker", help="training object shown")
    parser.add_argument("--out", help="figure PNG (default: DEMO/demo.png)")
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    print(f"wrote {figure(demo, args.object, Path(args.out) if args.out else demo / 'demo.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

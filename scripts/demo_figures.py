"""The demo's figure: one training object's ground-truth views, the views the trained model
samples at those poses (and the camera-rotated baseline), and the SDS object's renders there (and
the initial blob's), each row with its PSNR and silhouette IoU. Also the README's picture.
Beside it, the demo's report page ``DEMO/index.html``: that figure, every training object's views
beside the three baselines, the score tables (with the margins), the VAE and image-encoder figures,
the loss curves and the turntable, linking the SDS evaluation's own report.

``python scripts/demo_figures.py --demo outputs/demo --object front_marker --out demo.png``
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def _mean(values) -> float:
    return float(np.mean(values))


SDS_ROWS = (  # the SDS object and its controls (evaluation/controls.py), as the figure labels them
    ("sds", "SDS 3D, {steps} steps"),
    ("initial blob", "SDS start: the blob"),
    ("opaque sphere", "opaque best-fit sphere"),
    ("photometric fit", "photometric fit (ceiling)"),
    ("analytic object", "analytic cube (control)"),
)


def _sds_text(entry: dict) -> str:
    text = f"fg {entry['fg_psnr']:.1f} dB  IoU {entry['mean_iou']:.2f}"
    if "faces_seen" in entry:
        text += f"  faces {entry['faces_correct']}/{entry['faces_seen']}"
    return text


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
    free = mv.get("without_reference_frame")
    if free is not None:  # the prior as SDS queries it: no reference frame
        scores = free["conditions"]["trained"]["per_object"][index]
        text = f"PSNR {_mean(scores['psnr']):.1f} dB  IoU {_mean(scores['iou']):.2f}"
        strip = views / f"{key}_trained_without_reference.png"
        rows.insert(2, ("sampled, no reference frame", text, strip))
    if sds is not None:
        where = "held-out" if sds.get("heldout") else "training"
        rows.append((f"ground truth, {where} views", "", demo / "sds_scores_ground_truth.png"))
        for name, label in SDS_ROWS:
            if name not in sds:
                continue
            label = label.format(steps=sds["sds_steps"])
            rows.append(
                (label, _sds_text(sds[name]), demo / f"sds_scores_{name.replace(' ', '_')}.png")
            )
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


def _table(header: list[str], rows: list[list[str]], ident: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table id='{ident}'><tr>{head}</tr>{body}</table>"


def report_page(demo: Path, key: str) -> Path:
    """``demo/index.html``: the figures and scores of the demo side by side (relative links)."""
    mv = json.loads((demo / "multiview" / "scores.json").read_text())
    views_rows = [
        [name, f"{c['psnr']:.2f}", f"{c['iou']:.3f}"]
        + ([f"{mv['margins'][name]['psnr_db']:+.2f}", f"{mv['margins'][name]['iou']:+.3f}"]
           if name in mv["margins"] else ["", ""])
        for name, c in mv["conditions"].items()
    ]  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Isotropic3D demo</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{image-rendering:pixelated}</style>",
        "</head><body><h1>Isotropic3D demo: the tiny model, trained on a CPU</h1>",
        f"<h2>{html.escape(key)}: ground truth, sampled views and SDS at its poses</h2>",
        "<img id='figure' src='demo.png' alt='demo figure'>",
        f"<h2>Views at the ground-truth poses of a {html.escape(mv.get('cameras', 'training quad'))}"
        ", beside three baselines</h2>",
        f"<p>Mean over {len(mv['objects'])} training objects ({html.escape(', '.join(mv['objects']))}); "
        "margins are the trained model's lead. The tiny image encoder is a small tower trained on "
        "these renders, not CLIP, so no CLIP score is given.</p>",
        _table(["condition", "PSNR dB", "silhouette IoU", "trained lead dB", "trained lead IoU"],
               views_rows, "views"),
        "<img src='multiview/views.png' alt='views and baselines' width='620'>",
    ]  # fmt: skip
    free = mv.get("without_reference_frame")
    if free is not None:
        rows = [
            [name, f"{c['psnr']:.2f}", f"{c['iou']:.3f}"]
            + ([f"{free['margins'][name]['psnr_db']:+.2f}", f"{free['margins'][name]['iou']:+.3f}"]
               if name in free["margins"] else ["", ""])
            for name, c in free["conditions"].items()
        ]  # fmt: skip
        parts += [
            "<h3>The same without the reference frame (the 4 noisy views alone, as SDS queries "
            "the model)</h3>",
            _table(["condition", "PSNR dB", "silhouette IoU", "trained lead dB",
                    "trained lead IoU"], rows, "views_without_reference"),
            "<img src='multiview/views_without_reference.png' alt='without the reference frame' "
            "width='620'>",
        ]  # fmt: skip
    sds_path = demo / "sds_scores.json"
    if sds_path.exists():
        sds = json.loads(sds_path.read_text())
        rows = [
            [n, f"{sds[n]['mean_iou']:.3f}", f"{sds[n]['fg_psnr']:.2f}", f"{sds[n]['mean_psnr']:.2f}",
             f"{sds[n]['faces_correct']}/{sds[n]['faces_seen']}" if "faces_seen" in sds[n] else ""]
            for n, _ in SDS_ROWS if n in sds
        ]  # fmt: skip
        where = "held-out" if sds.get("heldout") else "training (no held-out quadruple)"
        margins = "; ".join(
            f"{name}: {m['iou']:+.3f} IoU, {m['fg_psnr_db']:+.2f} dB"
            for name, m in sds["margins"].items()
        )
        parts += [
            f"<h2>SDS ({sds['sds_steps']} steps) at {where} views, beside its controls</h2>",
            _table(
                [
                    "field",
                    "silhouette IoU",
                    "foreground PSNR dB",
                    "PSNR dB (on white)",
                    "faces correct",
                ],
                rows,
                "sds",
            ),  # fmt: skip
            f"<p>{html.escape(margins)}. The photometric fit is the same field fitted to the "
            "training views (the ceiling); the analytic cube checks the renderer's cameras "
            "against Blender's.</p>",
        ]
        previews = sorted((demo / "eval" / "objects" / sds["object"] / "x0").glob("*.png"))
        if previews:
            parts.append("<h3>What SDS distils: renders (top) and the x0 the prior paints</h3>")
            for image in previews[-3:]:
                rel = image.relative_to(demo).as_posix()
                parts.append(f"<p>{html.escape(image.stem)}</p><img src='{rel}' width='512'>")
        video = Path("eval") / "objects" / sds["object"] / "turntable.mp4"
        if (demo / video).exists():
            parts.append(f"<video src='{video.as_posix()}' controls loop width='256'></video>")
    prior_path = demo / "prior_at_truth.json"
    if prior_path.exists():  # evaluation.prior_at_truth
        prior = json.loads(prior_path.read_text())
        rows = [["VAE round trip", f"{prior['vae_round_trip_fg_psnr']:.2f}", ""]] + [
            [f"t = {t}", f"{e['fg_psnr']:.2f}", f"{e['fg_psnr_of_mean']:.2f}"]
            for t, e in prior["timesteps"].items()
        ]
        parts += [
            "<h3>What the prior paints over the true views: the ceiling of SDS</h3>",
            _table(
                ["true views noised at", "one x0 target: fg PSNR dB", "mean of the targets"],
                rows,
                "prior_at_truth",
            ),  # fmt: skip
            f"<p>The held-out views themselves, at {prior['image_size']} px, noised and denoised "
            "once with SDS's guidance: SDS pulls its renders towards these targets, so an object "
            "it makes scores about what the targets at its timesteps score.</p>",
        ]
    vae_path = demo / "vae_model" / "vae_metrics.json"
    if vae_path.exists():
        vae = json.loads(vae_path.read_text())
        rows = [["VAE reconstruction, training views (dB)", f"{vae['train_psnr']:.2f}"]]
        if vae.get("heldout_psnr") is not None:
            rows.append(["VAE reconstruction, held-out views (dB)", f"{vae['heldout_psnr']:.2f}"])
        for stage in ("before", "after"):
            encoder = (vae.get("image_encoder") or {}).get(stage)
            if encoder:
                rows.append([f"image encoder {stage}: cosine between objects",
                             f"{encoder['cosine_between_objects']:.3f}"])  # fmt: skip
        parts += ["<h2>Pretraining</h2>", _table(["figure", "value"], rows, "pretraining")]
    for title, image in (("Training loss", "training_loss.png"),
                         ("Rendered training views", "contact_sheet.png")):  # fmt: skip
        if (demo / image).exists():
            parts.append(f"<h2>{title}</h2><img src='{image}' alt='{title}' width='620'>")
    parts.append("<p><a href='eval/index.html'>The SDS evaluation's report</a></p></body></html>")
    path = demo / "index.html"
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="outputs/demo", help="the demo's output folder")
    parser.add_argument("--object", default="front_marker", help="training object shown")
    parser.add_argument("--out", help="figure PNG (default: DEMO/demo.png)")
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    print(f"wrote {figure(demo, args.object, Path(args.out) if args.out else demo / 'demo.png')}")
    print(f"wrote {report_page(demo, args.object)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Views sampled at an object's ground-truth poses, scored against its renders, beside baselines.

``python -m evaluation.multiview_score --model DIR --base-model DIR --shards SHARDS --out DIR``

For each object of the shards: its first reference view conditions the sampler
(``models.sample.sample_views``: CLIP embedding, and the clean reference frame for stage-2 models)
and 4 views are sampled at the cameras of its first azimuth-orthogonal quadruple (``--quads
heldout``: its first held-out quadruple, cameras no training step saw); each view is
scored against the ground-truth render of that camera by PSNR (on white) and silhouette IoU (the
render's alpha against the non-white pixels of the sample). The same is done for three baselines,
in the same run with the same seeds:

* ``untrained``: the model the training started from (``--base-model``);
* ``cameras rotated``: the trained model, each view asked for its neighbour's camera (azimuths
  rolled by one view): a model that ignores or misreads the camera input does not lose here;
* ``other reference``: the trained model given the next object's reference image: a model that
  ignores its condition does not lose here.

A trained model that beats all three shows that the renderer's cameras, the model's camera input
and the conditioning agree. Writes ``scores.json`` and ``views.png`` (per object: ground truth,
then each condition's samples).

``--reference-frame both`` also scores every condition without the reference frame (the 4 noisy
views alone: how SDS queries the model) into ``scores.json`` ``without_reference_frame`` and
``views_without_reference.png``; the main figures stay those of the model folder's default
(with the frame for a stage-2 model).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from models.bundle import MultiViewDiffusion, load_model
from models.sample import sample_views
from models.shards.format import read_meta
from models.shards.images import BACKGROUNDS, composite, decode_rgba
from models.shards.urls import expand_shard_urls

CONDITIONS = ("trained", "untrained", "cameras rotated", "other reference")
WHITE_THRESHOLD = 0.08  # a sampled pixel is foreground when a channel is this far from white


@dataclass
class GroundTruth:
    """One object of the shards: reference view and one quad, premultiplied RGBA in [0,1]."""

    key: str
    reference: torch.Tensor  # [4,H,W]
    views: torch.Tensor  # [4,4,H,W]
    elevation_deg: float
    azimuths_deg: list[float]
    fov_deg: list[float]  # of the quad's views (the renderer needs them; the model does not)
    distance: list[float]
    heldout: bool = False  # the quad is one of the object's held-out quadruples

    @property
    def reference_rgb(self) -> torch.Tensor:
        return composite(self.reference, BACKGROUNDS["white"])

    @property
    def views_rgb(self) -> torch.Tensor:
        return composite(self.views, BACKGROUNDS["white"])


def load_ground_truth(
    shards: list[str], resolution: int, keys: list[str] | None = None, heldout: bool = False
) -> list[GroundTruth]:
    """Objects of the shards (in ``keys`` order when given), reference ``refs[0]`` and quad 0
    (``heldout``: held-out quad 0, never trained on; an object without one is an error)."""
    found: dict[str, GroundTruth] = {}
    for sample in wds.WebDataset(expand_shard_urls(shards), shardshuffle=False, empty_check=False):
        if keys is not None and sample["__key__"] not in keys:
            continue
        meta = read_meta(sample)
        if heldout and not meta.heldout_quads:
            raise ValueError(
                f"object {sample['__key__']} has no held-out quadruple (render with "
                "--heldout-quads 1 or more)"
            )
        quad = meta.heldout_quads[0] if heldout else meta.quads[0]
        ref = meta.refs[0] if meta.refs else quad[0]
        angles = meta.angles[quad]
        found[sample["__key__"]] = GroundTruth(
            key=sample["__key__"],
            reference=decode_rgba(sample, ref, resolution),
            views=torch.stack([decode_rgba(sample, i, resolution) for i in quad]),
            elevation_deg=float(angles[0, 0]),
            azimuths_deg=[float(a) for a in angles[:, 1]],
            fov_deg=[meta.pose(i)["fov_deg"] for i in quad],
            distance=[meta.pose(i)["distance"] for i in quad],
            heldout=heldout,
        )
    missing = sorted(set(keys or []) - set(found))
    if missing:
        raise KeyError(f"objects {missing} are not in {shards}")
    return [found[k] for k in keys] if keys is not None else [found[k] for k in sorted(found)]


def silhouette_of_rgb(images: torch.Tensor) -> torch.Tensor:
    """Foreground of images on white ``[...,3,H,W]``: any channel far from white."""
    return (1 - images).amax(dim=-3) > WHITE_THRESHOLD


def view_scores(pred: torch.Tensor, truth_rgba: torch.Tensor) -> dict[str, list[float]]:
    """Per-view PSNR (dB, on white) and silhouette IoU of ``pred`` ``[V,3,H,W]`` in [0,1] against
    premultiplied RGBA ``[V,4,H,W]``."""
    truth = composite(truth_rgba, BACKGROUNDS["white"])
    mse = (pred.clamp(0, 1) - truth).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = 10 * torch.log10(1 / mse)
    a, b = silhouette_of_rgb(pred), truth_rgba[:, 3] > 0.5
    iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)
    return {"psnr": psnr.tolist(), "iou": iou.float().tolist()}


def sample_condition(
    model: MultiViewDiffusion,
    obj: GroundTruth,
    reference: torch.Tensor,
    rotate: int,
    seed: int,
    steps: int,
    guidance: float,
    reference_frame: bool | None = None,
) -> torch.Tensor:
    azimuths = torch.tensor(obj.azimuths_deg).roll(rotate)
    return sample_views(
        model, reference, elevation_deg=obj.elevation_deg, azimuths_deg=azimuths,
        image_size=obj.views.shape[-1], seed=seed, guidance_scale=guidance, steps=steps,
        use_reference_frame=reference_frame, progress=False,
    ).images  # fmt: skip


def score_conditions(
    model: MultiViewDiffusion,
    base_model: MultiViewDiffusion,
    objects: list[GroundTruth],
    steps: int = 20,
    guidance: float = 3.0,
    seeds: tuple[int, ...] = (0,),
    reference_frame: bool | None = None,
) -> dict:
    """Scores of the trained model and the three baselines on every object (see the module
    docstring); ``samples[condition][i]`` are object i's views from the first seed.
    ``reference_frame``: sample with (True) or without (False) the clean reference frame;
    None: each model folder's default."""
    if len(objects) < 2:
        raise ValueError("the 'other reference' baseline needs at least 2 objects")
    results: dict = {"objects": [o.key for o in objects], "conditions": {}, "samples": {}}
    results["cameras"] = "held-out quad" if objects[0].heldout else "training quad"
    results["reference_frame"] = {None: "model default", True: "with", False: "without"}[
        reference_frame
    ]
    for condition in CONDITIONS:
        per_object, samples = [], []
        for index, obj in enumerate(objects):
            net = base_model if condition == "untrained" else model
            other = objects[(index + 1) % len(objects)]
            ref = other.reference_rgb if condition == "other reference" else obj.reference_rgb
            rotate = 1 if condition == "cameras rotated" else 0
            scores: dict[str, list[float]] = {"psnr": [], "iou": []}
            for seed in seeds:
                images = sample_condition(
                    net, obj, ref, rotate, seed + index, steps, guidance, reference_frame
                )
                if seed == seeds[0]:
                    samples.append(images)
                for name, values in view_scores(images, obj.views).items():
                    scores[name].append(values)
            per_object.append({k: np.mean(v, axis=0).tolist() for k, v in scores.items()})
        results["conditions"][condition] = {
            "per_object": per_object,
            "psnr": float(np.mean([o["psnr"] for o in per_object])),
            "iou": float(np.mean([o["iou"] for o in per_object])),
        }
        results["samples"][condition] = samples
    trained = results["conditions"]["trained"]
    results["margins"] = {
        name: {
            "psnr_db": trained["psnr"] - scores["psnr"],
            "iou": trained["iou"] - scores["iou"],
        }
        for name, scores in results["conditions"].items()
        if name != "trained"
    }
    return results


def _tile(image: torch.Tensor, scale: int) -> np.ndarray:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.kron(array, np.ones((scale, scale, 1), dtype=np.uint8))


def views_figure(results: dict, objects: list[GroundTruth], dest: Path, scale: int = 3) -> Path:
    """Rows per object: [reference | ground truth x4], then one row per condition; gaps white."""
    from PIL import ImageDraw

    side = objects[0].views.shape[-1] * scale
    label_w, gap = 120, 4
    rows = []
    for index, obj in enumerate(objects):
        rows.append(("ground truth", obj.key, [obj.reference_rgb, *obj.views_rgb]))
        for condition in CONDITIONS:
            scores = results["conditions"][condition]["per_object"][index]
            text = f"psnr {np.mean(scores['psnr']):.1f} iou {np.mean(scores['iou']):.2f}"
            rows.append((condition, text, [None, *results["samples"][condition][index]]))
    width = label_w + 5 * (side + gap)
    canvas = Image.new("RGB", (width, len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (title, text, images) in enumerate(rows):
        top = r * (side + gap)
        draw.text((4, top + 4), title, fill="black")
        draw.text((4, top + 18), text, fill=(90, 90, 90))
        for c, image in enumerate(images):
            if image is not None:
                canvas.paste(
                    Image.fromarray(_tile(image, scale)), (label_w + c * (side + gap), top)
                )
    dest.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(dest)
    return dest


def save_strip(images: torch.Tensor, dest: Path) -> Path:
    """``[V,3,H,W]`` in [0,1] -> one PNG row at native resolution."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_tile(torch.cat(list(images), dim=-1), 1)).save(dest)
    return dest


def summary_lines(results: dict) -> list[str]:
    frame = results.get("reference_frame", "model default")
    lines = [f"at a {results.get('cameras', 'training quad')}, reference frame: {frame}"]
    lines.append(f"{'condition':18s} {'PSNR dB':>8s} {'sil. IoU':>8s}")
    for name, scores in results["conditions"].items():
        lines.append(f"{name:18s} {scores['psnr']:8.2f} {scores['iou']:8.3f}")
    for name, margin in results["margins"].items():
        lines.append(
            f"trained - {name}: {margin['psnr_db']:+.2f} dB PSNR, {margin['iou']:+.3f} IoU"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained model folder")
    parser.add_argument("--base-model", required=True, help="the model training started from")
    parser.add_argument("--shards", nargs="+", required=True, help="shards of the objects")
    parser.add_argument("--objects", nargs="*", help="object keys (default: all)")
    parser.add_argument("--out", required=True, help="folder for scores.json and views.png")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale")
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds averaged")
    parser.add_argument(
        "--quads",
        choices=["training", "heldout"],
        default="training",
        help="score at each object's first training quad or first held-out quad",
    )
    parser.add_argument(
        "--reference-frame",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="the clean reference frame: the model folder's default, on, off, or both "
        "(auto, then off: scores.json without_reference_frame)",
    )
    args = parser.parse_args(argv)
    objects = load_ground_truth(
        args.shards, args.resolution, args.objects or None, heldout=args.quads == "heldout"
    )
    model, base = load_model(args.model).eval(), load_model(args.base_model).eval()
    seeds = tuple(range(0, 1000 * args.seeds, 1000))
    frame = {"auto": None, "on": True, "off": False, "both": None}[args.reference_frame]
    results = score_conditions(model, base, objects, args.steps, args.guidance, seeds, frame)
    out = Path(args.out)
    if args.reference_frame == "both":
        free = score_conditions(model, base, objects, args.steps, args.guidance, seeds, False)
        views_figure(free, objects, out / "views_without_reference.png")
        for obj, images in zip(objects, free["samples"]["trained"]):
            save_strip(images, out / "views" / f"{obj.key}_trained_without_reference.png")
        results["without_reference_frame"] = {k: v for k, v in free.items() if k != "samples"}
        print("\n".join(summary_lines(free)))
    figure = views_figure(results, objects, out / "views.png")
    for condition, per_object in results["samples"].items():
        for obj, images in zip(objects, per_object):
            save_strip(images, out / "views" / f"{obj.key}_{condition.replace(' ', '_')}.png")
        for obj in objects:
            save_strip(obj.views_rgb, out / "views" / f"{obj.key}_ground_truth.png")
    saved = {k: v for k, v in results.items() if k != "samples"}
    (out / "scores.json").write_text(json.dumps(saved, indent=2) + "\n")
    print("\n".join(summary_lines(results)))
    print(f"wrote {out / 'scores.json'} and {figure}")


if __name__ == "__main__":
    main()

"""An SDS object scored at held-out ground-truth views, beside its controls and baselines.

``python -m evaluation.sds_gt_score --field OBJECT_FOLDER --shards SHARDS --out scores.json
[--photometric-steps N]``

The field of a finished evaluation (``field.pt`` of ``evaluation.run``) is rendered at the cameras
of the object's held-out quadruples (``heldout_quads`` of its meta.json; shards without them: its
last training quadruple, recorded as ``"heldout": false``) and scored there with the conditions of
``evaluation.controls``: ``sds``, ``initial blob``, ``opaque sphere``, ``photometric fit`` (with
``--photometric-steps``) and, for the coloured cube, ``analytic object``. Each condition has
``mean_iou`` (silhouette), ``fg_psnr`` (dB over the object's pixels), ``mean_psnr`` (whole image on
white) and, for the cube, ``faces_correct`` of ``faces_seen``; ``margins`` give the SDS field's lead
over the blob and the sphere. A strip of renders per condition is saved beside the scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evaluation.config import Cfg
from evaluation.controls import score_conditions
from evaluation.multiview_score import save_strip
from evaluation.scores3d import load_views, read_object, split_views
from evaluation.sds import load_checkpoint

FIELD = "field.pt"


def load_object_field(object_folder: Path):
    """The SDS object of an ``evaluation.run`` object folder: its config and field state (CPU)."""
    path = object_folder / FIELD
    cfg = Cfg(torch.load(path, map_location="cpu", weights_only=True)["config"])
    state, _ = load_checkpoint(path, cfg, torch.device("cpu"))
    return cfg, state


def score_sds(
    object_folder: Path,
    shards: list[str],
    key: str | None = None,
    photometric_steps: int = 0,
    progress: bool = False,
) -> dict:
    """Scores of the SDS field in ``object_folder`` and of the other conditions (module doc)."""
    cfg, state = load_object_field(object_folder)
    key = key or object_folder.name
    sample = read_object(shards, key)
    fit_views, scored, heldout = split_views(sample)
    size = int(cfg.export.resolution)
    truth = load_views(sample, scored, size)
    fit = load_views(sample, [i for i in fit_views if i not in scored], size)
    conditions, renders = score_conditions(
        cfg, state, fit, truth, photometric_steps, progress=progress
    )
    results: dict = {
        "object": key,
        "sds_steps": state.step,
        "scored_views": scored,
        "heldout": heldout,
        "fit_views": fit.indices,
        **{name: _summary(scores) for name, scores in conditions.items()},
    }
    results["margins"] = {
        f"sds - {base}": {
            "iou": results["sds"]["mean_iou"] - results[base]["mean_iou"],
            "fg_psnr_db": results["sds"]["fg_psnr"] - results[base]["fg_psnr"],
        }
        for base in ("initial blob", "opaque sphere")
    }
    results["_renders"] = {"ground truth": truth.rgb, **renders}
    return results


def _summary(scores: dict) -> dict:
    """A condition's entry: the means first (``fg_psnr`` is the mean foreground PSNR)."""
    out = {"mean_iou": scores["mean_iou"], "fg_psnr": scores["mean_fg_psnr"]}
    out["mean_psnr"] = scores["mean_psnr"]
    out.update({k: v for k, v in scores.items() if not k.startswith("mean_")})
    return out


def summary_lines(results: dict) -> list[str]:
    where = "held-out" if results["heldout"] else "training (no held-out quadruple)"
    lines = [f"{results['object']} at {len(results['scored_views'])} {where} views:"]
    lines.append(f"  {'condition':16s} {'IoU':>6s} {'fg PSNR':>8s} {'PSNR':>6s}  faces")
    for name, entry in results.items():
        if isinstance(entry, dict) and "mean_iou" in entry:
            faces = (
                f"{entry['faces_correct']}/{entry['faces_seen']}" if "faces_seen" in entry else ""
            )
            lines.append(
                f"  {name:16s} {entry['mean_iou']:6.3f} {entry['fg_psnr']:8.2f} "
                f"{entry['mean_psnr']:6.2f}  {faces}"
            )
    for name, margin in results["margins"].items():
        lines.append(f"  {name}: {margin['iou']:+.3f} IoU, {margin['fg_psnr_db']:+.2f} dB fg")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--field", required=True, help="object folder of evaluation.run")
    parser.add_argument("--shards", nargs="+", required=True, help="shards holding the object")
    parser.add_argument("--out", required=True, help="scores JSON to write")
    parser.add_argument(
        "--photometric-steps",
        type=int,
        default=0,
        help="steps of the photometric fit (the ceiling; 0: not run)",
    )
    args = parser.parse_args(argv)
    results = score_sds(
        Path(args.field), args.shards, photometric_steps=args.photometric_steps, progress=True
    )
    out = Path(args.out)
    for name, renders in results.pop("_renders").items():
        save_strip(renders, out.parent / f"{out.stem}_{name.replace(' ', '_')}.png")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(summary_lines(results)))


if __name__ == "__main__":
    main()

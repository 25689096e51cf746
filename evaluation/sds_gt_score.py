"""An SDS object scored at its ground-truth poses, against the initial blob as baseline.

``python -m evaluation.sds_gt_score --field OBJECT_FOLDER --shards SHARDS --out scores.json``

The field of a finished evaluation (``field.pt`` of ``evaluation.run``) is rendered at the cameras
of the object's first azimuth-orthogonal quadruple (elevation, azimuths, fov and distance of its
renders) and compared with those renders: silhouette IoU (rendered alpha against the render's
alpha, both > 0.5) and PSNR on white. The same is done for the field SDS starts from (the blob of
``field.init``, same config and seed): an SDS result that converged to the object beats it; one
whose cameras disagree with the prior's (a rotated or mirrored convention) does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evaluation.config import Cfg
from evaluation.export import render_cameras
from evaluation.field import Field
from evaluation.multiview_score import GroundTruth, load_ground_truth, save_strip
from evaluation.sds import build_occupancy, load_checkpoint
from evaluation.views import CameraBatch
from models.shards.images import BACKGROUNDS, composite

FIELD = "field.pt"


def gt_cameras(obj: GroundTruth) -> CameraBatch:
    return CameraBatch(
        torch.full((len(obj.azimuths_deg),), obj.elevation_deg),
        torch.tensor(obj.azimuths_deg),
        torch.tensor(obj.fov_deg),
        torch.tensor(obj.distance),
    )


def field_scores(field, occupancy, cfg, obj: GroundTruth) -> tuple[dict, torch.Tensor]:
    """Per-view IoU and PSNR of the field's renders at the GT cameras, and the renders
    ``[V,3,H,W]`` on white."""
    size = obj.views.shape[-1]
    out = render_cameras(field, occupancy, gt_cameras(obj), size, cfg, BACKGROUNDS["white"])
    rgb = out["rgb"].permute(0, 3, 1, 2).clamp(0, 1)
    alpha = out["alpha"].reshape(len(rgb), size, size)
    truth = composite(obj.views, BACKGROUNDS["white"])
    mse = (rgb - truth).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    a, b = alpha > 0.5, obj.views[:, 3] > 0.5
    iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)
    return {"psnr": (10 * torch.log10(1 / mse)).tolist(), "iou": iou.float().tolist()}, rgb


def score_sds(object_folder: Path, shards: list[str], key: str | None = None) -> dict:
    """Scores of the SDS field in ``object_folder`` and of the initial blob at the GT poses."""
    path = object_folder / FIELD
    cfg = Cfg(torch.load(path, map_location="cpu", weights_only=True)["config"])
    state, _ = load_checkpoint(path, cfg, torch.device("cpu"))
    key = key or object_folder.name
    obj = load_ground_truth(shards, _resolution(cfg), [key])[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        blob = Field(cfg.field)
    results = {"object": key, "sds_steps": state.step}
    renders = {}
    for name, field, occupancy in (
        ("sds", state.field, state.occupancy),
        ("initial blob", blob, build_occupancy(cfg)),
    ):
        scores, renders[name] = field_scores(field.eval(), occupancy, cfg, obj)
        results[name] = {**scores, "mean_psnr": sum(scores["psnr"]) / len(scores["psnr"]),
                         "mean_iou": sum(scores["iou"]) / len(scores["iou"])}  # fmt: skip
    results["margins"] = {
        "iou": results["sds"]["mean_iou"] - results["initial blob"]["mean_iou"],
        "psnr_db": results["sds"]["mean_psnr"] - results["initial blob"]["mean_psnr"],
    }
    results["_renders"] = renders
    return results


def _resolution(cfg) -> int:
    return int(cfg.export.resolution)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--field", required=True, help="object folder of evaluation.run")
    parser.add_argument("--shards", nargs="+", required=True, help="shards holding the object")
    parser.add_argument("--out", required=True, help="scores JSON to write")
    args = parser.parse_args(argv)
    results = score_sds(Path(args.field), args.shards)
    out = Path(args.out)
    for name, renders in results.pop("_renders").items():
        save_strip(renders, out.parent / f"{out.stem}_{name.replace(' ', '_')}.png")
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("sds", "initial blob"):
        print(
            f"{name:13s} IoU {results[name]['mean_iou']:.3f}  PSNR {results[name]['mean_psnr']:.2f} dB"
        )
    print(
        f"SDS - blob: {results['margins']['iou']:+.3f} IoU, {results['margins']['psnr_db']:+.2f} dB"
    )


if __name__ == "__main__":
    main()

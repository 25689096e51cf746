"""What the prior paints over the truth: a ceiling for SDS that no SDS setting can pass.

``python -m evaluation.prior_at_truth --field OBJECT_FOLDER --shards SHARDS [--out prior.json]``

SDS moves the renders towards the x0 the prior paints over them (``sds.loss: x0_recon``). Here
the renders are the object's ground-truth views at its held-out cameras (as
``evaluation.sds_gt_score`` scores them), at the model's image size: their latents are noised at
each timestep and denoised once, with the guidance the SDS run ends on and its reference
(``config.yaml`` and ``reference.png`` of the object folder). The foreground PSNR of the decoded
targets against the truth says how far the prior pulls a perfect object away from itself. When
it is well below the VAE's round trip, the prior, not SDS, limits the result: an object SDS
made scores about what the targets at its timesteps score.

Written per timestep: ``fg_psnr`` of one target (the mean over ``draws`` noise draws) and
``fg_psnr_of_mean`` (the targets averaged first, as SDS averages them over steps); and
``vae_round_trip_fg_psnr``, the truth encoded and decoded.

A high ceiling is necessary, not sufficient: SDS stops where the prior paints its renders back
as they are. So, when the folder holds the SDS object (``field.pt``), ``sds_object`` asks the
same of its renders at the same cameras: ``fg_psnr`` (the renders against the truth) and per
timestep the targets painted over them against the truth (``fg_psnr``) and against the renders
(``fg_psnr_to_renders``). Targets much nearer the renders than the truth, with the renders far
from the truth, mean SDS sits at a wrong object that the prior accepts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from PIL import Image

from evaluation.config import Cfg
from evaluation.evaluate import load_frozen_model
from evaluation.export import render_cameras
from evaluation.guidance import MultiViewGuidance
from evaluation.inputs import to_rgba_tensor
from evaluation.scores3d import WHITE, GtViews, fg_psnr, load_views, read_object, split_views
from evaluation.sds_gt_score import FIELD, load_object_field

TIMESTEPS = (50, 150, 300, 500, 800)


def _fg_psnr(images: torch.Tensor, truth: GtViews, against: torch.Tensor | None = None) -> float:
    """Mean foreground PSNR of ``[V,H,W,3]`` images against ``truth`` (as the SDS scores), or
    against other images ``against [V,H,W,3]`` over the truth's foreground."""
    target = truth.rgb if against is None else against.permute(0, 3, 1, 2)
    return float(fg_psnr(images.permute(0, 3, 1, 2), target, truth.views[:, 3] > 0.5).mean())


def prior_at_truth(
    model,
    sds_cfg,
    reference: torch.Tensor,
    truth: GtViews,
    timesteps: tuple[int, ...] = TIMESTEPS,
    draws: int = 8,
    seed: int = 0,
    scale: float | None = None,
    renders: torch.Tensor | None = None,
) -> dict:
    """The targets ``model`` paints over ``truth`` (views at ``sds_cfg.image_size``, in quads)
    given the RGBA ``reference [4,S,S]``, under guidance ``scale`` (default: where the run's
    guidance schedule ends, the scale its last steps paint with); with ``renders [V,S,S,3]``
    (the SDS object at the truth's cameras) also the targets it paints over them (``sds_object``);
    see the module doc."""
    device = next(model.parameters()).device
    guidance = MultiViewGuidance(model, sds_cfg, 4, device)
    scale = guidance.final_guidance() if scale is None else float(scale)
    size = int(sds_cfg.image_size)
    if truth.views.shape[-1] != size:
        raise ValueError(f"truth views are {truth.views.shape[-1]} px, the model's size is {size}")
    generator = torch.Generator().manual_seed(seed)
    rgb = truth.rgb.permute(0, 2, 3, 1).to(device)
    camera = model.cameras(
        truth.cameras.elevation_deg, truth.cameras.azimuth_deg, truth.cameras.distance
    )
    with torch.no_grad():
        cond = model.encode_reference(reference[None].to(device))
        latents = guidance.encode(rgb, generator)
    results: dict = {
        "views": truth.indices,
        "image_size": size,
        "guidance_scale": scale,
        "draws": draws,
        "vae_round_trip_fg_psnr": _fg_psnr(guidance.decode(latents).cpu(), truth),
    }
    paint = (timesteps, draws, cond, camera, generator, scale, truth)  # shared by both objects
    results["timesteps"] = _painted(guidance, latents, *paint)
    if renders is not None:
        renders = renders.to(device)
        with torch.no_grad():
            object_latents = guidance.encode(renders, generator)
        results["sds_object"] = {
            "fg_psnr": _fg_psnr(renders.cpu(), truth),
            "timesteps": _painted(guidance, object_latents, *paint, renders.cpu()),
        }
    return results


def _painted(
    guidance, latents, timesteps, draws, cond, camera, generator, scale, truth, renders=None
) -> dict:
    """Per timestep: the decoded targets over ``latents`` against the truth (one target and the
    mean of ``draws``), and, given the ``renders`` they were painted over, against those."""
    out = {}
    for t in timesteps:
        painted = [
            guidance.decode(guidance.paint(latents, t, cond, camera, generator, scale)).cpu()
            for _ in range(draws)
        ]
        out[str(t)] = {
            "fg_psnr": sum(_fg_psnr(p, truth) for p in painted) / draws,
            "fg_psnr_of_mean": _fg_psnr(torch.stack(painted).mean(0), truth),
        }
        if renders is not None:
            out[str(t)]["fg_psnr_to_renders"] = (
                sum(_fg_psnr(p, truth, renders) for p in painted) / draws
            )
    return out


def check_object(
    object_folder: Path,
    shards: list[str],
    draws: int = 8,
    timesteps=TIMESTEPS,
    scale: float | None = None,
) -> dict:
    """``prior_at_truth`` with an SDS run's model, guidance settings and reference (``scale``
    overrides the guidance)."""
    cfg = Cfg(yaml.safe_load((object_folder / "config.yaml").read_text()))
    model = load_frozen_model(cfg, torch.device("cpu"))
    sample = read_object(shards, object_folder.name)
    _, scored, heldout = split_views(sample)
    truth = load_views(sample, scored, int(cfg.sds.image_size))
    reference = to_rgba_tensor(Image.open(object_folder / "reference.png"))
    renders = None
    if (object_folder / FIELD).is_file():  # the SDS object, rendered where the truth is
        field_cfg, state = load_object_field(object_folder)
        size = truth.views.shape[-1]
        out = render_cameras(
            state.field.eval(), state.occupancy, truth.cameras, size, field_cfg, WHITE
        )
        renders = out["rgb"].clamp(0, 1)
    results = prior_at_truth(
        model, cfg.sds, reference, truth, tuple(timesteps), draws, cfg.seed, scale, renders
    )
    return {"object": object_folder.name, "heldout": heldout, **results}


def summary_lines(results: dict) -> list[str]:
    lines = [
        f"{results['object']}: the prior's x0 targets over the true views "
        f"({results['image_size']} px, guidance {results['guidance_scale']:g}, "
        f"{results['draws']} draws)",
        f"  VAE round trip: fg PSNR {results['vae_round_trip_fg_psnr']:.2f} dB",
    ]
    for t, entry in results["timesteps"].items():
        lines.append(
            f"  t={t:>4s}: one target {entry['fg_psnr']:.2f} dB, "
            f"their mean {entry['fg_psnr_of_mean']:.2f} dB"
        )
    if "sds_object" in results:
        found = results["sds_object"]
        lines.append(
            f"  over the SDS object's renders ({found['fg_psnr']:.2f} dB against the truth), "
            "targets against the truth / against the renders:"
        )
        for t, entry in found["timesteps"].items():
            lines.append(
                f"  t={t:>4s}: {entry['fg_psnr']:.2f} dB / {entry['fg_psnr_to_renders']:.2f} dB"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--field", required=True, help="object folder of evaluation.run")
    parser.add_argument("--shards", nargs="+", required=True, help="shards holding the object")
    parser.add_argument("--out", default=None, help="JSON to write (default: only printed)")
    parser.add_argument("--draws", type=int, default=8, help="noise draws per timestep")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="of the 1000"
    )
    parser.add_argument(
        "--guidance", type=float, default=None, help="CFG scale (default: the run's final one)"
    )
    args = parser.parse_args(argv)
    results = check_object(Path(args.field), args.shards, args.draws, args.timesteps, args.guidance)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(summary_lines(results)))


if __name__ == "__main__":
    main()

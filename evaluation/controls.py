"""The 3D result beside its controls and baselines, at held-out ground-truth views.

Conditions, each rendered by the SDS renderer at the same held-out cameras and scored by
``evaluation.scores3d`` (silhouette IoU, foreground PSNR, per-face colours for the cube):

* ``sds``: the SDS field;
* ``initial blob``: the field SDS starts from (same config and seed) -- what SDS must improve on;
* ``opaque sphere``: an opaque ball about the origin, its radius the best silhouette IoU at the fit
  views and its colour their mean foreground colour: an SDS field that only became opaque scores
  about this;
* ``photometric fit``: the same field fitted by L2 to the fit views (``evaluation.photometric``):
  the ceiling of field + renderer;
* ``analytic object``: the true object as an analytic field (the coloured cube): the renderer's
  cameras against Blender's, no learning involved.
"""

from __future__ import annotations

import torch

from evaluation.analytic import AnalyticCube, OpaqueSphere
from evaluation.field import Field
from evaluation.photometric import fit_photometric
from evaluation.scores3d import GtViews, score_field
from evaluation.sds import build_occupancy

CONDITIONS = ("sds", "initial blob", "opaque sphere", "photometric fit", "analytic object")
ANALYTIC_OBJECTS = {"front_marker": AnalyticCube}  # objects with a known analytic shape
SPHERE_RADII = torch.linspace(0.2, 0.8, 25).tolist()


def initial_blob(cfg) -> Field:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        return Field(cfg.field)


def best_sphere(cfg, fit: GtViews) -> OpaqueSphere:
    """The opaque sphere of best mean IoU at the fit views, in their mean foreground colour."""
    fg = fit.views[:, 3] > 0.5
    colour = (fit.rgb * fg[:, None]).sum((0, 2, 3)) / fg.sum().clamp_min(1)
    small = fit.subset(list(range(min(len(fit.indices), 8))))
    best, best_iou = SPHERE_RADII[0], -1.0
    for radius in SPHERE_RADII:
        scores, _ = score_field(OpaqueSphere(radius, tuple(colour.tolist())), None, cfg, small)
        if scores["mean_iou"] > best_iou:
            best, best_iou = radius, scores["mean_iou"]
    return OpaqueSphere(best, tuple(colour.tolist()))


def score_conditions(
    cfg,
    sds_state,
    fit: GtViews,
    heldout: GtViews,
    photometric_steps: int,
    progress: bool = False,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Scores of every condition at the held-out views and their renders ``[V,3,H,W]``."""
    cube = heldout.key in ANALYTIC_OBJECTS
    fields = {
        "sds": (sds_state.field, sds_state.occupancy),
        "initial blob": (initial_blob(cfg), build_occupancy(cfg)),
        "opaque sphere": (best_sphere(cfg, fit), None),
    }
    if photometric_steps > 0:
        fitted = fit_photometric(cfg, fit, photometric_steps, progress=progress)
        fields["photometric fit"] = (fitted.field, fitted.occupancy)
    if cube:
        fields["analytic object"] = (ANALYTIC_OBJECTS[heldout.key](), None)
    results: dict = {}
    renders: dict[str, torch.Tensor] = {}
    for name, (field, occupancy) in fields.items():
        results[name], renders[name] = score_field(field, occupancy, cfg, heldout, cube=cube)
    if isinstance(fields["opaque sphere"][0], OpaqueSphere):
        results["opaque sphere"]["radius"] = fields["opaque sphere"][0].radius
    if photometric_steps > 0:
        results["photometric fit"]["steps"] = photometric_steps
    return results, renders

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

The analytic fields (sphere, cube) are marched finer than the learned ones (``ANALYTIC_MARCH``):
an analytic surface has no thickness, so a pixel's colour is read at the first sample inside,
up to one march step deep, where near an edge the nearest face is the neighbouring one. At the
demo's 64 samples per ray that painted the neighbours' colours a tenth of the way into every
face of the cube (fg PSNR 18.9 dB against Blender's views; 23.2 at 512, the rest is Blender's shading).
"""

from __future__ import annotations

import copy

import torch

from evaluation.analytic import AnalyticCube, OpaqueSphere
from evaluation.field import Field
from evaluation.photometric import fit_photometric
from evaluation.scores3d import GtViews, score_field
from evaluation.sds import build_occupancy

CONDITIONS = ("sds", "initial blob", "opaque sphere", "photometric fit", "analytic object")
ANALYTIC_OBJECTS = {"front_marker": AnalyticCube}  # objects with a known analytic shape
ANALYTIC_CONDITIONS = ("opaque sphere", "analytic object")
SPHERE_RADII = torch.linspace(0.2, 0.8, 25).tolist()
ANALYTIC_MARCH = 512  # samples per ray for the analytic fields (the recipe's; module doc)


def analytic_config(cfg):
    """``cfg`` with the march of the analytic fields: at least ``ANALYTIC_MARCH`` samples."""
    fine = copy.deepcopy(cfg)
    fine.renderer["samples_per_ray"] = max(int(cfg.renderer.samples_per_ray), ANALYTIC_MARCH)
    return fine


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
        sphere = OpaqueSphere(radius, tuple(colour.tolist()))
        scores, _ = score_field(sphere, None, cfg, small)  # the silhouette: the march is enough
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
        march = analytic_config(cfg) if name in ANALYTIC_CONDITIONS else cfg
        results[name], renders[name] = score_field(field, occupancy, march, heldout, cube=cube)
    if isinstance(fields["opaque sphere"][0], OpaqueSphere):
        results["opaque sphere"]["radius"] = fields["opaque sphere"][0].radius
    if photometric_steps > 0:
        results["photometric fit"]["steps"] = photometric_steps
    return results, renders

"""The photometric fit: the SDS field fitted by L2 to ground-truth views instead of to the prior.

Same field (``field.*``, the blob it starts from), renderer (``renderer.*``, occupancy grid,
stratified samples), optimiser (``optim.*``) and seed as SDS; only the loss differs: the mean
squared error of the rendered colour (albedo, on white) against the ground-truth views' pixels,
``rays_per_step`` pixels per step drawn at random from all views (as NeRF fits: every view
informs every step, at the cost of a 4-view SDS step at 32 px). It is the ceiling the SDS result is measured
against: if this fit does not recover the object, the field or the renderer cannot, whatever the
prior says.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from evaluation.field import Field
from evaluation.renderer import generate_rays, render_rays, render_settings
from evaluation.scores3d import GtViews
from evaluation.sds import (
    FieldState,
    build_occupancy,
    make_optimizer,
    sample_step_size,
    use_compile,
)


def fit_photometric(
    cfg,
    truth: GtViews,
    steps: int,
    rays_per_step: int = 4096,
    progress: bool = False,
) -> FieldState:
    """A field fitted to ``truth`` (its views at their cameras) for ``steps`` steps (CPU)."""
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(int(cfg.seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        field = Field(cfg.field)
    occupancy = build_occupancy(cfg)
    state = FieldState(field.to(device), occupancy)
    optimizer = make_optimizer(state.field, cfg.optim)
    settings = render_settings(cfg, device, stratified=True, compile=use_compile(cfg, device))
    target = truth.rgb.permute(0, 2, 3, 1).reshape(-1, 3)  # every pixel of every view
    origins, dirs = generate_rays(truth.cameras.c2w(), truth.cameras.fov_deg, truth.views.shape[-1])
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    count = min(rays_per_step, len(target))
    state.field.train()
    for step in tqdm(range(steps), desc="photometric fit", disable=not progress, leave=False):
        if occupancy is not None and step % cfg.renderer.occupancy.update_every == 0:
            occupancy.update(state.field, sample_step_size(cfg), generator)
        picks = torch.randint(0, len(target), (count,), generator=generator)
        out = render_rays(
            state.field, origins[picks], dirs[picks], cfg.field.radius, settings, occupancy,
            generator=generator,
        )  # fmt: skip
        loss = (out["rgb"] - target[picks]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step = step + 1
    state.field.eval()
    return state

"""The SDS optimisation of one object: schedules, the step, checkpoints to resume and re-export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.field import Field
from evaluation.guidance import MultiViewGuidance, _no_timer, annealed_fraction
from evaluation.renderer import OccupancyGrid, RenderSettings, render_views
from evaluation.views import sample_lights, sample_sds_cameras


def phase(sds_cfg, step: int) -> tuple[int, int]:
    """(render resolution, views per step) at ``step`` (the 64 -> 256 px schedule)."""
    index = sum(step >= m for m in sds_cfg.milestones)
    return sds_cfg.resolution[index], sds_cfg.batch_views[index]


def orientation_weight(sds_cfg, step: int) -> float:
    low, high = sds_cfg.lambda_orient
    return annealed_fraction(step, low, high, sds_cfg.orient_ramp_steps)


def step_shading(material_cfg, step: int, generator: torch.Generator) -> tuple[str, float]:
    """(shading mode, ambient share) for one step: albedo in albedo mode and during the
    ambient-only warm-up, then diffuse or (with ``textureless_prob``) textureless."""
    if material_cfg.mode == "albedo" or step < material_cfg.ambient_only_steps:
        return "albedo", 1.0
    ambient = (
        torch.rand((), generator=generator).item()
        if material_cfg.soft_shading
        else material_cfg.ambient
    )
    textureless = torch.rand((), generator=generator).item() < material_cfg.textureless_prob
    return ("textureless" if textureless else "diffuse"), ambient


def build_occupancy(cfg) -> OccupancyGrid | None:
    occ = cfg.renderer.occupancy
    if not occ.enabled:
        return None
    return OccupancyGrid(cfg.field.radius, occ.resolution, occ.threshold, occ.decay, occ.dilate)


def sample_step_size(cfg) -> float:
    """Typical distance between samples along a ray through the cube (for occupancy alphas)."""
    return 2 * cfg.field.radius * 3**0.5 / cfg.renderer.samples_per_ray


@dataclass
class FieldState:
    field: Field
    occupancy: OccupancyGrid | None
    step: int = 0


def save_checkpoint(path: Path, state: FieldState, optimizer, generator, cfg) -> None:
    """Field, occupancy, optimizer, RNG and config: enough to resume or to re-export."""
    payload = {
        "field": state.field.state_dict(),
        "occupancy": None if state.occupancy is None else state.occupancy.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "generator": None if generator is None else generator.get_state(),
        "step": state.step,
        "config": cfg.to_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load_checkpoint(path: Path, cfg, device: torch.device) -> tuple[FieldState, dict]:
    """Rebuild the field (and occupancy) from a checkpoint; returns the raw payload too."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    field = Field(cfg.field)
    field.load_state_dict(payload["field"])
    occupancy = build_occupancy(cfg)
    if occupancy is not None and payload["occupancy"] is not None:
        occupancy.load_state_dict(payload["occupancy"])
    state = FieldState(field.to(device), None if occupancy is None else occupancy.to(device))
    state.step = int(payload["step"])
    return state, payload


def make_optimizer(field: Field, optim_cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        field.param_groups(optim_cfg.lr_grid, optim_cfg.lr_mlp),
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )


def sds_step(
    state: FieldState,
    guidance: MultiViewGuidance,
    cond: torch.Tensor,
    cfg,
    step: int,
    generator: torch.Generator,
    camera_input,
    timer=_no_timer,
) -> dict[str, torch.Tensor]:
    """One optimisation step's loss (not yet backpropagated). ``camera_input`` turns a
    :class:`CameraBatch` into the model's camera vectors (the model's own convention);
    ``timer(name)`` wraps the render, VAE and UNet parts (for the benchmark)."""
    device = cond.device
    resolution, batch_views = phase(cfg.sds, step)
    cameras = sample_sds_cameras(generator, cfg.cameras, batch_views)
    c2w = cameras.c2w().to(device)
    shading, ambient = step_shading(cfg.material, step, generator)
    lights = None
    if shading != "albedo":
        lights = sample_lights(
            generator, c2w, cfg.material.light_perturb, tuple(cfg.material.light_distance)
        )
    orient_weight = orientation_weight(cfg.sds, step)
    settings = RenderSettings(
        samples_per_ray=cfg.renderer.samples_per_ray,
        stratified=True,
        background=tuple(cfg.renderer.background),
        shading=shading,
        ambient=ambient,
        need_normals=orient_weight > 0,
    )
    with timer("render"):
        out = render_views(
            state.field,
            c2w,
            cameras.fov_deg.to(device),
            resolution,
            cfg.field.radius,
            settings,
            state.occupancy,
            lights,
            generator,
        )
    camera = camera_input(cameras).to(device)
    guide = guidance(out["rgb"], camera, cond, step, generator, timer)
    loss = guide["loss"]
    terms = {"sds": guide["loss"].detach(), "t": guide["t"]}
    if "orient" in out:
        orient = out["orient"] / out["orient_rays"].clamp_min(1)
        loss = loss + orient_weight * orient
        terms["orient"] = orient.detach()
    if cfg.sds.lambda_opaque > 0:
        alpha = out["alpha"].clamp(1e-4, 1 - 1e-4)
        opaque = F.binary_cross_entropy(alpha, alpha.detach().round())
        loss = loss + cfg.sds.lambda_opaque * opaque
        terms["opaque"] = opaque.detach()
    terms["loss"] = loss
    return terms


def optimise(
    guidance: MultiViewGuidance,
    cond: torch.Tensor,
    cfg,
    checkpoint: Path,
    camera_input,
    progress: bool = True,
    description: str = "sds",
) -> FieldState:
    """Run (or resume from ``checkpoint``) the SDS optimisation; returns the trained field."""
    device = cond.device
    generator = torch.Generator().manual_seed(int(cfg.seed))
    if checkpoint.exists():
        state, payload = load_checkpoint(checkpoint, cfg, device)
        optimizer = make_optimizer(state.field, cfg.optim)
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if payload["generator"] is not None:
            generator.set_state(payload["generator"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            field = Field(cfg.field)
        occupancy = build_occupancy(cfg)
        state = FieldState(field.to(device), None if occupancy is None else occupancy.to(device))
        optimizer = make_optimizer(state.field, cfg.optim)
    state.field.train()
    total = int(cfg.sds.steps)
    bar = tqdm(total=total, initial=state.step, desc=description, disable=not progress, leave=False)
    while state.step < total:
        step = state.step
        occ_cfg = cfg.renderer.occupancy
        if state.occupancy is not None and step % occ_cfg.update_every == 0:
            state.occupancy.update(state.field, sample_step_size(cfg), generator)
        terms = sds_step(state, guidance, cond, cfg, step, generator, camera_input)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        state.step += 1
        bar.update(1)
        bar.set_postfix({k: f"{float(v):.4g}" for k, v in terms.items() if k != "loss"})
        if state.step % cfg.sds.checkpoint_every == 0 or state.step == total:
            save_checkpoint(checkpoint, state, optimizer, generator, cfg)
    bar.close()
    state.field.eval()
    return state

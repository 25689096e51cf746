"""The SDS optimisation of one object: schedules, the step, checkpoints to resume and re-export."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.field import Field
from evaluation.guidance import MultiViewGuidance, _no_timer
from evaluation.renderer import OccupancyGrid, render_settings, render_views, step_size
from evaluation.schedules import albedo_finish_start, annealed_fraction, at_step, lr_factor
from evaluation.smoothness import smoothness_terms, surface_points
from evaluation.views import sample_lights, sample_sds_cameras

LOG = "sds_log.jsonl"  # per logging step: the loss terms and the gradient norm of each


def phase(sds_cfg, step: int) -> tuple[int, int]:
    """(render resolution, views per step) at ``step`` (the 64 -> 256 px schedule)."""
    index = sum(step >= at_step(m, int(sds_cfg.steps)) for m in sds_cfg.milestones)
    return sds_cfg.resolution[index], sds_cfg.batch_views[index]


def orientation_weight(sds_cfg, step: int) -> float:
    low, high = sds_cfg.lambda_orient
    ramp = at_step(sds_cfg.orient_ramp_steps, int(sds_cfg.steps))
    return annealed_fraction(step, low, high, ramp)


def step_shading(
    material_cfg, step: int, generator: torch.Generator, total: int
) -> tuple[str, float]:
    """(shading mode, ambient share) for one step, threestudio's diffuse-with-point-light
    material: albedo during the ambient-only warm-up; then albedo with probability
    ``1 - diffuse_prob``, else textureless with ``textureless_prob``, else diffuse. Soft shading
    draws the diffuse share uniformly per step (ambient = 1 - diffuse). The last
    ``albedo_finish_steps`` are albedo again (shading shapes the geometry, the finish restores
    the colours that textureless and dark steps wash out). Draws come from the CPU generator: no
    device sync. ``total``: ``sds.steps`` (warm-up and finish may be fractions of it)."""
    warm_up = step < at_step(material_cfg.ambient_only_steps, total)
    if material_cfg.mode == "albedo" or warm_up or in_albedo_finish(material_cfg, step, total):
        return "albedo", 1.0
    draws = torch.rand(3, generator=generator).tolist()
    if draws[0] > material_cfg.diffuse_prob:
        return "albedo", 1.0
    ambient = 1.0 - draws[2] if material_cfg.soft_shading else material_cfg.ambient
    textureless = draws[1] < material_cfg.textureless_prob
    return ("textureless" if textureless else "diffuse"), ambient


def in_albedo_finish(material_cfg, step: int, total: int) -> bool:
    """Whether ``step`` is in the albedo-only finish (never without one, even past ``total``)."""
    start = albedo_finish_start(material_cfg, total)
    return start is not None and step >= start


def build_occupancy(cfg) -> OccupancyGrid | None:
    occ = cfg.renderer.occupancy
    if not occ.enabled:
        return None
    return OccupancyGrid(cfg.field.radius, occ.resolution, occ.threshold, occ.decay, occ.dilate)


def sample_step_size(cfg) -> float:
    """The renderer's march step (nerfacc's ``render_step_size``; also the occupancy alphas')."""
    return step_size(cfg.field.radius, cfg.renderer.samples_per_ray)


def use_compile(cfg, device: torch.device) -> bool:
    """``speed.compile``: auto compiles on CUDA, and on CPU when a C++ compiler is present."""
    value = cfg.speed.compile
    if value == "auto":
        return device.type == "cuda" or shutil.which(os.environ.get("CXX", "g++")) is not None
    return bool(value)


@dataclass
class FieldState:
    field: Field
    occupancy: OccupancyGrid | None
    step: int = 0


def save_checkpoint(
    path: Path, state: FieldState, optimizer, generator, cfg, device_generator=None
) -> None:
    """Field, occupancy, optimizer, RNG (CPU and render device) and config: enough to resume or
    to re-export."""
    payload = {
        "device_generator": None if device_generator is None else device_generator.get_state(),
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
    if any(key.startswith("geometry.") for key in payload["field"]):
        field.freeze_geometry()  # saved during a texture finish
    field.load_state_dict(payload["field"])
    occupancy = build_occupancy(cfg)
    if occupancy is not None and payload["occupancy"] is not None:
        occupancy.load_state_dict(payload["occupancy"])
    state = FieldState(field.to(device), None if occupancy is None else occupancy.to(device))
    state.step = int(payload["step"])
    return state, payload


def make_optimizer(field: Field, optim_cfg) -> torch.optim.Optimizer:
    cuda = field.encoding.table.is_cuda
    return torch.optim.AdamW(
        field.param_groups(optim_cfg.lr_grid, optim_cfg.lr_mlp),
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        fused=cuda or None,  # one kernel for all parameters on CUDA (same update)
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
    device_generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step's loss (not yet backpropagated). ``camera_input`` turns a
    :class:`CameraBatch` into the model's camera vectors (the model's own convention);
    ``timer(name)`` wraps the render, VAE and UNet parts (for the benchmark). ``generator``
    (CPU) draws cameras, shading and timesteps; ``device_generator`` (on the render device;
    default: ``generator`` when that is the device) draws the ray stratification. Nothing here
    reads a value back from the device."""
    device = cond.device
    resolution, batch_views = phase(cfg.sds, step)
    cameras = sample_sds_cameras(generator, cfg.cameras, batch_views)
    c2w = cameras.c2w().to(device)
    shading, ambient = step_shading(cfg.material, step, generator, int(cfg.sds.steps))
    # Lights are drawn every step (one per view group), whatever the shading, as the released
    # sampler does; the shading mode decides whether they are used.
    lights = sample_lights(
        generator,
        c2w,
        cfg.material.light_perturb,
        tuple(cfg.material.light_distance),
        cfg.cameras.views,
    )
    orient_weight = orientation_weight(cfg.sds, step)
    settings = render_settings(
        cfg,
        device,
        stratified=True,
        shading=shading,
        ambient=ambient,
        # a frozen shape takes no gradient: its normals would feed nothing
        need_normals=orient_weight > 0 and state.field.geometry is None,
        compile=use_compile(cfg, device),
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
            device_generator or generator,
        )
    camera = camera_input(cameras).to(device)
    guide = guidance(out["rgb"], camera, cond, step, generator, timer)
    parts = {"sds": guide["loss"]}  # the weighted terms of the loss
    terms = {
        "sds": guide["loss"].detach(),
        "t": guide["t"],
        "trunc": out["truncated"],
        "drop": out["dropped"],
    }
    if "orient" in out:
        orient = out["orient"] / out["orient_rays"].clamp_min(1)
        parts["orient"] = orient_weight * orient_scale(cfg.sds, guide["latents"]) * orient
        terms["orient"] = orient.detach()
    smooth = cfg.sds.smoothness
    weights = {"albedo_smooth": smooth.lambda_albedo, "normal_smooth": smooth.lambda_normal}
    if any(w > 0 for w in weights.values()):
        # its own generator, seeded by the step: turning the term on leaves the cameras',
        # timesteps' and rays' draws as they were, and a resumed run draws the same points
        draws = torch.Generator(device).manual_seed(int(cfg.seed) * 1_000_003 + step)
        points, weight = surface_points(
            c2w, cameras.fov_deg, out["depth"], out["alpha"], int(smooth.points), draws
        )
        found = smoothness_terms(
            state.field, points, weight, float(smooth.eps), draws,
            normals=smooth.lambda_normal > 0 and state.field.geometry is None,
        )  # fmt: skip
        for name, value in found.items():
            if weights[name] > 0:
                parts[name] = weights[name] * value
                terms[name] = value.detach()
    if cfg.sds.lambda_opaque > 0:
        alpha = out["alpha"].clamp(1e-4, 1 - 1e-4)
        opaque = F.binary_cross_entropy(alpha, alpha.detach().round())
        parts["opaque"] = cfg.sds.lambda_opaque * opaque
        terms["opaque"] = opaque.detach()
    terms["loss"] = sum(parts.values())
    terms["_parts"] = parts
    terms["_preview"] = (out["rgb"].detach(), guide["target"])
    return terms


def orient_scale(sds_cfg, latents: torch.Tensor) -> float:
    """``lambda_orient`` was set against the SDS term of ``orient_latent_side``-sided latents;
    the SDS term sums over latent cells, so at other latent sizes the weight follows the cell
    count (an 8x8 latent's SDS term is 16x weaker than a 32x32 one's). 0: no scaling."""
    side = sds_cfg.get("orient_latent_side", 0)
    if not side:
        return 1.0
    return latents.shape[-2] * latents.shape[-1] / float(side * side)


def grad_norms(parts: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, float]:
    """The gradient norm each weighted loss term puts on the field's parameters (how the terms
    balance); costs one extra backward per term, so it runs on logging steps only."""
    norms = {}
    for name, value in parts.items():
        if not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        total = sum(g.pow(2).sum() for g in grads if g is not None)
        norms[f"grad_{name}"] = float(torch.as_tensor(total).sqrt())
    return norms


def save_preview(guidance: MultiViewGuidance, preview, path: Path) -> None:
    """The step's renders (top row, at the model's size) above the decoded x0 the prior paints
    for them (bottom row): what SDS is distilling."""
    from PIL import Image

    rgb, target = preview
    painted = guidance.decode(target).cpu()
    size = painted.shape[1]
    renders = rgb.permute(0, 3, 1, 2).float().cpu()
    renders = F.interpolate(renders, (size, size), mode="bilinear", antialias=True)
    rows = [torch.cat(list(renders.permute(0, 2, 3, 1)), 1), torch.cat(list(painted), 1)]
    image = (torch.cat(rows, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def set_lr(optimizer: torch.optim.Optimizer, field: Field, optim_cfg, factor: float) -> None:
    """The field's groups' rates from the config times ``factor`` (from the config, not the
    optimizer, so a resumed run continues the same schedule)."""
    groups = field.param_groups(optim_cfg.lr_grid, optim_cfg.lr_mlp)
    base = {group["name"]: group["lr"] for group in groups}
    for group in optimizer.param_groups:
        group["lr"] = base[group["name"]] * factor


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
    # The ray stratification is drawn on the render device (no host-made tensor per step).
    device_generator = (
        generator if device.type == "cpu" else torch.Generator(device).manual_seed(int(cfg.seed))
    )
    if checkpoint.exists():
        state, payload = load_checkpoint(checkpoint, cfg, device)
        optimizer = make_optimizer(state.field, cfg.optim)
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if payload["generator"] is not None:
            generator.set_state(payload["generator"])
        if payload.get("device_generator") is not None and device_generator is not generator:
            device_generator.set_state(payload["device_generator"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            field = Field(cfg.field)
        occupancy = build_occupancy(cfg)
        state = FieldState(field.to(device), None if occupancy is None else occupancy.to(device))
        optimizer = make_optimizer(state.field, cfg.optim)
    state.field.train()
    total = int(cfg.sds.steps)
    folder = checkpoint.parent
    preview_every = int(cfg.sds.get("preview_every", 0))
    params = [p for p in state.field.parameters() if p.requires_grad]
    bar = tqdm(total=total, initial=state.step, desc=description, disable=not progress, leave=False)
    while state.step < total:
        step = state.step
        if cfg.material.finish_freezes_geometry and in_albedo_finish(cfg.material, step, total):
            state.field.freeze_geometry()  # the finish paints the shape it was handed
        occ_cfg = cfg.renderer.occupancy
        if state.occupancy is not None and step % occ_cfg.update_every == 0:
            state.occupancy.update(state.field, sample_step_size(cfg), device_generator)
        terms = sds_step(
            state, guidance, cond, cfg, step, generator, camera_input,
            device_generator=device_generator,
        )  # fmt: skip
        parts, preview = terms.pop("_parts"), terms.pop("_preview")
        logging = (state.step + 1) % cfg.speed.log_every == 0 or state.step + 1 == total
        norms = grad_norms(parts, params) if logging else {}
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        set_lr(optimizer, state.field, cfg.optim, lr_factor(cfg.optim, step, total))
        optimizer.step()
        state.step += 1
        bar.update(1)
        if preview_every and state.step % preview_every == 0:
            save_preview(guidance, preview, folder / "x0" / f"step_{state.step:06d}.png")
        if logging:
            # the only read-back of device values: every speed.log_every steps
            values = {k: float(v) for k, v in terms.items() if k != "loss"} | norms
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            with open(folder / LOG, "a") as log_file:
                log_file.write(json.dumps({"step": state.step, **values}) + "\n")
        if state.step % cfg.sds.checkpoint_every == 0 or state.step == total:
            save_checkpoint(checkpoint, state, optimizer, generator, cfg, device_generator)
    bar.close()
    state.field.eval()
    return state

"""Generate views for a batch of the data module with the project's sampler (models.sample) and
compare them with the ground truth: sample grids during training (from the weight EMA), and the
learning check."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from models.bundle import MultiViewDiffusion
from models.ema_frames import EMAFramePolicy
from models.sample import sample_views


def _model_and_policy(model_or_module) -> tuple[MultiViewDiffusion, EMAFramePolicy | None]:
    if isinstance(model_or_module, MultiViewDiffusion):
        return model_or_module, None
    policy = model_or_module.policy if model_or_module.config.stage == 2 else None
    return model_or_module.frozen.model, policy


@contextlib.contextmanager
def ema_weights(module) -> Iterator[None]:
    """The training module's UNet with its weight EMA copied in, the live weights restored after
    (the EMA is what gets exported and used). Without an EMA, or under DeepSpeed ZeRO (each rank
    holds only its partition of the EMA; gathering it for a grid is not done), the live weights
    are used."""
    ema = getattr(module, "weight_ema", None)
    params = dict(module.unet.named_parameters())
    if getattr(ema, "partitioned", False) or ema is None:
        yield
        return
    with torch.no_grad():
        live = {n: params[n].detach().clone() for n in ema.names}
        for name in ema.names:
            params[name].copy_(ema.shadow[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name in ema.names:
                params[name].copy_(live[name])


@torch.no_grad()
def generate_views(
    model_or_module,
    batch: dict,
    steps: int,
    guidance: float,
    seed: int = 0,
    scramble_cameras: bool = False,
    reference_frame: bool | None = None,
    use_ema: bool = True,
) -> torch.Tensor:
    """Views ``[B,V,3,H,W]`` in [0,1] for each object's reference at its ground-truth cameras.
    ``scramble_cameras`` rolls the azimuths by one view (each view is asked for its neighbour's
    camera), the control of the learning check. The stage-2 reference frame is used when the
    module is a stage-2 one (override with ``reference_frame``). A training module samples with
    its weight EMA (``use_ema=False``: the live weights)."""
    model, policy = _model_and_policy(model_or_module)
    weights = (
        ema_weights(model_or_module)
        if use_ema and not isinstance(model_or_module, MultiViewDiffusion)
        else contextlib.nullcontext()
    )
    with weights:
        return _generate(
            model, policy, batch, steps, guidance, seed, scramble_cameras, reference_frame
        )


def _generate(model, policy, batch, steps, guidance, seed, scramble_cameras, reference_frame):
    use_ref = policy is not None if reference_frame is None else reference_frame
    was_training = model.unet.training
    model.unet.eval()
    size = batch["ref_clip"].shape[-1]
    outputs = []
    try:
        for index in range(batch["ref_clip"].shape[0]):
            elevation = float(batch["angles"][index, 0, 0])
            azimuths = batch["angles"][index, :, 1]
            if scramble_cameras:
                azimuths = azimuths.roll(1)
            result = sample_views(
                model,
                batch["ref_clip"][index].float().cpu(),
                elevation_deg=elevation,
                azimuths_deg=azimuths,
                image_size=size,
                seed=seed + index,
                guidance_scale=guidance,
                steps=steps,
                use_reference_frame=use_ref,
                policy=policy or EMAFramePolicy(),
                progress=False,
            )
            outputs.append(result.images.float())
    finally:
        model.unet.train(was_training)
    return torch.stack(outputs)


def ground_truth(batch: dict) -> torch.Tensor:
    """Target views of a raw-image batch in [0,1], ``[B,V,3,H,W]``."""
    return (batch["views"].float().cpu() + 1) / 2


def view_mse(generated: torch.Tensor, batch: dict) -> float:
    return float((generated - ground_truth(batch)).pow(2).mean())


def grid(batch: dict, generated: torch.Tensor) -> torch.Tensor:
    """``[3, 2B*H, (V+1)*W]``: per object a row [reference | ground truth views] and a row
    [blank | generated views]."""
    truth = ground_truth(batch)
    ref = batch["ref_clip"].float().cpu()
    rows = []
    for index in range(truth.shape[0]):
        rows.append(torch.cat([ref[index], *truth[index]], dim=-1))
        rows.append(torch.cat([torch.ones_like(ref[index]), *generated[index].cpu()], dim=-1))
    return torch.cat(rows, dim=-2).clamp(0, 1)

"""Stage-2 Explicit Multi-view Attention (EMA) frames: V noisy target frames + 1 clean reference.

The public material leaves four choices open (docs/design.md, section 4); :class:`EMAFramePolicy` makes
each an option with the documented default. The reference frame is appended last in each object's
group, so a batch is object-major ``(b (V+1))`` and the UNet runs with ``num_views = V + 1``.
Training and sampling both call :func:`assemble_ema_frames`.

Reference dropout (``EMAFramePolicy.reference_dropout``): SDS queries the model with the V noisy
frames and no reference frame, which a stage-2 model that always saw the reference was never
trained on. A fraction of the training steps (:func:`keeps_reference`, a function of the seed
and the step, so every rank and a resumed run agree) therefore assembles the V frames alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch

ReferenceTimestep = Literal["same", "zero"]
ReferenceCamera = Literal["zeros", "true"]


@dataclass(frozen=True)
class EMAFramePolicy:
    """The four open choices of the stage-2 reference frame.

    reference_timestep: "same" gives the clean frame the timestep of its object's targets
        (default); "zero" gives it t = 0.
    reference_camera: "zeros" feeds an all-zero camera vector (default); "true" its real camera.
    reference_among_targets: False (default) takes the reference from a view outside the target
        group; True takes one of the target views (see :func:`choose_reference_view`).
    reference_in_loss: False (default) masks the reference frame out of the loss.
    reference_dropout: the fraction of training steps without the reference frame (the targets
        alone, as SDS queries the model); 0 (the dataclass default) always keeps it.
    """

    reference_timestep: ReferenceTimestep = "same"
    reference_camera: ReferenceCamera = "zeros"
    reference_among_targets: bool = False
    reference_in_loss: bool = False
    reference_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.reference_timestep not in ("same", "zero"):
            raise ValueError(
                f"reference_timestep must be 'same' or 'zero', got {self.reference_timestep!r}"
            )
        if self.reference_camera not in ("zeros", "true"):
            raise ValueError(
                f"reference_camera must be 'zeros' or 'true', got {self.reference_camera!r}"
            )
        if not 0.0 <= self.reference_dropout <= 1.0:
            raise ValueError(f"reference_dropout must lie in [0, 1], got {self.reference_dropout}")


def keeps_reference(policy: EMAFramePolicy, seed: int, step: int) -> bool:
    """Whether training step ``step`` of a run seeded ``seed`` assembles the reference frame:
    false for a ``policy.reference_dropout`` fraction of the steps, the same on every rank."""
    if policy.reference_dropout <= 0.0:
        return True
    return random.Random(f"reference-dropout:{seed}:{step}").random() >= policy.reference_dropout


@dataclass
class EMAFrames:
    """A (V+1)-frame batch; ``loss_mask`` [(b (V+1))] is 1 where the loss applies and
    ``target`` is the epsilon target (the targets' noise; zeros for the noise-free reference)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    cameras: torch.Tensor
    context: torch.Tensor
    target: torch.Tensor
    loss_mask: torch.Tensor
    num_views: int


def _per_object(x: torch.Tensor, batch: int, views: int) -> torch.Tensor:
    return x.reshape(batch, views, *x.shape[1:])


def assemble_ema_frames(
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    cameras: torch.Tensor,
    reference_latent: torch.Tensor,
    context: torch.Tensor,
    num_views: int,
    policy: EMAFramePolicy = EMAFramePolicy(),
    noise: torch.Tensor | None = None,
    reference_camera: torch.Tensor | None = None,
    with_reference: bool = True,
) -> EMAFrames:
    """Append one clean reference frame to each object's ``num_views`` noisy frames.

    noisy_latents [(b V),4,h,w], timesteps [(b V)], cameras [(b V),16], reference_latent
    [b,4,h,w] (clean, scaled), context [b,L,D] or [(b V),L,D] (per-object embedding),
    noise [(b V),4,h,w] (the epsilon target; zeros if None), reference_camera [b,16] (needed
    when ``policy.reference_camera == "true"``). ``with_reference=False`` (a dropped step,
    :func:`keeps_reference`): the ``num_views`` target frames alone, every one in the loss.
    """
    frames = noisy_latents.shape[0]
    if frames % num_views:
        raise ValueError(f"{frames} frames are not a multiple of num_views={num_views}")
    batch = frames // num_views
    if reference_latent.shape != (batch, *noisy_latents.shape[1:]):
        raise ValueError(
            f"reference_latent {tuple(reference_latent.shape)} != [b,4,h,w], b={batch}"
        )
    if context.shape[0] == frames:
        context = _per_object(context, batch, num_views)[:, 0]
    if context.shape[0] != batch:
        raise ValueError(f"context batch {context.shape[0]} is neither {batch} nor {frames}")

    target_t = _per_object(timesteps.reshape(frames), batch, num_views)
    ref_t = (
        target_t[:, :1]
        if policy.reference_timestep == "same"
        else torch.zeros_like(target_t[:, :1])
    )
    if policy.reference_camera == "true":
        if reference_camera is None:
            raise ValueError("policy.reference_camera='true' needs reference_camera [b,16]")
        ref_cam = reference_camera.reshape(batch, 1, -1).to(cameras)
    else:
        ref_cam = torch.zeros_like(_per_object(cameras, batch, num_views)[:, :1])
    target = torch.zeros_like(noisy_latents) if noise is None else noise
    if not with_reference:
        return EMAFrames(
            latents=noisy_latents,
            timesteps=timesteps.reshape(frames),
            cameras=cameras,
            context=context.repeat_interleave(num_views, dim=0),
            target=target,
            loss_mask=torch.ones(frames, device=noisy_latents.device),
            num_views=num_views,
        )
    mask = torch.ones(batch, num_views + 1, device=noisy_latents.device)
    if not policy.reference_in_loss:
        mask[:, -1] = 0.0

    def join(targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        grouped = torch.cat([_per_object(targets, batch, num_views), reference], dim=1)
        return grouped.reshape(batch * (num_views + 1), *grouped.shape[2:])

    return EMAFrames(
        latents=join(noisy_latents, reference_latent.unsqueeze(1).to(noisy_latents)),
        timesteps=join(timesteps.reshape(frames), ref_t),
        cameras=join(cameras, ref_cam),
        context=context.repeat_interleave(num_views + 1, dim=0),
        target=join(target, torch.zeros_like(reference_latent, dtype=target.dtype).unsqueeze(1)),
        loss_mask=mask.reshape(-1),
        num_views=num_views + 1,
    )


def choose_reference_view(
    policy: EMAFramePolicy,
    target_views: list[int],
    other_views: list[int],
    generator: torch.Generator | None = None,
) -> int:
    """Index of the view to use as the reference image: one of ``target_views`` when
    ``policy.reference_among_targets``, else one of ``other_views`` (e.g. a shard's ``refs`` or
    another quad)."""
    pool = target_views if policy.reference_among_targets else other_views
    if not pool:
        which = "target" if policy.reference_among_targets else "non-target"
        raise ValueError(f"no {which} view available for the reference frame")
    return pool[int(torch.randint(len(pool), (), generator=generator))]


def masked_mse(prediction: torch.Tensor, frames: EMAFrames) -> torch.Tensor:
    """Mean squared error over the frames the loss mask keeps."""
    per_frame = (prediction.float() - frames.target.float()).pow(2).flatten(1).mean(1)
    mask = frames.loss_mask.to(per_frame)
    return (per_frame * mask).sum() / mask.sum().clamp_min(1.0)

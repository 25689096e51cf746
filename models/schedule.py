"""MVDream's noise schedule: 1000 steps, scaled-linear betas 0.00085..0.012, epsilon prediction.

LDM's ``make_beta_schedule("linear")`` is ``linspace(sqrt(start), sqrt(end)) ** 2``, which is
diffusers' ``scaled_linear``. DDPM for training, DDIM (SD's settings) for sampling."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler

from models.keys import check_keys

SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
)


def _schedule_kwargs(section: dict[str, Any]) -> dict[str, Any]:
    check_keys(section, SCHEDULE_KEYS, "schedule config")
    return {k: section[k] for k in SCHEDULE_KEYS}


def noise_scheduler(section: dict[str, Any]) -> DDPMScheduler:
    """Training scheduler (``add_noise``, ``alphas_cumprod``)."""
    return DDPMScheduler(**_schedule_kwargs(section), clip_sample=False)


def ddim_scheduler(section: dict[str, Any]) -> DDIMScheduler:
    """Sampling scheduler, a fresh instance per call (it keeps per-run state)."""
    return DDIMScheduler(
        **_schedule_kwargs(section),
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )

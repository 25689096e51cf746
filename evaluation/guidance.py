"""Multi-view score distillation from the frozen camera-conditioned model (MVDream's guidance).

Per step: renders are resized to ``image_size``, encoded by the VAE (with gradient into the
renders), noised at one timestep shared by the batch, and denoised by the UNet twice (the CLIP
image embedding and the zero embedding) for classifier-free guidance, whose scale may anneal over
the run (``guidance_at``). Two losses:

- ``x0_recon`` (the released recipe): the guided x0 estimate, its std rescaled towards the
  unguided estimate's per object by ``recon_std_rescale``, is the (detached) regression target
  of the latents: ``0.5 * ||z - x0||^2 / B``.
- ``sds``: classic SDS, gradient ``w(t) (eps_hat - eps)`` with ``w = 1 - alpha_bar_t``.

``target_space: image`` (HiFA) decodes the target and regresses the renders themselves on it, so
the gradient does not pass through the VAE encoder.

The UNet runs under ``no_grad`` and every model parameter is frozen: only the field learns.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from evaluation.schedules import annealed_fraction, at_step


def _no_timer(_: str) -> AbstractContextManager:
    return nullcontext()


class MultiViewGuidance:
    """SDS guidance for ``num_views``-view groups; ``cfg`` is the ``sds`` config section."""

    def __init__(self, model, cfg, num_views: int, device: torch.device, autocast_dtype=None):
        self.model, self.cfg, self.num_views = model, cfg, num_views
        self.device, self.autocast_dtype = device, autocast_dtype
        model.requires_grad_(False)
        model.eval()
        scheduler = model.noise_scheduler
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.unet = model.unet
        latent = cfg.get("vae_latent", "sample")
        if latent not in ("auto", "sample", "mean"):
            raise ValueError(f"config key 'sds.vae_latent': {latent!r} not auto|sample|mean")
        if latent == "auto":  # what the model was trained on, when its folder records it
            latent = model.source.get("vae_latent", "sample")
        self.sample_latent = latent == "sample"
        mode = cfg.get("unet_compile", "off")
        if mode not in ("auto", "off", "on", True, False):
            raise ValueError(f"config key 'sds.unet_compile': {mode!r} not auto|on|off")
        if mode is True or mode == "on" or (mode == "auto" and device.type == "cuda"):
            # CUDA: reduce-overhead replays the whole CFG forward as CUDA graphs (one per
            # batch shape: 2 x 8 and 2 x 4 views); elsewhere plain inductor compilation.
            self.unet = torch.compile(
                model.unet,
                mode="reduce-overhead" if device.type == "cuda" else None,
                dynamic=False,
            )

    def timestep_range(self, step: int) -> tuple[int, int]:
        """(min, max) integer timesteps at ``step``: both start at ``t_start`` and anneal
        linearly to ``t_end`` over ``t_anneal_steps`` (a fraction of ``steps`` or a count)."""
        cfg = self.cfg
        anneal = at_step(cfg.t_anneal_steps, int(cfg.steps))
        low = annealed_fraction(step, cfg.t_start, cfg.t_end[0], anneal)
        high = annealed_fraction(step, cfg.t_start, cfg.t_end[1], anneal)
        n = self.num_train_timesteps
        return int(n * low), max(int(n * high), int(n * low))

    def guidance_at(self, step: int) -> float:
        """Classifier-free guidance scale at ``step``: ``guidance_scale`` until
        ``guidance_anneal_start``, then linear to ``guidance_scale_end`` at
        ``guidance_anneal_steps`` (constant when the end is null). High guidance commits the
        shape; lower guidance once the shape is set keeps the targets' colours nearer the
        prior's conditional estimate, which guidance pulls off the truth."""
        cfg = self.cfg
        end = cfg.get("guidance_scale_end")  # .get: configs saved before the schedule lack it
        if end is None:
            return float(cfg.guidance_scale)
        total = int(cfg.steps)
        start = at_step(cfg.get("guidance_anneal_start", 0.0), total)
        length = max(at_step(cfg.get("guidance_anneal_steps", 0.8), total) - start, 1)
        return annealed_fraction(step - start, float(cfg.guidance_scale), float(end), length)

    def final_guidance(self) -> float:
        """The scale the run's last steps use (where the schedule ends)."""
        return self.guidance_at(int(self.cfg.steps))

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encode(self, rgb: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B,H,W,3]`` renders in [0,1] -> latents (gradient flows to the renders): drawn from
        the VAE posterior as MVDream does, or its mean (``sds.vae_latent``) for a model trained on
        cached posterior means. Larger renders are downsized with an antialiasing filter, so
        every rendered pixel informs the latent (plain bilinear would skip most of them)."""
        return self._encode_sized(self.resize(rgb), generator)

    def _encode_sized(self, rgb: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        images = rgb.permute(0, 3, 1, 2)
        with self._autocast():
            latents = self.model.vae.encode(
                images * 2.0 - 1.0, sample=self.sample_latent, generator=generator
            )
        return latents.float()

    def resize(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B,H,W,3]`` renders at the model's ``image_size`` (larger ones downsized with an
        antialiasing filter, so every rendered pixel counts; plain bilinear skips most)."""
        size = self.cfg.image_size
        if rgb.shape[1] == size:
            return rgb
        images = F.interpolate(
            rgb.permute(0, 3, 1, 2), (size, size), mode="bilinear", align_corners=False,
            antialias=rgb.shape[1] > size,
        )  # fmt: skip
        return images.permute(0, 2, 3, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> ``[B,H,W,3]`` images in [0,1] (the x0 previews)."""
        with self._autocast():
            images = self.model.vae.decode(latents)
        return ((images.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def predict_noise(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        camera: torch.Tensor,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, conditional-only) noise predictions; ``cond`` ``[B,1,D]``; ``scale`` the
        guidance (default: ``guidance_scale``)."""
        batch = noisy.shape[0]
        uncond = torch.zeros_like(cond)  # the unconditional input is the all-zeros embedding
        with self._autocast():
            eps = self.unet(
                torch.cat([noisy, noisy]),
                torch.cat([t, t]),
                torch.cat([cond, uncond]),
                torch.cat([camera, camera]),
                num_views=self.num_views,
            )
        eps_cond, eps_uncond = eps.float().clone().split(batch)  # own copy: graphs reuse buffers
        scale = float(self.cfg.guidance_scale) if scale is None else scale
        return eps_uncond + scale * (eps_cond - eps_uncond), eps_cond

    def _x0(self, noisy: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        return (noisy - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def _guided_x0(
        self,
        noisy: torch.Tensor,
        eps: torch.Tensor,
        eps_cond: torch.Tensor,
        alpha_bar: torch.Tensor,
    ) -> torch.Tensor:
        """x0_recon's target: the guided x0 estimate, its std blended towards the unguided one's
        by ``recon_std_rescale`` (per object: all its views together), which curbs the
        over-saturation of high guidance scales."""
        target = self._x0(noisy, eps, alpha_bar)
        rescale = self.cfg.recon_std_rescale
        if rescale <= 0:
            return target
        shape = (-1, self.num_views, *target.shape[1:])
        guided = target.reshape(shape)
        plain = self._x0(noisy, eps_cond, alpha_bar).reshape(shape)
        dims = list(range(1, guided.dim()))
        factor = (plain.std(dims, keepdim=True) + 1e-8) / (guided.std(dims, keepdim=True) + 1e-8)
        adjusted = (guided * factor).reshape(target.shape)
        return rescale * adjusted + (1 - rescale) * target

    def _noise_and_predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        camera: torch.Tensor,
        generator: torch.Generator | None,
        scale: float,
        timer: Callable[[str], AbstractContextManager] = _no_timer,
    ) -> tuple[torch.Tensor, ...]:
        """Noise ``latents`` at timesteps ``t [B]`` and predict it with guidance ``scale``:
        (noise, noisy latents, alpha_bar, guided and conditional-only noise predictions)."""
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
        cond = cond.to(self.device, latents.dtype).expand(batch, -1, -1)
        with timer("unet"):
            eps, eps_cond = self.predict_noise(
                noisy, t, cond, camera.to(self.device, latents.dtype), scale
            )
        return noise, noisy, alpha_bar, eps, eps_cond

    @torch.no_grad()
    def paint(
        self,
        latents: torch.Tensor,
        t: int,
        cond: torch.Tensor,
        camera: torch.Tensor,
        generator: torch.Generator | None = None,
        scale: float | None = None,
    ) -> torch.Tensor:
        """The x0_recon target for ``latents`` noised at timestep ``t`` (fresh noise) under
        guidance ``scale`` (default: the end of the schedule): what the prior paints over them
        (evaluation.prior_at_truth asks this of the true views)."""
        t_batch = torch.full((latents.shape[0],), t, device=self.device)
        scale = self.final_guidance() if scale is None else scale
        _, noisy, alpha_bar, eps, eps_cond = self._noise_and_predict(
            latents, t_batch, cond, camera, generator, scale
        )
        return self._guided_x0(noisy, eps, eps_cond, alpha_bar)

    def __call__(
        self,
        rgb: torch.Tensor,
        camera: torch.Tensor,
        cond: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
        timer: Callable[[str], AbstractContextManager] = _no_timer,
    ) -> dict[str, torch.Tensor]:
        """Loss for renders ``[B,H,W,3]`` with model camera inputs ``[B,16]`` and the CLIP
        embedding ``[1,1,D]`` (or ``[B,1,D]``). ``timer(name)`` wraps the VAE and UNet parts
        (for the benchmark)."""
        batch = rgb.shape[0]
        if batch % self.num_views:
            raise ValueError(f"batch of {batch} views is not a multiple of {self.num_views}")
        space = self.cfg.get("target_space", "latent")
        # image-space targets need no gradient through the encoder (nor its backward pass)
        resized = self.resize(rgb)  # once: the image-space loss reuses it
        with timer("vae_encode"), torch.set_grad_enabled(space == "latent" and rgb.requires_grad):
            latents = self._encode_sized(resized, generator)
        t_min, t_max = self.timestep_range(step)
        t_one = torch.randint(t_min, t_max + 1, (1,), generator=generator)
        t = t_one.to(self.device).expand(batch)
        noise, noisy, alpha_bar, eps, eps_cond = self._noise_and_predict(
            latents, t, cond, camera, generator, self.guidance_at(step), timer
        )
        if self.cfg.loss == "x0_recon":
            target = self._guided_x0(noisy, eps, eps_cond, alpha_bar)
        else:
            grad = (1 - alpha_bar) * (eps - noise)
            target = latents.detach() - torch.nan_to_num(grad)
        if space == "image":
            # HiFA's pixel-space target: the x0 the prior paints, decoded, regresses the renders
            # (at the model's size) instead of their latents: the gradient skips the VAE
            # encoder's Jacobian, which at small sizes pushes colours into the sigmoid's tails.
            painted = self.decode(target.detach())
            loss = 0.5 * F.mse_loss(resized, painted, reduction="sum") / batch
            loss = loss * (latents[0].numel() / resized[0].numel())  # the latent loss's scale
        else:
            loss = 0.5 * F.mse_loss(latents, target.detach(), reduction="sum") / batch
        return {
            "loss": loss,
            "t": t_one.float(),
            "latents": latents.detach(),
            "target": target.detach(),  # the x0 the prior paints (sds: the one-step target)
        }

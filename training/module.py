"""Stage-1 and stage-2 LightningModules.

Stage 1: the CLIP image embedding of the reference view is the only condition (one context token);
classifier-free dropout swaps it for the zero embedding. Steps alternate between the 4-view branch
(joint multi-view attention) and the single-view branch (every view its own object, V=1) with a
configurable ratio; the branch is a function of (seed, step), so all ranks take the same branch.
Stage 2 appends the clean reference latent as one extra frame (models.ema_frames), except on the
``stage2.ref_dropout`` fraction of steps, which train the targets alone as SDS queries the model.

Only the UNet is a registered submodule: the frozen VAE and image encoder are held outside it, so
they are out of the optimizer, out of every checkpoint and never wrapped, cast or partitioned by
DeepSpeed. The fp32 weight EMA is kept outside the engine as well (training.ema).
"""

from __future__ import annotations

import ctypes
import math
import os
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from webdataset.utils import make_seed

from models.bundle import MultiViewDiffusion
from models.ema_frames import EMAFramePolicy, assemble_ema_frames, keeps_reference, masked_mse
from training.checkpoint_files import DS_TAG, EMA_SHARD
from training.config import RunConfig, to_dict
from training.ema import PartitionedWeightEMA, WeightEMA
from training.model_init import is_preset, receive_initial_weights
from training.strategy import resolve_accelerator, resolve_devices, strategy_name


def uses_deepspeed(config: RunConfig) -> bool:
    """Whether the run's strategy resolves to DeepSpeed (``auto`` on GPUs), as build_launch does."""
    accelerator = resolve_accelerator(config)
    return strategy_name(config, accelerator, resolve_devices(config, accelerator)) == "deepspeed"


class Frozen:
    """Holder that keeps frozen networks out of ``nn.Module`` registration.

    ``cached`` (training from a latent cache): the image encoder and the VAE's weights are dropped,
    so no frozen encoder takes memory in the training process (ViT-H/14 alone is 2.5 GB in fp32);
    the run's ``base_model`` folder, written before, keeps them for export."""

    def __init__(self, model: MultiViewDiffusion, cached: bool = False) -> None:
        self.model = model
        if cached:  # (sample grids need images: a cached run has none, so no decoder either)
            model.image_encoder = None
            for part in ("encoder", "quant_conv", "decoder", "post_quant_conv"):
                setattr(model.vae.model, part, None)
        self.vae = model.vae.requires_grad_(False).eval()
        self.image_encoder = model.image_encoder
        if self.image_encoder is not None:
            self.image_encoder.requires_grad_(False).eval()

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.vae.to(device=device, dtype=dtype)
        if self.image_encoder is not None:
            self.image_encoder.to(device=device, dtype=dtype)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``). On a CPU the fp32
    weights loaded at start are freed once the engine holds its own copies, but glibc keeps the
    small blocks among them resident: at sd21-base size ~1.5 GB the optimizer's first step would
    otherwise stack on top. A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def lr_lambda(config: RunConfig):
    """Linear warmup, then constant / cosine / linear decay to ``min_lr_ratio`` at max_steps."""
    train = config.train

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / max(train.warmup_steps, 1)
        if train.schedule == "constant":
            return 1.0
        span = max(train.max_steps - train.warmup_steps, 1)
        progress = min((step - train.warmup_steps) / span, 1.0)
        shape = (
            0.5 * (1 + math.cos(math.pi * progress)) if train.schedule == "cosine" else 1 - progress
        )
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * shape

    return factor


class FineTuneModule(pl.LightningModule):
    def __init__(self, config: RunConfig, model: MultiViewDiffusion) -> None:
        super().__init__()
        self.config = config
        self.unet = model.unet
        self.frozen = Frozen(model, cached=config.data.cached)
        self.noise_scheduler = model.noise_scheduler
        self.policy = EMAFramePolicy(
            reference_timestep=config.stage2.ref_timestep,
            reference_camera=config.stage2.ref_camera,
            reference_among_targets=config.stage2.ref_in_targets,
            reference_in_loss=config.stage2.ref_in_loss,
            reference_dropout=config.stage2.ref_dropout,
        )
        if config.model.grad_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.weight_ema: WeightEMA | PartitionedWeightEMA | None = None
        if config.ema.enabled and uses_deepspeed(config):  # partitioned from the start:
            # never a full fp32 copy per rank (3.5 GB at sd21-base size) before ZeRO partitions
            self.weight_ema = PartitionedWeightEMA(config.ema.decay, config.ema.start_step)
        elif config.ema.enabled:
            self.weight_ema = WeightEMA(self.unet, config.ema.decay, config.ema.start_step)
        self.skipped = 0  # corrupt samples skipped by this rank's loader workers
        self.images_seen = 0  # target views trained on by this rank
        self.flops_per_image = 0.0  # measured once (training.callbacks.Throughput)
        self.training_data: dict = {}  # what the run trains on (training.data_record), exported
        self._compiled: torch.nn.Module | None = None
        self._micro_step, self._micro_objects = -1, 0  # see training_step

    # --- set-up -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.config.model.compile and self._compiled is None:
            # Held outside module registration so the state dict keeps one copy of the UNet.
            # Static shapes: a batch takes few shapes (objects x views, the last partial batch),
            # each compiled once; symbolic shapes failed in Inductor on a changed batch size.
            object.__setattr__(self, "_compiled", torch.compile(self.unet, dynamic=False))

    def _unet_call(self, *args, **kwargs) -> torch.Tensor:
        """The UNet on inputs in its own dtype (DeepSpeed bf16 and ``bf16-true`` hold bf16
        weights and add no autocast; the step builds its inputs in fp32), prediction in fp32
        for the loss. Integer timesteps are left as they are."""
        unet = self._compiled if self._compiled is not None else self.unet
        dtype = self.unet.conv_in.weight.dtype

        def cast(value: Any) -> Any:
            is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
            return value.to(dtype) if is_float else value

        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        return unet(*args, **kwargs).float()

    def setup(self, stage: str) -> None:
        from pytorch_lightning.strategies import DeepSpeedStrategy

        if self.trainer.world_size > 1 and not is_preset(self.config.model.init):
            receive_initial_weights(self, self.trainer.strategy.root_device)  # rank 0 read them
        if isinstance(self.weight_ema, WeightEMA) and isinstance(
            self.trainer.strategy, DeepSpeedStrategy
        ):  # a DeepSpeed strategy handed to the Trainer by other means than the config
            self.weight_ema = PartitionedWeightEMA(
                self.config.ema.decay, self.config.ema.start_step
            )

    def _zero_optimizer(self):
        return self.trainer.strategy.deepspeed_engine.optimizer

    def on_fit_start(self) -> None:
        dtype = torch.bfloat16 if "bf16" in self.trainer.precision else torch.float32
        self.frozen.to(self.device, dtype)
        if self.device.type == "cpu":
            release_freed_memory()
        if isinstance(self.weight_ema, PartitionedWeightEMA):
            self.weight_ema.bind(self._zero_optimizer())  # starts from the initial masters
        elif self.weight_ema is not None:
            self.weight_ema.to(self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.config.train
        params = [p for p in self.unet.parameters() if p.requires_grad]
        kwargs = dict(
            lr=train.lr, betas=tuple(train.betas), eps=train.eps, weight_decay=train.weight_decay
        )
        if self.config.strategy.offload_optimizer:  # ZeRO-Offload wants DeepSpeed's CPU Adam
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
        else:
            # Fused on CPU too: one kernel, no step-sized temporaries (the foreach path allocates
            # two fp32 copies of the partition, 7 GB at sd21-base size).
            optimizer = torch.optim.AdamW(params, fused=True, **kwargs)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.config))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- one step -----------------------------------------------------------------------------
    def object_generators(
        self, count: int, step: int, first: int = 0, salt: int = 0
    ) -> list[torch.Generator]:
        """One generator per object, seeded by (seed, step, rank, the object's index among this
        optimizer step's objects): the noise, timestep, dropout and VAE draws of an object do not
        depend on how the step's batch is split into micro-batches (``train.accumulate``), and
        are exact on resume."""
        seeds = (
            make_seed(self.config.train.seed, step, self.global_rank, first + i, salt)
            for i in range(count)
        )
        return [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

    def multiview_step(self, step: int) -> bool:
        return (
            random.Random(make_seed(self.config.train.seed, step, 7)).random()
            < self.config.train.multiview_ratio
        )

    def _per_object(self, generators, draw) -> torch.Tensor:
        return torch.stack([draw(g) for g in generators])

    @torch.no_grad()
    def encode_batch(
        self, batch: dict, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, ...]:
        """Latents [B,V,4,h,w], condition [B,1,D], reference latent [B,4,h,w] (frozen encoders,
        or the latent cache). The VAE posterior's noise is drawn per object."""
        if "latents" in batch:
            latents, ref_latent, cond = (
                batch["latents"],
                batch["ref_latent"],
                batch["ref_embedding"],
            )
            cond = cond.reshape(cond.shape[0], 1, -1)
        else:
            views = batch["views"]
            b, v = views.shape[:2]
            images = views.flatten(0, 1)
            stage2 = self.config.stage == 2  # stage 1 never uses the reference latent
            if stage2:
                images = torch.cat([images, batch["ref_image"]])
            side = images.shape[-1] // self.frozen.model.latent_downsample
            shape = (v + (1 if stage2 else 0), self.frozen.model.latent_channels, side, side)
            noise = self._per_object(
                generators, lambda g: torch.randn(shape, generator=g, device=self.device)
            )  # [B, V(+1), C, h, w]: each object's views, then its reference
            noise = torch.cat([noise[:, :v].flatten(0, 1), noise[:, v:].flatten(0, 1)])
            encoded = self.frozen.vae.encode(images, noise=noise).float()
            latents, ref_latent = encoded[: b * v].unflatten(0, (b, v)), encoded[b * v :]
            cond = self.frozen.image_encoder.encode(batch["ref_clip"])
        return latents.float(), cond.float(), ref_latent.float()

    def loss_for(
        self,
        batch: dict,
        step: int,
        sample_mask: torch.Tensor | None = None,
        generators: list[torch.Generator] | None = None,
        multiview: bool | None = None,
        first_object: int = 0,
        with_reference: bool | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """The diffusion loss of ``batch`` at ``step`` and whether it took the 4-view branch.
        ``with_reference`` (stage 2; None: the dropout policy at ``step``)."""
        b, v = batch["cameras"].shape[:2]
        if generators is None:
            generators = self.object_generators(b, step, first_object)
        latents, cond, ref_latent = self.encode_batch(batch, generators)
        cameras = batch["cameras"].float()
        multiview = self.multiview_step(step) if multiview is None else multiview
        per_object = v if not multiview else 1  # single-view branch: a timestep per view
        drop = self._per_object(
            generators, lambda g: torch.rand((), generator=g, device=self.device)
        )
        t = self._per_object(
            generators,
            lambda g: torch.randint(
                0,
                self.noise_scheduler.config.num_train_timesteps,
                (per_object,),
                generator=g,
                device=self.device,
            ),
        )
        noise = self._per_object(
            generators,
            lambda g: torch.randn(latents.shape[1:], generator=g, device=self.device),
        )
        drop = drop < self.config.train.cfg_dropout
        cond = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
        if not multiview:  # single-view branch: every view becomes its own object
            ref_latent = ref_latent.repeat_interleave(v, 0)
            cond, b, v = cond.repeat_interleave(v, 0), b * v, 1
        x0 = latents.reshape(b * v, *latents.shape[2:])
        noise = noise.reshape(x0.shape)
        cameras = cameras.reshape(b * v, -1)
        t = t.reshape(b).repeat_interleave(v)  # one timestep per object, shared by its views
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        target = noise
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        if self.config.stage == 2:
            if with_reference is None:
                with_reference = keeps_reference(self.policy, self.config.train.seed, step)
            ref_camera = batch["ref_camera"].float()
            if not multiview:
                ref_camera = ref_camera.repeat_interleave(latents.shape[1], 0)
            frames = assemble_ema_frames(
                noisy,
                t,
                cameras,
                ref_latent,
                cond,
                v,
                self.policy,
                noise=target,
                reference_camera=ref_camera,
                with_reference=with_reference,
            )
            pred = self._unet_call(
                frames.latents,
                frames.timesteps,
                frames.context,
                frames.cameras,
                num_views=frames.num_views,
            )
            return masked_mse(pred, frames), multiview
        context = cond.repeat_interleave(v, 0)
        pred = self._unet_call(noisy, t, context, cameras, num_views=v)
        return F.mse_loss(pred.float(), target.float()), multiview

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Under train.accumulate, the micro-batches of one optimizer step share its step number:
        # count the objects already drawn for this step so each gets its own draws.
        if self.global_step != self._micro_step:
            self._micro_step, self._micro_objects = self.global_step, 0
        first = self._micro_objects
        self._micro_objects += batch["cameras"].shape[0]
        loss, multiview = self.loss_for(batch, self.global_step, first_object=first)
        # Summed where it lives (the device): no host sync in the step; read every N steps.
        self.skipped = self.skipped + batch["skipped"].sum()
        self.images_seen += batch["cameras"].shape[0] * batch["cameras"].shape[1]
        branch = "multiview" if multiview else "single"
        # Not prog_bar=True: Lightning would read it back every step (training.callbacks.LossBar).
        self.log(f"loss/{branch}", loss, batch_size=batch["cameras"].shape[0])
        self.log("loss/all", loss, batch_size=batch["cameras"].shape[0])
        if self.config.stage == 2 and not keeps_reference(
            self.policy, self.config.train.seed, self.global_step
        ):
            self.log("loss/no_reference", loss, batch_size=batch["cameras"].shape[0])
        if (self.global_step + 1) % self.config.checkpoint.every_n_steps == 0:
            # Drives keep-last-N (ModelCheckpoint monitors it); logged only on the steps whose
            # checkpoint reads it, so the other steps move no scalar to the device.
            self.log("global_step", float(self.global_step), batch_size=1)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Held-out loss (data.val), the 4-view branch with the same draws at every validation:
        # its curve moves with the weights only.
        generators = self.object_generators(batch["cameras"].shape[0], batch_idx, salt=9)
        loss, _ = self.loss_for(
            batch, self.global_step, generators=generators, multiview=True, with_reference=True
        )
        self.log("loss/val", loss, sync_dist=True, batch_size=batch["cameras"].shape[0])
        return loss

    # --- weight EMA ---------------------------------------------------------------------------
    def update_weight_ema(self) -> None:
        """After each optimizer step (training.callbacks.EMAUpdate runs it before any checkpoint
        callback, so a checkpoint holds the EMA of its own step)."""
        step = self.global_step  # already counts the optimizer step just taken
        if self.weight_ema is not None and step % self.config.ema.update_every == 0:
            partitioned = isinstance(self.weight_ema, PartitionedWeightEMA)
            self.weight_ema.update(self._zero_optimizer() if partitioned else self.unet, step)

    def save_ema_shard(self, folder: Path) -> Path | None:
        """Under ZeRO, each rank writes its EMA partition into the DeepSpeed checkpoint folder
        (training.strategy: before the ranks report their files); the file written, or None."""
        if not isinstance(self.weight_ema, PartitionedWeightEMA):
            return None
        state = self.weight_ema.shard_state(self._zero_optimizer())
        target = folder / EMA_SHARD.format(rank=self.global_rank)
        partial = target.with_name(target.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, target)
        return target

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.weight_ema is not None:
            checkpoint["weight_ema"] = self.weight_ema.state_dict()
        checkpoint["run_config"] = to_dict(self.config)
        checkpoint["training_data"] = self.training_data
        # Each rank counts its own loaders' skips: the checkpoint keeps their sum (every rank
        # builds the checkpoint, so the all-reduce is matched), and rank 0 alone resumes with it.
        skipped = torch.as_tensor(self.skipped, device=self.device).double().reshape(1)
        checkpoint["data_skipped"] = int(self.trainer.strategy.reduce(skipped, reduce_op="sum"))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.weight_ema is not None and "weight_ema" in checkpoint:
            self.weight_ema.load_state_dict(checkpoint["weight_ema"])
        if isinstance(self.weight_ema, PartitionedWeightEMA) and self.trainer.ckpt_path:
            shard = Path(self.trainer.ckpt_path) / DS_TAG / EMA_SHARD.format(rank=self.global_rank)
            if not shard.is_file():
                raise FileNotFoundError(f"checkpoint.resume: weight EMA partition {shard} missing")
            state = torch.load(shard, map_location="cpu", weights_only=True)
            self.weight_ema.load_shard(self._zero_optimizer(), state, str(shard))
        self.skipped = int(checkpoint.get("data_skipped", 0)) if self.global_rank == 0 else 0

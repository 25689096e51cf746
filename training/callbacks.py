"""Callbacks: throughput / MFU / memory / skipped-sample logging, a plain JSONL metrics log, and
sample grids (generated views beside ground truth) for a fixed validation batch."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import TQDMProgressBar
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 peak TFLOP/s by GPU model, matched in order against torch's device name (most
# specific first): the PCIe, NVL and SXM parts of one chip differ (an H100 PCIe peaks at 756, an
# H100 SXM, "NVIDIA H100 80GB HBM3", at 989). log.peak_tflops overrides; no match: no MFU.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.0),
    (r"\bH200 NVL\b", 835.0),
    (r"\bH200\b", 989.0),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM
    (r"\bH800 PCIe\b", 756.0),
    (r"\bH800\b", 989.0),
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),  # SXM and PCIe share the peak
    (r"\bA800\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"\b4090\b", 165.0),
)


def peak_tflops_of(device_name: str) -> float:
    """The dense bf16 peak of a GPU model by its device name; 0 when unknown."""
    for pattern, value in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return value
    return 0.0


def peak_tflops(configured: float) -> float:
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        return peak_tflops_of(torch.cuda.get_device_name())
    return 0.0


def unet_train_flops_per_image(
    module: Any, num_views: int = 4, resolution: int | None = None
) -> float:
    """Forward FLOPs of one ``num_views``-view object at the trained ``resolution`` (pixels; the
    UNet's configured sample size if None) counted by torch, times 3 for the backward, per target
    image. Stage 2 counts its extra reference frame."""
    unet = module.unet
    down = module.frozen.model.latent_downsample
    side = resolution // down if resolution else unet.config.sample_size
    frames = num_views + (1 if module.config.stage == 2 else 0)
    param = next(unet.parameters())
    x = torch.zeros(
        frames, unet.config.in_channels, side, side, device=param.device, dtype=param.dtype
    )
    context = torch.zeros(
        frames, 1, unet.config.cross_attention_dim, device=param.device, dtype=param.dtype
    )
    camera = torch.zeros(frames, 16, device=param.device, dtype=param.dtype)
    t = torch.zeros(frames, device=param.device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, t, context, camera, num_views=frames)
    return 3.0 * counter.get_total_flops() / num_views


def mfu_unavailable(module: Any, peak: float) -> str | None:
    """Why MFU cannot be logged for this run, or None."""
    if peak <= 0:
        return "no peak FLOP/s known for this device (set log.peak_tflops)"
    if any(hasattr(p, "ds_id") for p in module.unet.parameters()):
        return "ZeRO-3 partitions the weights, so the UNet cannot run alone to count its FLOPs"
    return None


class EMAUpdate(pl.Callback):
    """The weight EMA update after each optimizer step. Lightning runs callbacks' batch-end hooks
    before the module's and checkpoint callbacks last, so a periodic checkpoint taken at a step
    holds that step's EMA (not one update behind)."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        module.update_weight_ema()


class Throughput(pl.Callback):
    """images/s (all ranks), MFU, peak GPU memory and the count of skipped corrupt samples, every
    N steps (the only host syncs: one all-reduce and one read of the device counters).

    MFU counts each step's FLOPs by its branch (4-view joint attention or single views) at the
    trained resolution."""

    def __init__(self, every_n_steps: int, peak: float, data_resolution: int) -> None:
        self.every = max(every_n_steps, 1)
        self.peak = peak
        self.resolution = data_resolution
        self._t0 = 0.0
        self._images0 = 0
        self._flops = 0.0
        self.flops_per_image: dict[bool, float] = {}

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self.flops_per_image = {}
        reason = mfu_unavailable(module, peak_tflops(self.peak))
        if reason is None:
            try:
                self.flops_per_image = {
                    True: unet_train_flops_per_image(module, 4, self.resolution),
                    False: unet_train_flops_per_image(module, 1, self.resolution),
                }
            except Exception as error:  # logging must not stop a run: say why, train on
                reason = f"counting the UNet's FLOPs failed ({type(error).__name__}: {error})"
        if reason is not None and trainer.is_global_zero:
            warnings.warn(f"perf/mfu is not logged: {reason}", stacklevel=2)
        module.flops_per_image = self.flops_per_image.get(True, 0.0)
        self._t0, self._images0, self._flops = time.perf_counter(), module.images_seen, 0.0

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.flops_per_image:
            images = batch["cameras"].shape[0] * batch["cameras"].shape[1]
            self._flops += images * self.flops_per_image[module.multiview_step(step - 1)]
        if step % self.every:
            return
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        skipped = torch.as_tensor(module.skipped, device=module.device).double().reshape(1)
        images = torch.tensor(
            [module.images_seen - self._images0], dtype=torch.float64, device=module.device
        )
        total = trainer.strategy.reduce(torch.cat([images, skipped]), reduce_op="sum")
        images_per_s = float(total[0]) / elapsed
        metrics = {"perf/images_per_s": images_per_s, "data/skipped": float(total[1])}
        peak = peak_tflops(self.peak)
        if peak and self._flops:
            metrics["perf/mfu"] = self._flops / elapsed / (peak * 1e12)
        if torch.cuda.is_available():
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        module.log_dict(metrics, rank_zero_only=True, batch_size=1)
        module.last_perf = metrics
        self._t0, self._images0, self._flops = now, module.images_seen, 0.0


class MetricsFile(pl.Callback):
    """``metrics.jsonl``, written by rank 0 every N steps: one JSON line per step (step, loss,
    branch, and per rank the objects and views it trained on). Losses stay on the device until
    the flush (one transfer for N steps); the ranks' sample lists are gathered at the flush."""

    def __init__(self, folder: str | Path, every_n_steps: int = 1) -> None:
        self.folder = Path(folder)
        self.every = max(every_n_steps, 1)
        self._pending: list[tuple[dict, torch.Tensor]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": trainer.global_step,
            "multiview": module.multiview_step(trainer.global_step - 1),
            "keys": list(batch["key"]),
            "choice": batch["choice"].detach(),  # read at the flush: no host sync per step
        }
        self._pending.append((record, loss.detach().float().reshape(1)))
        if trainer.global_step % self.every == 0:
            self.flush(trainer, module)

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        self.flush(trainer, module)

    def flush(self, trainer: pl.Trainer, module: Any) -> None:
        if not self._pending:
            return
        records = [r for r, _ in self._pending]
        losses = torch.cat([loss for _, loss in self._pending]).tolist()
        for record in records:
            record["samples"] = list(zip(record.pop("keys"), record.pop("choice").tolist()))
        self._pending = []
        per_rank = [records]
        if trainer.world_size > 1:
            per_rank = [None] * trainer.world_size
            torch.distributed.all_gather_object(per_rank, records)
        if not trainer.is_global_zero:
            return
        perf = getattr(module, "last_perf", {}) or {}
        module.last_perf = {}
        lines = []
        for i, (record, loss) in enumerate(zip(records, losses)):
            line = {"step": record["step"], "loss": loss, "multiview": record["multiview"]}
            line["keys"] = [[k for k, _ in rank[i]["samples"]] for rank in per_rank]
            line["views"] = [[v for _, v in rank[i]["samples"]] for rank in per_rank]
            line["skipped_local"] = int(module.skipped)
            lines.append(json.dumps({**line, **(perf if i == len(records) - 1 else {})}))
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "metrics.jsonl").open("a") as stream:
            stream.write("\n".join(lines) + "\n")


class SampleGrids(pl.Callback):
    """Every N steps: sample views for a fixed validation batch; [reference | ground truth |
    generated] rows go to ``folder/step_NNNNNNNN.png`` and to the logger (TensorBoard, W&B).
    All ranks sample (ZeRO-3 needs every rank in the forward)."""

    def __init__(
        self, every_n_steps: int, batch: dict, steps: int, guidance: float, folder: Path
    ) -> None:
        self.every, self.batch, self.steps, self.guidance = every_n_steps, batch, steps, guidance
        self.folder = Path(folder)

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every <= 0 or trainer.global_step % self.every:
            return
        from training.evaluate import generate_views, grid

        views = generate_views(module, self.batch, self.steps, self.guidance, seed=0)
        if trainer.global_rank != 0:
            return
        image = grid(self.batch, views)
        self.folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        Image.fromarray(pixels).save(self.folder / f"step_{trainer.global_step:08d}.png")
        if trainer.logger is not None:
            if hasattr(trainer.logger, "log_image"):  # Weights & Biases
                trainer.logger.log_image(key="samples", images=[image], step=trainer.global_step)
            elif hasattr(trainer.logger.experiment, "add_image"):  # TensorBoard
                trainer.logger.experiment.add_image("samples", image, trainer.global_step)


class FinalCheckpoint(pl.Callback):
    """Save the last step too (periodic saves rarely land on it), then keep the newest N."""

    def __init__(self, folder: str | Path, keep_last: int) -> None:
        self.folder, self.keep_last = Path(folder), keep_last

    def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
        from training.checkpoint_prune import guarded, stale_checkpoints
        from training.resume import resumed_path

        path = self.folder / f"step={trainer.global_step:08d}.ckpt"
        if trainer.global_step == 0 or path.exists():
            return
        trainer.save_checkpoint(
            path, weights_only=False
        )  # every rank: DeepSpeed saves its shards collectively
        if trainer.is_global_zero:
            stale = stale_checkpoints(self.folder, self.keep_last)
            for old in guarded(stale, self.folder.parent, [resumed_path(trainer)]):
                trainer.strategy.remove_checkpoint(old)


class LossBar(TQDMProgressBar):
    """The progress bar, showing the loss read only when the bar refreshes.

    A metric logged with ``prog_bar=True`` is converted to a Python number by Lightning at the end
    of every batch (``.item()``, a host sync per step on a GPU), whatever the refresh rate; the
    loss is logged without it and read here, at the refresh steps (``log.every_n_steps``)."""

    KEYS = ("loss/multiview", "loss/single")

    def get_metrics(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, module)
        logged = trainer.callback_metrics
        for key in self.KEYS:
            if isinstance(logged.get(key), torch.Tensor):
                metrics[key] = f"{logged[key].item():.3f}"
        return metrics

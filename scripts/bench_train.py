"""Training-step throughput of the real stage-1/2 LightningModule step (``FineTuneModule.loss_for``
+ backward + AdamW), on the fly (VAE + CLIP encoders in the step) and from the latent cache, beside
the plain diffusers UNet step of the same size (scripts/bench_model.py's step) in the same run.

Inputs are random tensors of the data module's batch layout: this measures compute, not the
loader (the loader has workers and prefetching; see docs/training.md). Defaults: ``sd21-base``, 32
objects x 4 views at 256 px, bf16 on a GPU; ``tiny`` at 32 px on a CPU.
``make bench-train ARGS="--objects 16 --compile"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from bench_common import record  # scripts/ is on sys.path when run
from diffusers import UNet2DConditionModel

from models.bundle import build_model
from models.unet import unet_config
from training.callbacks import peak_tflops, unet_train_flops_per_image
from training.config import load_config
from training.model_init import resolve_init
from training.module import FineTuneModule

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_model", ROOT / "scripts" / "bench_model.py")
bench_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_model)  # make_step / best_round / first_step_seconds


def batches(module: FineTuneModule, objects: int, resolution: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    down = module.frozen.model.latent_downsample
    side = resolution // down
    channels = module.frozen.model.latent_channels
    dim = module.frozen.model.context_dim
    common = {
        "cameras": torch.randn(objects, 4, 16, generator=g),
        "ref_camera": torch.randn(objects, 16, generator=g),
    }
    raw = {
        **common,
        "views": torch.rand(objects, 4, 3, resolution, resolution, generator=g) * 2 - 1,
        "ref_image": torch.rand(objects, 3, resolution, resolution, generator=g) * 2 - 1,
        "ref_clip": torch.rand(objects, 3, resolution, resolution, generator=g),
    }
    cached = {
        **common,
        "latents": torch.randn(objects, 4, channels, side, side, generator=g),
        "ref_latent": torch.randn(objects, channels, side, side, generator=g),
        "ref_embedding": torch.randn(objects, dim, generator=g),
    }
    move = lambda b: {k: v.to(device, non_blocking=True) for k, v in b.items()}  # noqa: E731
    return {"on the fly": move(raw), "latent cache": move(cached)}


def module_step(module: FineTuneModule, batch: dict, dtype: torch.dtype):
    params = [p for p in module.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=batch["cameras"].is_cuda)
    device_type = batch["cameras"].device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = module.loss_for(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def resident_peak_gb() -> float:
    """This process's peak resident memory (VmHWM), GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def one_step(args: argparse.Namespace) -> dict:
    """One optimizer step of the real module from the latent cache (no frozen encoder built):
    its FLOPs (counted by torch), seconds and peak memory, at the given size. On a CPU at
    ``sd21-base`` size this is the known figure a GPU run compares against."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if args.bf16 or cuda else torch.float32
    overrides = [
        f"model.init=random:{args.preset}", "train.multiview_ratio=1.0", "data.cached=true",
        f"model.grad_checkpointing={str(args.grad_checkpointing).lower()}",
        f"model.compile={str(args.compile).lower()}",
    ]  # fmt: skip
    config = load_config(ROOT / "configs" / f"stage{args.stage}-{args.preset}.yaml", overrides)
    model = build_model(args.preset, seed=0, with_image_encoder=False)
    module = FineTuneModule(config, model).to(device).train()
    module.frozen.to(device, dtype)
    module.configure_model()
    batch = batches(module, args.objects, args.resolution, device)["latent cache"]
    step = module_step(module, batch, dtype)
    flops = unet_train_flops_per_image(module, 4, args.resolution) * args.objects * 4
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else resident_peak_gb()
    return {
        "device": torch.cuda.get_device_name()
        if cuda
        else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset,
        "stage": args.stage,
        "objects": args.objects,
        "resolution": args.resolution,
        "dtype": "bf16 autocast" if dtype == torch.bfloat16 else "fp32",
        "grad_checkpointing": args.grad_checkpointing,
        "step_tflop": flops / 1e12,
        "step_seconds": seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "peak_memory_gb": peak,
    }


def run(args: argparse.Namespace) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = load_config(
        ROOT / "configs" / f"stage{args.stage}-{args.preset}.yaml",
        [
            f"model.init={args.preset}",
            "train.multiview_ratio=1.0",
            f"model.compile={str(args.compile).lower()}",
        ],
    )
    module = FineTuneModule(config, resolve_init(args.preset, 0))
    module.to(device).train()  # sets module.device (the step draws its noise there)
    module.frozen.to(device, dtype)
    module.configure_model()
    steps = {
        name: module_step(module, batch, dtype)
        for name, batch in batches(module, args.objects, args.resolution, device).items()
    }
    frames = args.objects * 4
    side = args.resolution // module.frozen.model.latent_downsample
    channels = module.frozen.model.latent_channels
    g = torch.Generator().manual_seed(0)
    plain_batch = {
        "x": torch.randn(frames, channels, side, side, generator=g),
        "noise": torch.randn(frames, channels, side, side, generator=g),
        "t": torch.randint(0, 1000, (frames,), generator=g),
        "context": torch.randn(frames, 1, module.frozen.model.context_dim, generator=g),
        "camera": torch.randn(frames, 16, generator=g),
    }
    plain_batch = {k: v.to(device) for k, v in plain_batch.items()}
    plain = (
        UNet2DConditionModel.from_config(unet_config(module.frozen.model.preset["unet"], channels))
        .to(device)
        .train()
    )
    plain_runner = torch.compile(plain) if args.compile else plain
    steps["plain diffusers UNet"] = bench_model.make_step(
        plain_runner,
        lambda m, b: m(b["x"], b["t"], b["context"], class_labels=b["camera"], return_dict=False)[
            0
        ],
        plain_batch,
        dtype,
    )
    for step in steps.values():
        bench_model.first_step_seconds(step, args.warmup, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = bench_model.best_round(steps, args.steps, args.rounds, device)
    images = {name: frames / s for name, s in seconds.items()}
    flops = unet_train_flops_per_image(module, 4, args.resolution)  # at the benchmarked size
    peak = peak_tflops(args.peak_tflops)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "preset": args.preset,
        "stage": args.stage,
        "images_per_step": frames,
        "images_per_s": images,
        "cache_vs_plain": images["latent cache"] / images["plain diffusers UNet"],
        "cache_vs_on_the_fly": images["latent cache"] / images["on the fly"],
        "mfu_latent_cache": images["latent cache"] * flops / (peak * 1e12) if peak else None,
        "unet_tflop_per_image": flops / 1e12,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="sd21-base" if cuda else "tiny", choices=["tiny", "sd21-base"]
    )
    parser.add_argument("--stage", type=int, default=1, choices=[1, 2])
    parser.add_argument(
        "--objects", type=int, default=32 if cuda else 2, help="objects per step (x4 views)"
    )
    parser.add_argument("--resolution", type=int, default=256 if cuda else 32)
    parser.add_argument(
        "--steps", type=int, default=10 if cuda else 3, help="steps per timing round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3 if cuda else 1)
    parser.add_argument("--compile", action="store_true", help="torch.compile both UNets")
    parser.add_argument(
        "--peak-tflops", type=float, default=0.0, help="for MFU (0: look the GPU up)"
    )
    parser.add_argument(
        "--one-step",
        action="store_true",
        help="one optimizer step from the latent cache: FLOPs, seconds, peak memory only",
    )
    parser.add_argument("--bf16", action="store_true", help="--one-step: bf16 autocast on a CPU")
    parser.add_argument("--grad-checkpointing", action="store_true", help="--one-step")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.one_step:
        report = one_step(args)
        print(
            f"{report['preset']} stage {report['stage']}, {report['objects']} object(s) x 4 views "
            f"at {report['resolution']} px, {report['dtype']}, grad checkpointing "
            f"{report['grad_checkpointing']} on {report['device']}: one step "
            f"{report['step_tflop']:.2f} TFLOP in {report['step_seconds']:.1f} s "
            f"({report['achieved_tflops']:.3f} TFLOP/s), peak memory {report['peak_memory_gb']:.1f} GB"
        )
        print(json.dumps(report))
        record(
            "train",
            f"one step {report['preset']} ({report['device']})",
            report["step_seconds"],
            "s",
        )
        return
    report = run(parse(argv))
    for name, rate in report["images_per_s"].items():
        print(f"{name:>22}: {rate:9.1f} img/s")
    print(f"latent cache / plain UNet step: {report['cache_vs_plain']:.2f}x (target >= 0.9)")
    print(f"latent cache / on the fly:      {report['cache_vs_on_the_fly']:.2f}x (target >= 1.6)")
    if report["mfu_latent_cache"] is not None:
        print(f"MFU (latent cache): {report['mfu_latent_cache']:.1%} (target >= 35%)")
    print(json.dumps(report))
    for name, rate in report["images_per_s"].items():
        record("train", f"{name} step", rate, "img/s")
    record("train", "latent cache / plain UNet step", report["cache_vs_plain"], "x", ">= 0.9")
    record("train", "latent cache / on the fly", report["cache_vs_on_the_fly"], "x", ">= 1.6")
    if report["mfu_latent_cache"] is not None:
        record("train", "MFU (latent cache)", 100 * report["mfu_latent_cache"], "%", ">= 35")


if __name__ == "__main__":
    main()

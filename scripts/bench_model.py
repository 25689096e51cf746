"""Train-step throughput: our multi-view UNet vs plain diffusers UNet2DConditionModel.

Both UNets have the same config (size, camera MLP); the plain one keeps diffusers' default
attention (per-frame self-attention), ours runs joint self-attention over ``--views`` views. One
step = forward, MSE loss, backward, AdamW step, on the same batch, in the same run, eager and
``torch.compile``d. Defaults: ``sd21-base`` at 256 px in bf16 on a GPU, ``tiny`` at 64 px in fp32
on a CPU. ``make bench-model`` runs it; ``ARGS=...`` passes options.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from bench_common import record  # scripts/ is on sys.path when run
from diffusers import UNet2DConditionModel
from rich.console import Console
from rich.table import Table

from models.bundle import load_preset
from models.unet import build_unet, unet_config
from models.vae import latent_channels


def make_step(model: torch.nn.Module, call: Callable, batch: dict, dtype: torch.dtype) -> Callable:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device_type = batch["x"].device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            prediction = call(model, batch)
        loss = torch.nn.functional.mse_loss(prediction.float(), batch["noise"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def first_step_seconds(step: Callable, warmup: int, device: torch.device) -> float:
    """Warm up; returns the first step's seconds (compilation included)."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step()
    sync(device)
    return first


def best_round(steps: dict[str, Callable], count: int, rounds: int, device) -> dict[str, float]:
    """Seconds per step of each runner: rounds alternate between the runners so that both see
    the same machine load, and the best round counts (robust on a shared CPU)."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(count):
                step()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return best


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sd21-base" if cuda else "tiny")
    parser.add_argument("--batch", type=int, default=128 if cuda else 8, help="frames per step")
    parser.add_argument("--views", type=int, default=4, help="views per object (joint attention)")
    parser.add_argument("--resolution", type=int, default=256 if cuda else 64, help="image px")
    parser.add_argument("--steps", type=int, default=20 if cuda else 3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=3 if cuda else 2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=["bf16", "fp32"])
    parser.add_argument("--modes", default="eager,compiled", help="comma list of eager,compiled")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, help="CPU threads (1 is steadier on a busy CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    preset = load_preset(args.preset)
    section = preset["unet"]
    side = args.resolution // 2 ** (len(preset["vae"]["block_out_channels"]) - 1)  # latent side
    channels = latent_channels(preset["vae"])
    g = torch.Generator().manual_seed(0)
    batch = {
        "x": torch.randn(args.batch, channels, side, side, generator=g),
        "noise": torch.randn(args.batch, channels, side, side, generator=g),
        "t": torch.randint(0, 1000, (args.batch,), generator=g),
        "context": torch.randn(args.batch, 1, section["cross_attention_dim"], generator=g),
        "camera": torch.randn(args.batch, 16, generator=g),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    if args.channels_last:
        batch["x"] = batch["x"].to(memory_format=torch.channels_last)

    def ours(model, b):
        return model(b["x"], b["t"], b["context"], b["camera"], num_views=args.views)

    def plain(model, b):
        return model(b["x"], b["t"], b["context"], class_labels=b["camera"], return_dict=False)[0]

    builders = {
        "plain diffusers": (
            lambda: UNet2DConditionModel.from_config(unet_config(section, channels)),
            plain,
        ),
        f"multi-view (V={args.views})": (lambda: build_unet(section, channels), ours),
    }
    console = Console()
    title = (
        f"train step, {args.preset} UNet, batch {args.batch} frames, {args.resolution} px, "
        f"{args.dtype}, {device.type}"
    )
    table = Table(title=title)
    for column in ("model", "mode", "img/s", "ms/step", "first step s", "vs plain"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for mode in args.modes.split(","):
        steps, firsts = {}, {}
        for name, (build, call) in builders.items():
            torch.manual_seed(0)
            model = build().to(device).train()
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            runner = torch.compile(model) if mode == "compiled" else model
            steps[name] = make_step(runner, call, batch, dtype)
            firsts[name] = first_step_seconds(steps[name], args.warmup, device)
            console.log(f"{name} {mode}: warmed up ({firsts[name]:.1f} s first step)")
        per_step = best_round(steps, args.steps, args.rounds, device)
        baseline = args.batch / per_step["plain diffusers"]
        for name, seconds in per_step.items():
            rate = args.batch / seconds
            table.add_row(name, mode, f"{rate:.1f}", f"{seconds * 1e3:.1f}", f"{firsts[name]:.1f}",
                          f"{rate / baseline:.2f}x")  # fmt: skip
            where = f"{args.preset}, {args.resolution} px, batch {args.batch}, {device.type}"
            record("model", f"{name} train step, {mode}", rate, "img/s", where)
        ratio = (args.batch / per_step[f"multi-view (V={args.views})"]) / baseline
        record("model", f"multi-view / plain, {mode}", ratio, "x", "target >= 0.9")
        del steps
        if cuda:
            torch.cuda.empty_cache()
    if device.type == "cpu":
        console.print(f"CPU load average during the run: {os.getloadavg()[0]:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()

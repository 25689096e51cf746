"""SDS iterations/s at 64 and 256 px, eager vs compiled, and where the time goes (`make bench-sds`).

One SDS step = render (field + compositing, forward) -> VAE encode -> UNet (CFG, 2 x views) ->
backward (VAE encoder + renderer + field) -> AdamW. On a GPU the model is ``sd21-base`` (random
weights: the speed is the same) and the field/renderer use configs/eval.yaml; on CPU the model is
``tiny`` and the field/renderer use configs/eval_tiny.yaml. Both modes run in one process, one
after the other: eager (``speed.compile=false``, ``sds.unet_compile=off``) and compiled
(``torch.compile`` of the render step; on CUDA also the UNet as CUDA graphs). Prints a table per
mode, the compiled/eager ratio and the projected time of the full recipe (steps per phase from
configs/eval.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import torch
from bench_common import record as record_figure  # scripts/ is on sys.path when run

from evaluation.config import load_config
from evaluation.evaluate import autocast_dtype
from evaluation.field import Field
from evaluation.guidance import MultiViewGuidance
from evaluation.schedules import at_step
from evaluation.sds import (
    FieldState,
    build_occupancy,
    make_optimizer,
    sample_step_size,
    sds_step,
)
from models.bundle import build_model


def measure_sds(
    preset: str,
    config: str,
    device: torch.device,
    sizes: list[int],
    steps: int,
    warmup: int = 2,
    overrides: list[str] | None = None,
    compiled: bool = True,
) -> dict:
    """SDS it/s per render size and ms per step of render / VAE encode / UNet / backward / AdamW
    (views per step from the recipe's phase at that size), and the projected minutes of the full
    recipe (configs/eval.yaml's steps and milestone). ``compiled`` picks torch.compile of the
    render step (and, on CUDA, CUDA graphs for the UNet) or plain eager. Warm-up steps (which
    compile) are not timed. Shared with scripts/gpu_check.py."""
    mode = ["speed.compile=true", "sds.unet_compile=auto"] if compiled else [
        "speed.compile=false", "sds.unet_compile=off"]  # fmt: skip
    overrides = [*mode, *(overrides or [])]
    gpu = device.type == "cuda"
    cfg = load_config(config, overrides)
    model = build_model(preset, seed=0, device=device)
    with torch.no_grad():
        cond = model.image_encoder.encode(torch.rand(1, 3, 256, 256, device=device))

    def camera_input(cams):
        return model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    rows = {}
    recipe = load_config().sds  # views per step and phase lengths of the released recipe
    for index, size in enumerate(sizes):
        # The phase of the schedule that renders at this size sets the views per step.
        phase = min(index, len(recipe.resolution) - 1)
        views = recipe.batch_views[phase]
        size_overrides = [f"sds.resolution=[{size},{size}]", f"sds.batch_views=[{views},{views}]"]
        run_cfg = load_config(config, [*overrides, *size_overrides])
        state = FieldState(Field(run_cfg.field).to(device), build_occupancy(run_cfg))
        if state.occupancy is not None:
            state.occupancy = state.occupancy.to(device)
        optimizer = make_optimizer(state.field, run_cfg.optim)
        generator = torch.Generator().manual_seed(0)
        device_generator = generator if not gpu else torch.Generator(device).manual_seed(0)
        guidance = MultiViewGuidance(
            model, run_cfg.sds, cfg.cameras.views, device, autocast_dtype(cfg.precision, device)
        )
        times: dict[str, float] = defaultdict(float)
        step_in_recipe = 0 if phase == 0 else at_step(recipe.milestones[0], int(recipe.steps))

        @contextlib.contextmanager
        def timer(name: str, keep: bool = True, times=times):
            sync()
            start = time.perf_counter()
            yield
            sync()
            if keep:
                times[name] += time.perf_counter() - start

        total = 0.0
        for i in range(warmup + steps):
            keep = i >= warmup
            if state.occupancy is not None and i % run_cfg.renderer.occupancy.update_every == 0:
                state.occupancy.update(state.field, sample_step_size(run_cfg), device_generator)
            begin = time.perf_counter()
            terms = sds_step(
                state, guidance, cond, run_cfg, step_in_recipe + i, generator, camera_input,
                lambda name, k=keep: timer(name, k), device_generator=device_generator,
            )  # fmt: skip
            with timer("backward", keep):
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
            with timer("optim", keep):
                optimizer.step()
            sync()
            if keep:
                total += time.perf_counter() - begin
        ms = {k: 1000 * v / steps for k, v in times.items()}
        rows[size] = {"views": views, "it_s": steps / total} | ms
    result: dict = {"rows": rows, "projected_min": None}
    if len(rows) >= 2:
        first = at_step(recipe.milestones[0], int(recipe.steps))
        rest = recipe.steps - first
        low, high = min(rows), max(rows)
        result["projected_min"] = (first / rows[low]["it_s"] + rest / rows[high]["it_s"]) / 60
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--model", help="model preset (default: sd21-base on GPU, tiny on CPU)")
    parser.add_argument(
        "--config", help="eval config (default: eval.yaml on GPU, eval_tiny.yaml on CPU)"
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per resolution (default 20 GPU, 3 CPU)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--resolutions", default="64,256", help="render sizes to time")
    parser.add_argument(
        "--modes", default="eager,compiled", help="which of eager,compiled to time (both: ratio)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args()

    gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if gpu else "cpu")
    config = args.config or ("configs/eval.yaml" if gpu else "configs/eval_tiny.yaml")
    preset = args.model or ("sd21-base" if gpu else "tiny")
    sizes = [int(s) for s in args.resolutions.split(",")]
    print(f"device {device} ({torch.cuda.get_device_name() if gpu else 'CPU'}), model {preset}, "
          f"config {config}, {torch.get_num_threads()} CPU threads")  # fmt: skip
    steps = args.steps or (20 if gpu else 3)
    results = {}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("eager", "compiled") for m in modes):
        parser.error(f"--modes {args.modes!r}: a comma list of eager, compiled")
    for name, compiled in (("eager", False), ("compiled", True)):
        if name not in modes:
            continue
        results[name] = measure_sds(
            preset, config, device, sizes, steps, args.warmup, args.overrides, compiled
        )
        print(f"{name}:")
        print_rows(name, results[name])
    recipe = load_config().sds
    for size in sizes if len(results) == 2 else []:
        ratio = results["compiled"]["rows"][size]["it_s"] / results["eager"]["rows"][size]["it_s"]
        record_figure("sds", f"compiled / eager it/s at {size} px", ratio, "x")
    for name, result in results.items():
        if result["projected_min"] is not None:
            first = at_step(recipe.milestones[0], int(recipe.steps))
            print(f"projected full recipe, {name} ({first} steps at {min(sizes)} "
                  f"px + {recipe.steps - first} at {max(sizes)} px): "
                  f"{result['projected_min']:.1f} min per object")  # fmt: skip
            record_figure(
                "sds", f"projected 10k-step recipe ({name})", result["projected_min"],
                "min/object", "target <= 10 (GPU)",
            )  # fmt: skip


def print_rows(name: str, result: dict) -> None:
    header = f"{'px':>5} {'views':>5} {'it/s':>7} {'render':>8} {'vae_enc':>8} {'unet':>8} {'backward':>9} {'optim':>7}"
    print(header + "   (ms per step)")
    for size, row in result["rows"].items():
        print(f"{size:>5} {row['views']:>5} {row['it_s']:>7.3f} {row['render']:>8.1f} "
              f"{row['vae_encode']:>8.1f} {row['unet']:>8.1f} {row['backward']:>9.1f} "
              f"{row['optim']:>7.1f}")  # fmt: skip
        record_figure(
            "sds", f"{name} SDS iterations/s at {size} px ({row['views']} views)", row["it_s"],
            "it/s",
        )  # fmt: skip
        for part in ("render", "vae_encode", "unet", "backward"):
            record_figure("sds", f"{name} {part} at {size} px", row[part], "ms/step")


if __name__ == "__main__":
    main()

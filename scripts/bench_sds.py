"""SDS iterations/s at 64 and 256 px and where the time goes (`make bench-sds`).

One SDS step = render (field + compositing, forward) -> VAE encode -> UNet (CFG, 2 x views) ->
backward (VAE encoder + renderer + field) -> AdamW. On a GPU the model is ``sd21-base`` (random
weights: the speed is the same) and the field/renderer use configs/eval.yaml; on CPU the model is
``tiny`` and the field/renderer use configs/eval_tiny.yaml. Prints a table and the projected time
of the full recipe (steps per phase from the config).
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
from evaluation.sds import (
    FieldState,
    build_occupancy,
    make_optimizer,
    sample_step_size,
    sds_step,
)
from models.bundle import build_model


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
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args()

    gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if gpu else "cpu")
    config = args.config or ("configs/eval.yaml" if gpu else "configs/eval_tiny.yaml")
    preset = args.model or ("sd21-base" if gpu else "tiny")
    steps = args.steps or (20 if gpu else 3)
    cfg = load_config(config, args.overrides)
    model = build_model(preset, seed=0, device=device)
    guidance = MultiViewGuidance(
        model, cfg.sds, cfg.cameras.views, device, autocast_dtype(cfg.precision, device)
    )
    cond = model.image_encoder.encode(torch.rand(1, 3, 256, 256, device=device))

    def camera_input(cams):
        return model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)

    print(f"device {device} ({torch.cuda.get_device_name() if gpu else 'CPU'}), model {preset}, "
          f"config {config}, {torch.get_num_threads()} CPU threads")  # fmt: skip
    header = f"{'px':>5} {'views':>5} {'it/s':>7} {'render':>8} {'vae_enc':>8} {'unet':>8} {'backward':>9} {'optim':>7}"
    print(header + "   (ms per step)")
    rates = {}
    recipe = load_config().sds  # views per step and phase lengths of the released recipe
    for index, size in enumerate(int(s) for s in args.resolutions.split(",")):
        # The phase of the schedule that renders at this size sets the views per step.
        phase = min(index, len(recipe.resolution) - 1)
        views = recipe.batch_views[phase]
        run_cfg = load_config(
            config,
            [
                *args.overrides,
                f"sds.resolution=[{size},{size}]",
                f"sds.batch_views=[{views},{views}]",
            ],
        )
        state = FieldState(Field(run_cfg.field).to(device), build_occupancy(run_cfg))
        if state.occupancy is not None:
            state.occupancy = state.occupancy.to(device)
        optimizer = make_optimizer(state.field, run_cfg.optim)
        generator = torch.Generator().manual_seed(0)
        times: dict[str, float] = defaultdict(float)
        step_in_recipe = 0 if phase == 0 else int(recipe.milestones[0])

        @contextlib.contextmanager
        def timer(name: str, record: bool = True, times=times):
            if gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            yield
            if gpu:
                torch.cuda.synchronize()
            if record:
                times[name] += time.perf_counter() - start

        total = 0.0
        for i in range(args.warmup + steps):
            record = i >= args.warmup
            if state.occupancy is not None and i % run_cfg.renderer.occupancy.update_every == 0:
                state.occupancy.update(state.field, sample_step_size(run_cfg), generator)
            begin = time.perf_counter()
            terms = sds_step(
                state, guidance, cond, run_cfg, step_in_recipe + i, generator, camera_input,
                lambda name, r=record: timer(name, r),
            )  # fmt: skip
            with timer("backward", record):
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
            with timer("optim", record):
                optimizer.step()
            if gpu:
                torch.cuda.synchronize()
            if record:
                total += time.perf_counter() - begin
        rate = steps / total
        rates[size] = rate
        ms = {k: 1000 * v / steps for k, v in times.items()}
        print(f"{size:>5} {views:>5} {rate:>7.2f} {ms['render']:>8.1f} {ms['vae_encode']:>8.1f} "
              f"{ms['unet']:>8.1f} {ms['backward']:>9.1f} {ms['optim']:>7.1f}")  # fmt: skip
        record_figure("sds", f"SDS iterations/s at {size} px ({views} views)", rate, "it/s")
        for part in ("render", "vae_encode", "unet", "backward"):
            record_figure("sds", f"{part} at {size} px", ms[part], "ms/step")
    if len(rates) >= 2:
        sizes = sorted(rates)
        first, rest = recipe.milestones[0], recipe.steps - recipe.milestones[0]
        minutes = (first / rates[sizes[0]] + rest / rates[sizes[-1]]) / 60
        print(f"projected full recipe ({first} steps at {sizes[0]} px + {rest} at "
              f"{sizes[-1]} px): {minutes:.1f} min per object")  # fmt: skip
        record_figure(
            "sds", "projected 10k-step recipe", minutes, "min/object", "target <= 15 (GPU)"
        )


if __name__ == "__main__":
    main()

"""One-GPU check of the training stack (``make gpu-check``, under 8 minutes on an H100/H200).

1. Render a few built-in sample objects to 256 px shards (or use ``--data``) and build their
   latent cache.
2. Step benchmark (scripts/bench_train.py): the real stage-1 step on the fly and from the cache,
   beside the plain diffusers UNet step of the same size, in this run: images/s, MFU, memory.
3. Real Lightning runs under DeepSpeed ZeRO-2 in bf16, ``sd21-base`` random init: stage 1 from the
   cache with a checkpoint, a resume that continues the step count, stage 2 initialised from the
   stage-1 checkpoint, an export of the DeepSpeed checkpoint, and the sampler on the export.
Prints a table with the targets of issue 4 and exits non-zero if a functional step fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_train  # noqa: E402


def sh(args: list[str], what: str) -> float:
    start = time.perf_counter()
    print(f"\n=== {what}\n$ {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"FAILED: {what} (exit {result.returncode})")
    return time.perf_counter() - start


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def perf(records: list[dict]) -> dict:
    logged = [r for r in records if "perf/images_per_s" in r][1:]  # the first interval has warm-up
    if not logged:
        return {}
    mean = lambda key: sum(r.get(key, 0.0) for r in logged) / len(logged)  # noqa: E731
    return {
        "images_per_s": mean("perf/images_per_s"),
        "mfu": mean("perf/mfu"),
        "gpu_mem_gb": max(r.get("perf/gpu_mem_gb", 0) for r in logged),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    parser.add_argument(
        "--data", default=None, help="256 px shards (default: render the built-in samples)"
    )
    parser.add_argument("--objects", type=int, default=16, help="objects per step (x4 views)")
    parser.add_argument("--steps", type=int, default=30, help="stage-1 steps before the resume")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (the CPU path is covered by the test suite)")
    out = Path(args.out)
    start = time.perf_counter()
    shards = Path(args.data) if args.data else out / "shards"
    if not args.data and not list(shards.glob("*.tar")):
        from data_prep.config import load_config
        from data_prep.render import render

        render(
            load_config(
                source="samples",
                out=str(shards),
                res=256,
                samples=16,
                num_quads=1,
                num_refs=1,
                workers=8,
                shard_size=4,
                progress=False,
            )
        )
    cache = out / "cache"
    if not list(cache.glob("*.tar")):
        sh(
            [
                "-m",
                "training.latent_cache",
                "--data",
                str(shards),
                "--init",
                "sd21-base",
                "--out",
                str(cache),
                "--resolution",
                "256",
            ],
            "latent cache",
        )

    bench = bench_train.run(bench_train.parse(["--objects", str(args.objects)]))
    gc.collect()  # free the benchmark's models before the training runs start
    torch.cuda.empty_cache()

    common = [
        f"data.batch_size={args.objects}", "data.num_workers=4", "data.steps_per_epoch=1000", "strategy.name=deepspeed",
        "strategy.zero_stage=2", "log.every_n_steps=5", "log.sample_every_n_steps=0", "log.progress_bar=false",
        "train.warmup_steps=5", "model.init=sd21-base", "data.exact_resume=true",
    ]  # fmt: skip
    stage1 = out / "stage1"
    cfg1 = [
        "-m",
        "training.train",
        "--config",
        "configs/stage1-sd21-base.yaml",
        *common,
        f"out={stage1}",
        f"data.train={cache}",
        "data.cached=true",
    ]
    sh(
        [*cfg1, f"train.max_steps={args.steps}", f"checkpoint.every_n_steps={args.steps}"],
        "stage 1, ZeRO-2, bf16, from the latent cache",
    )
    first = perf(metrics(stage1))
    sh(
        [*cfg1, f"train.max_steps={args.steps + 10}", f"checkpoint.every_n_steps={args.steps}"],
        "resume stage 1",
    )
    steps = [r["step"] for r in metrics(stage1)]
    if steps[args.steps :] != list(range(args.steps + 1, args.steps + 11)):
        raise SystemExit(f"FAILED: the resumed run did not continue the step count: {steps}")

    fly = out / "stage1_on_the_fly"
    sh(
        [
            "-m",
            "training.train",
            "--config",
            "configs/stage1-sd21-base.yaml",
            *common,
            f"out={fly}",
            f"data.train={shards}",
            "train.max_steps=20",
            "checkpoint.every_n_steps=1000",
        ],
        "stage 1 on the fly",
    )
    on_the_fly = perf(metrics(fly))

    stage2 = out / "stage2"
    sh(
        [
            "-m",
            "training.train",
            "--config",
            "configs/stage2-sd21-base.yaml",
            *common,
            f"out={stage2}",
            f"data.train={cache}",
            "data.cached=true",
            f"model.init={stage1 / 'checkpoints'}",
            "train.max_steps=15",
            "checkpoint.every_n_steps=15",
        ],
        "stage 2 from the stage-1 checkpoint",
    )
    second = perf(metrics(stage2))
    export = out / "export"
    sh(
        ["-m", "training.checkpoints", str(stage2), "--out", str(export)],
        "export (DeepSpeed ZeRO shards -> model folders)",
    )
    probe = ["-c", "import torch; from models.bundle import load_model; from models.sample import sample_views; "
             f"m = load_model({str(export / 'ema')!r}, device='cuda'); "
             "r = sample_views(m, torch.rand(3, 256, 256), steps=5, progress=False); "
             "assert torch.isfinite(r.images).all(); print('sampled', tuple(r.images.shape))"]  # fmt: skip
    sh(probe, "the sampler loads the export")

    plain = bench["images_per_s"]["plain diffusers UNet"]
    rows = [
        ("plain diffusers UNet step (bench)", plain, None, None),
        (
            "stage-1 step, latent cache (bench)",
            bench["images_per_s"]["latent cache"],
            bench["mfu_latent_cache"],
            bench["peak_memory_gb"],
        ),
        ("stage-1 step, on the fly (bench)", bench["images_per_s"]["on the fly"], None, None),
        (
            "stage 1 Lightning+ZeRO-2, cache",
            first.get("images_per_s"),
            first.get("mfu"),
            first.get("gpu_mem_gb"),
        ),
        (
            "stage 1 Lightning+ZeRO-2, on the fly",
            on_the_fly.get("images_per_s"),
            on_the_fly.get("mfu"),
            on_the_fly.get("gpu_mem_gb"),
        ),
        (
            "stage 2 Lightning+ZeRO-2, cache",
            second.get("images_per_s"),
            second.get("mfu"),
            second.get("gpu_mem_gb"),
        ),
    ]
    print(
        f"\n{torch.cuda.get_device_name()}, sd21-base, {args.objects} objects x 4 views, 256 px, bf16"
    )
    print(f"{'':40} {'img/s':>9} {'MFU':>7} {'peak GB':>8}")
    for name, rate, mfu, mem in rows:
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        print(f"{name:40} {fmt(rate, '9.1f')} {fmt(mfu, '7.1%')} {fmt(mem, '8.1f')}")
    ratio = (first.get("images_per_s") or 0) / plain
    cache_gain = (first.get("images_per_s") or 0) / max(
        on_the_fly.get("images_per_s") or 1e-9, 1e-9
    )
    print(f"\nstage-1 (Lightning, cache) / plain UNet step: {ratio:.2f}x  (target >= 0.9)")
    print(f"MFU stage 1 (Lightning, cache): {first.get('mfu', 0):.1%}  (target >= 35%)")
    print(f"latent cache / on the fly (Lightning): {cache_gain:.2f}x  (target >= 1.6)")
    print(f"total {time.perf_counter() - start:.0f} s; runs under {out}")


if __name__ == "__main__":
    main()

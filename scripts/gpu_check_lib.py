"""Helpers of scripts/gpu_check.py: subprocess runs with per-step timing, metrics.jsonl reading,
the shared inputs (shards, latent cache, one sd21-base model folder), exports and disk pruning."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class Skipped(Exception):
    """A check that cannot run in this environment (reported as SKIPPED, not FAILED)."""


def run_py(args: list[str], what: str, watch: Path | None = None, capture: bool = False) -> dict:
    """``python ARGS`` in the repository root. With ``watch`` (a metrics.jsonl), also the seconds
    from launch to the first new line (start-up + first step). Raises on a non-zero exit."""
    print(f"\n=== {what}\n$ python {' '.join(args)}", flush=True)
    before = len(watch.read_text().splitlines()) if watch and watch.exists() else 0
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
    )
    first = None
    while capture is False and child.poll() is None:
        if watch is not None and first is None and watch.exists():
            if len(watch.read_text().splitlines()) > before:
                first = time.perf_counter() - start
        time.sleep(0.2)
    output = child.communicate()[0] if capture else ""
    if capture:
        print(output, end="", flush=True)
    if child.returncode:
        raise RuntimeError(f"{what}: exit {child.returncode}")
    return {"seconds": time.perf_counter() - start, "first_step_s": first, "output": output}


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def perf(records: list[dict]) -> dict:
    """Mean images/s and MFU, peak memory over the logged intervals but the first (warm-up)."""
    logged = [r for r in records if "perf/images_per_s" in r][1:]
    if not logged:
        return {}
    mean = lambda key: sum(r.get(key, 0.0) for r in logged) / len(logged)  # noqa: E731
    return {
        "img_s": mean("perf/images_per_s"),
        "mfu": mean("perf/mfu"),
        "mem_gb": max(r.get("perf/gpu_mem_gb", 0) for r in logged),
    }


def expect_steps(run: Path, last: int) -> None:
    """metrics.jsonl counts 1..last without a gap or a restart from 0 (resume continued)."""
    steps = [r["step"] for r in metrics(run)]
    if steps != list(range(1, last + 1)):
        raise RuntimeError(f"{run.name}: step count is not 1..{last}: {steps}")


def newest_checkpoint(run: Path, step: int) -> Path:
    from training.checkpoint_files import step_of
    from training.checkpoint_resolve import latest_checkpoint

    found = latest_checkpoint(run)
    if found is None or step_of(found) != step:
        raise RuntimeError(f"{run.name}: expected a checkpoint at step {step}, found {found}")
    return found


def export_and_sample(run: Path, dest: Path, device: str = "cuda") -> dict:
    """Export the run's newest (ZeRO) checkpoint to model folders, then sample 4 views from
    each on the GPU; returns the seconds of both."""
    from models.bundle import load_model
    from models.sample import sample_views
    from training.checkpoint_resolve import latest_checkpoint
    from training.export import export

    start = time.perf_counter()
    folders = export(latest_checkpoint(run), dest)
    exported = time.perf_counter() - start
    for kind, folder in folders.items():
        model = load_model(folder, device=device)
        result = sample_views(model, torch.rand(3, 256, 256), steps=5, progress=False)
        if not torch.isfinite(result.images).all():
            raise RuntimeError(f"{folder}: the sampler gave non-finite images")
        print(f"sampled {kind}: {tuple(result.images.shape)}", flush=True)
        del model, result
        free_gpu()
    return {"export_s": exported, "sample_s": time.perf_counter() - start - exported}


def free_gpu() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def prune(*paths: Path, keep: bool = False) -> None:
    """Delete large outputs (ZeRO checkpoints are ~15 GB each at sd21-base size; the disk of a
    test machine holds only a few). Run folders keep their metrics.jsonl."""
    if keep:
        return
    for path in paths:
        if path.is_dir():
            for name in ("checkpoints", "base_model"):
                if (path / name).exists():
                    shutil.rmtree(path / name, ignore_errors=True)
            if (path / "model.json").exists() or {p.name for p in path.iterdir()} <= {
                "fp32",
                "ema",
            }:
                shutil.rmtree(path, ignore_errors=True)


def disk_free_gb(path: Path) -> float:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 2**30


def fresh(path: Path) -> Path:
    """An empty run folder (a leftover checkpoint would make the run resume)."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def bpy_available() -> bool:
    return importlib.util.find_spec("bpy") is not None


def render_shards(out: Path, objects: int) -> str:
    """256 px shards of the built-in samples (Cycles, GPU when present), or synthetic shards of
    the same schema when bpy is not installed (the training checks need data, not Blender)."""
    from data_prep.config import load_config

    if bpy_available():
        from data_prep.render import render

        summary = render(
            load_config(
                source="samples", out=str(out), res=256, samples=16, num_quads=1, num_refs=1,
                workers=4, shard_size=4, progress=False,
            )
        )  # fmt: skip
        if summary.failed or not summary.rendered and not summary.skipped:
            raise RuntimeError(f"render: failed {summary.failed}")
        return "Cycles"
    synthetic_shards(out, load_config(res=256, num_quads=1, num_refs=1), objects)
    return "synthetic (bpy not installed)"


def synthetic_shards(out: Path, config, objects: int) -> None:
    """Coloured discs on transparency with the cameras and meta.json of a real render plan."""
    import io

    from PIL import Image, ImageDraw

    from data_prep.shard_writer import ShardWriter
    from data_prep.views import plan_views
    from models.shards.format import build_sample

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, 0, 4)
    for index in range(objects):
        key = f"synthetic{index:03d}"
        plan = plan_views(key, config)
        pngs = []
        for view in range(len(plan.fov_deg)):
            image = Image.new("RGBA", (config.res, config.res), (0, 0, 0, 0))
            r = config.res * (4 + view) // 20  # a disc of a different size per view
            colour = (40 * index % 256, 90 * view % 256, 200, 255)
            ImageDraw.Draw(image).ellipse([r, r, config.res - r, config.res - r], fill=colour)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        meta = {"id": key, "source": "synthetic", "license": "CC0-1.0", "resolution": config.res}
        meta |= plan.meta() | {"renderer": {"engine": "synthetic"}}
        writer.add(build_sample(key, pngs, plan.c2w, meta, {}), key)
    writer.close()


def shard_renderer_devices(folder: Path) -> list[str]:
    """``renderer.device`` of every sample's meta.json in the shards of ``folder``."""
    from models.shards.format import read_meta, read_sample, shard_keys

    devices = []
    for shard in sorted(folder.rglob("*.tar")):
        for key in shard_keys(shard):
            meta = read_meta(read_sample(shard, key)).meta
            devices.append(str(meta.get("renderer", {}).get("device")))
    return devices


def sds_speed(
    preset: str = "sd21-base",
    config: str = "configs/eval.yaml",
    sizes: tuple[int, ...] = (64, 256),
    steps: int = 10,
    warmup: int = 2,
    device: str = "cuda",
) -> dict:
    """SDS it/s and time split per render size, measured as ``make bench-sds`` does: compiled
    (torch.compile render step, CUDA-graph UNet: the evaluation default) and eager."""
    from bench_sds import measure_sds

    run = [torch.device(device), list(sizes), steps, warmup]
    compiled = measure_sds(preset, config, *run, compiled=True)
    eager = measure_sds(preset, config, *run, compiled=False)
    return {**compiled, "eager": eager}


def finite_result(folder: Path) -> dict:
    """The result.json of one evaluated object, with its numbers checked finite."""
    found = sorted(folder.glob("objects/*/result.json"))
    if not found:
        raise RuntimeError(f"no result.json under {folder / 'objects'}")
    result = json.loads(found[0].read_text())
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RuntimeError(f"{found[0]}: {key} = {value}")
    return result

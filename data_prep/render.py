"""Render a source of 3D objects into sharded multi-view WebDatasets (``make render-objaverse``).

    python -m data_prep.render --source samples|objaverse|<folder> --out DIR --count N \
        --res 256 --workers 2 [--config configs/render.yaml] [more flags: --help]

Python API: ``render(load_config(..., source="samples", out="..."))`` returns a :class:`RunSummary`.
Rerunning the same command resumes: done objects are skipped, failed ones are retried only with
``--retry-failed``. Partitions (SLURM arrays, RANK/WORLD_SIZE, ``--part-index/--part-count``)
render disjoint slices of one object list into one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from data_prep.config import RenderConfig, add_config_arguments, resolve_from_args
from data_prep.fetching import Feeder
from data_prep.layout import assign, folder_assignment
from data_prep.manifest import (
    Manifest,
    check_folder,
    done_elsewhere,
    recorded_part_count,
    retryable,
)
from data_prep.partition import partition_from_env
from data_prep.pool import WorkerPool
from data_prep.quality import empty_view_problem, quality
from data_prep.runfiles import lock_partition, make_run_scratch
from data_prep.shard_writer import ShardWriter
from data_prep.source_factory import check_source, make_source
from data_prep.sources import ObjectRef, choose
from models.shards.format import RENDER_EXTRAS, build_sample, view_name

if TYPE_CHECKING:  # views imports torch: loaded lazily, while the Blender workers start up
    from data_prep.views import ViewPlan


@dataclass
class RunSummary:
    out: Path
    part: tuple[int, int]
    listed: int = 0
    skipped: int = 0
    rendered: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    views: int = 0
    seconds: float = 0.0
    worker_pids: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)  # summed worker import/setup/render s


def resume_settings(config: RenderConfig) -> dict:
    """Settings that must not change between a run and its resume: every one that changes the
    pixels (the manifest stores them and their fingerprint)."""
    return config.pixel_settings()


def visible_gpus() -> list[str]:
    """NVIDIA GPUs this process may use, without importing torch (CUDA_VISIBLE_DEVICES wins)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def worker_envs(config: RenderConfig) -> list[dict[str, str]]:
    """One environment per worker: its own GPU when GPUs exist, and a bounded share of the CPU
    cores either way (Cycles, OIDN and numpy would otherwise each start one thread per core)."""
    gpus = visible_gpus() if config.device != "cpu" else []
    if not config.threads:
        config.threads = max(1, (os.cpu_count() or 1) // config.workers)
    threads = str(config.threads)
    envs = []
    for index in range(config.workers):
        env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        envs.append(env)
    return envs


def _read_views(out_dir: Path, count: int) -> tuple[list[bytes], dict]:
    pngs = [(out_dir / view_name(i)).read_bytes() for i in range(count)]
    extra = {
        name: (out_dir / name).read_bytes() for name in RENDER_EXTRAS if (out_dir / name).exists()
    }
    return pngs, extra


def _keep_log_tail(log: Path, object_id: str, result: dict, out_dir: Path, lines: int = 40):
    """Append the end of a failed object's Blender log to ``logs/failures.log``."""
    job_log = out_dir / "blender.log"
    tail = job_log.read_text(errors="replace").splitlines()[-lines:] if job_log.exists() else []
    with open(log, "a") as handle:
        handle.write(f"=== {object_id}: {result.get('reason')}: {result.get('detail', '')}\n")
        handle.writelines(line + "\n" for line in tail)


def _meta(
    ref: ObjectRef, plan: ViewPlan, config: RenderConfig, result: dict, figures: dict
) -> dict:
    renderer = config.worker_settings() | {
        "engine": "cycles",
        "device": result.get("device"),
        "blender": result.get("blender"),
    }
    return {
        "id": ref.id,
        "source": ref.source,
        "license": ref.license,
        "resolution": config.res,
        **plan.meta(),
        "renderer": renderer,
        "normalisation": result.get("normalisation", {}),
        "textures": result.get("textures", {}),
        "lighting": result.get("lighting", {}),
        "warnings": result.get("warnings", []),
        "quality": figures,
        **({"attribution": ref.extra["attribution"]} if "attribution" in ref.extra else {}),
        **({"extra": ref.extra} if ref.extra else {}),
    }


def render(config: RenderConfig) -> RunSummary:
    """Render ``config.source`` into ``config.out``; resumes from the folder's manifest."""
    config.validate()
    check_source(config)  # before the output folder is made: a mistyped SOURCE leaves nothing
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    part = partition_from_env(
        config.part_index, config.part_count, recorded=recorded_part_count(out)
    )
    with lock_partition(out, part[0]):
        return _render_partition(config, out, part)


def _render_partition(config: RenderConfig, out: Path, part: tuple[int, int]) -> RunSummary:
    started = time.perf_counter()
    summary = RunSummary(out=out, part=part)
    settings_now = resume_settings(config)
    check_folder(out, part[1], settings_now)  # same layout and pixels as the other partitions
    source = make_source(config)
    assignment = folder_assignment(out)  # hash; round-robin in folders of the earlier layout
    refs = assign(choose(source.list(), config.count, config.seed), *part, assignment)
    summary.listed = len(refs)
    manifest = Manifest(out, part[0], part[1], settings_now, assignment)
    done = set(manifest.done)
    if manifest.assignment == "round-robin":  # a grown count moves objects between partitions
        done |= done_elsewhere(out, part[0])
    todo = [
        ref
        for ref in refs
        if ref.id not in done
        and (
            ref.id not in manifest.failed
            or (config.retry_failed and retryable(manifest.failed[ref.id], config.max_attempts))
        )
    ]
    summary.skipped = len(refs) - len(todo)
    manifest.save(listed=len(refs))
    if not todo:
        manifest.close()
        summary.seconds = time.perf_counter() - started
        return summary

    work = make_run_scratch()
    envs = worker_envs(config)
    by_id = {ref.id: ref for ref in todo}
    plans: dict[str, ViewPlan] = {}
    views_of: dict[str, int] = {}
    bar = tqdm(total=len(todo), unit="obj", disable=not config.progress, dynamic_ncols=True)

    def fail(object_id: str, reason: str, detail: str, tries: int = 1) -> None:
        manifest.add_failure(object_id, reason, detail, tries)
        source.release([object_id])  # its download is not needed any more (delete_after_shard)
        manifest.save_if_due()
        summary.failed[object_id] = reason
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed))

    feeder = Feeder(source, todo, config.prefetch, source.fetch_workers)

    def jobs():
        from data_prep.views import object_seed, plan_views

        settings = config.worker_settings()
        for index, item in enumerate(feeder.items()):
            if item is None:
                yield None  # nothing downloaded yet: the pool keeps collecting results
                continue
            ref, path = item
            if not isinstance(path, Path):
                fail(ref.id, "download_failed", str(path))
                continue
            plans[ref.id] = plan = plan_views(ref.id, config)
            yield {
                "id": ref.id,
                "path": str(path),
                "asset_root": str(ref.asset_root or path.parent),  # where textures are looked for
                "lighting_seed": object_seed(config.seed + 1, ref.id),
                "out_dir": str(work / f"{index:07d}"),  # scratch per object, never shared
                "views": plan.worker_views(),
                "settings": settings,
            }

    writer = ShardWriter(manifest.dir, part[0], config.shard_size, manifest.next_shard_index())

    def finish_shard(done) -> None:
        if done:
            name, ids = done
            counts: dict[str, int] = {}
            for object_id in ids:
                key = str(views_of.pop(object_id))
                counts[key] = counts.get(key, 0) + 1
            manifest.add_shard(name, ids, counts)
            summary.shards.append(name)
            source.release(ids)

    try:
        pool = WorkerPool(
            envs,
            out / "logs",
            config.timeout_s,
            config.crash_retries,
            timeout_retries=config.timeout_retries,
            recycle_after=config.recycle_after,
        )
        with pool:
            summary.worker_pids = pool.pids
            for job, result in pool.run(jobs()):
                ref, out_dir = by_id[job["id"]], Path(job["out_dir"])
                plan = plans.pop(ref.id, None)
                problem = None
                if result.get("ok"):
                    pngs, extra = _read_views(out_dir, len(plan.fov_deg))
                    figures = quality(pngs)
                    problem = empty_view_problem(figures, config.min_coverage)
                if result.get("ok") and problem is None:
                    meta = _meta(ref, plan, config, result, figures)
                    sample = build_sample(ref.key, pngs, plan.c2w, meta, extra)
                    manifest.add_warnings(ref.id, result.get("warnings", []))
                    views_of[ref.id] = len(pngs)
                    finish_shard(writer.add(sample, ref.id))
                    summary.rendered += 1
                    summary.views += len(pngs)
                    for stage, seconds in result.get("timing", {}).items():
                        summary.timing[stage] = summary.timing.get(stage, 0.0) + seconds
                    bar.update(1)
                else:
                    if problem is not None:
                        result = {"reason": "empty_view", "detail": problem}
                    reason, detail = result.get("reason", "unknown"), result.get("detail", "")
                    fail(ref.id, reason, detail, int(result.get("attempts", 1)))
                    _keep_log_tail(out / "logs" / "failures.log", ref.id, result, out_dir)
                shutil.rmtree(out_dir, ignore_errors=True)
                summary.worker_pids = pool.pids
    finally:
        feeder.close()
        finish_shard(writer.close())  # objects in the open shard are complete: keep them
        manifest.close()
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--summary-json", default=None, help="also write the run summary here")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between flags
    summary_json = args.__dict__.pop("summary_json")
    try:
        config, resolved = resolve_from_args(args)
        if args.print_config:
            print(resolved.describe())
            return 0
        summary = render(config)
    except (KeyError, ValueError, FileNotFoundError, ConnectionError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    index, count = summary.part
    rate = summary.rendered / summary.seconds if summary.seconds else 0.0
    print(
        f"partition {index}/{count}: {summary.listed} objects, {summary.skipped} already done or "
        f"failed before, {summary.rendered} rendered ({summary.views} views, {rate:.2f} obj/s), "
        f"{len(summary.failed)} failed, {len(summary.shards)} new shards in {summary.out}"
    )
    for object_id, reason in sorted(summary.failed.items()):
        print(f"  failed {object_id}: {reason}")
    if summary_json:
        Path(summary_json).write_text(
            json.dumps(dataclasses.asdict(summary), default=str, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

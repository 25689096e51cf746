"""Render benchmark (``make bench-render``): seconds per view, per-object overhead, objects/hour,
and the whole pipeline (worker processes, shards, manifest) against a plain single-process
Blender loop rendering the same meshes with the same cameras and settings, in one run.

    python scripts/bench_render.py [--objects 8] [--res 256] [--samples 32] [--num-quads 2]
                                   [--num-refs 2] [--workers 1] [--device auto]
                                   [--heavy-subdivisions 8]

Then a heavy mesh (an icosphere of 20 * 4**subdivisions triangles: 1.3 M at 8) is rendered by the
plain loop twice, with and without scene reuse between views (Cycles' persistent data), and
seconds per view are printed for both (views 2.. show the reuse; view 1 builds the scene).

Targets: per-object overhead <= 0.5 s, pipeline <= 1.1 x the plain loop. Prints figures; not a
test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import record  # noqa: E402  (scripts/ is on sys.path when run)


def plain_loop(jobs_file: str) -> None:
    """The baseline: one process, ``import bpy`` once, the worker's own render code per object,
    no isolation, no timeout, no shards, no manifest."""
    started = time.perf_counter()
    from data_prep.blender_worker import render_job  # imports bpy

    jobs = json.loads(Path(jobs_file).read_text())
    render_seconds, views = 0.0, []
    for job in jobs:
        result = render_job(job)
        render_seconds += result["timing"]["render"]
        views.append(result["view_seconds"])
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "render": render_seconds, "view_seconds": views}))


def heavy_mesh(path: Path, subdivisions: int) -> int:
    """A bumpy icosphere GLB (bumps keep the BVH honest); returns its triangle count."""
    import numpy as np
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions)
    bumps = 1 + 0.05 * np.sin(8 * mesh.vertices).sum(axis=1, keepdims=True)
    mesh.vertices = mesh.vertices * bumps
    mesh.export(path)
    return len(mesh.faces)


def run_plain_loop(jobs: list[dict], jobs_file: Path) -> tuple[float, dict]:
    jobs_file.write_text(json.dumps(jobs))
    started = time.perf_counter()
    reply = subprocess.run(
        [sys.executable, __file__, "--plain-loop", str(jobs_file)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, json.loads(reply.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=8, help="objects (built-in samples, cycled)")
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--num-quads", type=int, default=2)
    parser.add_argument("--num-refs", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=1, help="pipeline workers (1 = same compute as the loop)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="outputs/bench-render")
    parser.add_argument(
        "--heavy-subdivisions", type=int, default=8, help="heavy mesh: 20 * 4**N triangles"
    )
    parser.add_argument("--heavy-views", type=int, default=4)
    parser.add_argument("--plain-loop", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(args.plain_loop)
        return

    from data_prep.config import load_config
    from data_prep.samples import SAMPLES, write_samples
    from data_prep.views import plan_views

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    meshes = out / "meshes"
    names = list(SAMPLES)
    originals = write_samples(out / "originals")
    meshes.mkdir(parents=True)
    for i in range(args.objects):  # more objects than samples: copies under new names
        shutil.copy(
            originals[names[i % len(names)]], meshes / f"{names[i % len(names)]}_{i:03d}.glb"
        )
    settings = dict(
        res=args.res,
        samples=args.samples,
        num_quads=args.num_quads,
        num_refs=args.num_refs,
        denoise=args.denoise,
        device=args.device,
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if not isinstance(v, bool)]
    flags.append("--denoise" if args.denoise else "--no-denoise")

    # 1) the pipeline, as a user runs it (fresh process: imports, pool, shards, manifest), on
    #    one object and on all: the difference separates the once-per-run start-up from the
    #    per-object overhead.
    def pipeline(source: Path, name: str) -> tuple[float, dict]:
        summary_file = out / f"{name}.json"
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "data_prep.render",
                "--source",
                str(source),
                "--out",
                str(out / name),
                "--workers",
                str(args.workers),
                "--no-progress",
                "--summary-json",
                str(summary_file),
                *flags,
            ],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started, json.loads(summary_file.read_text())

    single = out / "single"
    single.mkdir()
    first = sorted(meshes.glob("*.glb"))[0]
    shutil.copy(first, single / first.name)
    single_wall, single_summary = pipeline(single, "shards-single")
    pipeline_wall, summary = pipeline(meshes, "shards")

    # 2) the plain loop on the same meshes, cameras and settings
    config = load_config(source=str(meshes), out=str(out / "plain"), workers=1, **settings)
    from data_prep.render import worker_envs

    worker_envs(config)  # same thread count rule as the pipeline
    jobs = []
    for path in sorted(meshes.glob("*.glb")):
        plan = plan_views(path.stem, config)
        jobs.append(
            {
                "id": path.stem,
                "path": str(path),
                "out_dir": str(out / "plain" / path.stem),
                "views": plan.worker_views(),
                "settings": config.worker_settings(),
            }
        )
    plain_wall, plain = run_plain_loop(jobs, out / "jobs.json")

    # 3) a heavy mesh, plain loop, with and without scene reuse between views
    heavy_path = out / "heavy" / "heavy.glb"
    heavy_path.parent.mkdir(parents=True)
    triangles = heavy_mesh(heavy_path, args.heavy_subdivisions)
    heavy_config = load_config(
        source=str(heavy_path.parent),
        out=str(out / "heavy"),
        workers=1,
        **(settings | {"num_quads": 1, "num_refs": max(0, args.heavy_views - 4)}),
    )
    worker_envs(heavy_config)
    heavy_plan = plan_views("heavy", heavy_config)
    heavy_jobs = [
        {
            "id": f"heavy-{reuse}",
            "path": str(heavy_path),
            "out_dir": str(out / "heavy" / f"reuse-{reuse}"),
            "views": heavy_plan.worker_views()[: args.heavy_views],
            "settings": heavy_config.worker_settings() | {"persistent_data": reuse},
        }
        for reuse in (True, False)
    ]
    _, heavy = run_plain_loop(heavy_jobs, out / "heavy_jobs.json")
    with_reuse, without_reuse = heavy["view_seconds"]

    objects, views = summary["rendered"], summary["views"]
    render_s = summary["timing"].get("render", 0.0)
    beyond_render_n = pipeline_wall - render_s
    beyond_render_1 = single_wall - single_summary["timing"].get("render", 0.0)
    overhead = (beyond_render_n - beyond_render_1) / max(objects - 1, 1)
    startup = beyond_render_1 - overhead
    per_object = render_s / max(objects, 1) + overhead
    figures = {
        "objects": objects,
        "views": views,
        "settings": settings | {"workers": args.workers},
        "seconds_per_view": render_s / max(views, 1),
        "per_object_overhead_s": overhead,
        "startup_once_per_run_s": startup,
        "objects_per_hour_steady": 3600 / per_object * args.workers,
        "objects_per_hour_this_run": objects / pipeline_wall * 3600,
        "pipeline_wall_s": pipeline_wall,
        "plain_loop_wall_s": plain_wall,
        "plain_loop_seconds_per_view": plain["render"] / max(views, 1),
        "plain_loop_beyond_render_per_object_s": (plain_wall - plain["render"]) / max(objects, 1),
        "pipeline_over_plain": pipeline_wall / plain_wall,
        "heavy_triangles": triangles,
        "heavy_view_seconds_with_reuse": with_reuse,
        "heavy_view_seconds_without_reuse": without_reuse,
    }
    later = slice(1, None) if len(with_reuse) > 1 else slice(None)
    reuse_later = sum(with_reuse[later]) / len(with_reuse[later])
    fresh_later = sum(without_reuse[later]) / len(without_reuse[later])
    print(json.dumps(figures, indent=1))
    print(
        f"\n{objects} objects x {views // max(objects, 1)} views at {args.res}px, "
        f"{args.samples} samples, {args.workers} worker(s): {figures['seconds_per_view']:.3f} s/view; "
        f"per-object overhead {overhead:.3f} s (target <= 0.5) plus {startup:.2f} s start-up per "
        f"run; {figures['objects_per_hour_steady']:.0f} objects/hour steady "
        f"({figures['objects_per_hour_this_run']:.0f} in this short run); pipeline "
        f"{pipeline_wall:.1f} s vs plain loop {plain_wall:.1f} s = "
        f"{figures['pipeline_over_plain']:.2f}x (target <= 1.1)\n"
        f"heavy mesh ({triangles} triangles), seconds per view 1..{len(with_reuse)}: with scene "
        f"reuse {', '.join(f'{t:.2f}' for t in with_reuse)}; without "
        f"{', '.join(f'{t:.2f}' for t in without_reuse)} (views 2..: {reuse_later:.3f} vs "
        f"{fresh_later:.3f} s/view)"
    )
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    where = f"{args.res} px, {args.samples} samples, {args.workers} worker(s)"
    record("render", "seconds per view", figures["seconds_per_view"], "s", where)
    record("render", "per-object overhead", overhead, "s", "target <= 0.5")
    record("render", "objects/hour (steady)", figures["objects_per_hour_steady"], "obj/h")
    record("render", "pipeline / plain bpy loop", figures["pipeline_over_plain"], "x", "<= 1.1")
    heavy_where = f"{triangles} triangles, views 2..{len(with_reuse)}"
    record("render", "heavy mesh s/view, scene reuse", reuse_later, "s", heavy_where)
    record("render", "heavy mesh s/view, no reuse", fresh_later, "s", heavy_where)


if __name__ == "__main__":
    main()

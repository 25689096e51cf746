"""``make eval``: image(s) -> SDS 3D -> renders, mesh, video -> scores -> report.

Objects are sorted by id and dealt round-robin to ``world_size`` workers; a worker's rank comes
from ``--rank/--world-size``, a SLURM array (``SLURM_ARRAY_TASK_ID``/``_COUNT``) or
``RANK``/``WORLD_SIZE``. On a machine with several GPUs the process starts one worker per GPU
(each sees only its GPU), so N machines x G GPUs split the objects N*G ways. Done objects (with a
``result.json``) are skipped; an interrupted object resumes from its field checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from evaluation.config import load_config
from evaluation.evaluate import Evaluator, is_done
from evaluation.inputs import list_objects
from evaluation.report import build_report

log = logging.getLogger("evaluation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SDS image-to-3D and CLIP-similarity evaluation over a folder of images or "
        "held-out shards. Extra `key.sub=value` arguments override configs/eval.yaml."
    )
    parser.add_argument("--config", help="YAML on top of configs/eval.yaml")
    parser.add_argument("--images", help="folder of images or shards (inputs.path)")
    parser.add_argument("--model", help="model folder in our format (model.path)")
    parser.add_argument("--out", default="outputs/eval", help="output folder")
    parser.add_argument("--steps", type=int, help="SDS steps (sds.steps)")
    parser.add_argument("--rank", type=int, help="this worker's index (default: from env)")
    parser.add_argument("--world-size", type=int, help="number of workers (default: from env)")
    parser.add_argument(
        "--gpus", default="all", help="'all', a comma list of GPU ids, or 'none' (one process)"
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="redo exports and scores of done objects from their field checkpoints (no SDS)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip rebuilding the report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_intermixed_args(argv)  # overrides may sit between flags


def partition_from_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) from the flags, else a SLURM array, else RANK/WORLD_SIZE, else (0, 1)."""
    env = os.environ
    if rank is None and world_size is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            rank, world_size = (
                int(env["SLURM_ARRAY_TASK_ID"]) - low,
                int(env["SLURM_ARRAY_TASK_COUNT"]),
            )
        else:
            rank, world_size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    rank, world_size = int(rank or 0), int(world_size or 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} is not in [0, --world-size {world_size})")
    return rank, world_size


def local_gpus(spec: str) -> list[str]:
    if spec == "none":
        return []
    if spec == "all":
        return [str(i) for i in range(torch.cuda.device_count())]
    return [g.strip() for g in spec.split(",") if g.strip()]


def spawn_per_gpu(argv: list[str], gpus: list[str], rank: int, world: int) -> int:
    """One child per GPU with ranks ``rank*G + g`` of ``world*G``; returns the worst exit code."""
    children = []
    for index, gpu in enumerate(gpus):
        args = [sys.executable, "-m", "evaluation.run", *argv]
        args += ["--rank", str(rank * len(gpus) + index), "--world-size", str(world * len(gpus))]
        args += ["--gpus", "none", "--no-report"] + (["--no-progress"] if index else [])
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        children.append(subprocess.Popen(args, env=env))
    return max(child.wait() for child in children)


def strip_partition_flags(argv: list[str]) -> list[str]:
    """The user's arguments without the flags the parent sets per child."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--rank", "--world-size", "--gpus"):
            skip = True
            continue
        if arg.split("=", 1)[0] in ("--rank", "--world-size", "--gpus"):
            continue
        out.append(arg)
    return out


def evaluate_partition(
    cfg, out: Path, rank: int, world: int, progress: bool, rescore: bool = False
) -> list[str]:
    """Evaluate this worker's share; returns the ids it evaluated (skipped ones excluded).
    ``rescore`` redoes done objects: their field checkpoint is complete, so only the exports
    and scores run again (e.g. with another scoring backbone)."""
    refs = list_objects(cfg.inputs)[rank::world]
    todo = [r for r in refs if rescore or not is_done(out / "objects" / r.id)]
    log.info(
        "rank %d/%d: %d objects, %d done, %d to go",
        rank,
        world,
        len(refs),
        len(refs) - len(todo),
        len(todo),
    )
    if not todo:
        return []
    evaluator = Evaluator(cfg, progress=progress)
    done = []
    for ref in tqdm(todo, desc=f"objects (rank {rank})", disable=not progress):
        evaluator(ref, out / "objects" / ref.id)
        done.append(ref.id)
    return done


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    extra: dict = {}
    if args.images:
        extra.setdefault("inputs", {})["path"] = args.images
    if args.model:
        extra.setdefault("model", {})["path"] = args.model
    if args.steps is not None:
        extra.setdefault("sds", {})["steps"] = args.steps
    cfg = load_config(args.config, args.overrides, extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rank, world = partition_from_env(args.rank, args.world_size)
    gpus = local_gpus(args.gpus) if cfg.device in ("auto", "cuda") else []
    if len(gpus) > 1:
        code = spawn_per_gpu(strip_partition_flags(argv), gpus, rank, world)
        if code:
            raise SystemExit(f"a GPU worker failed with exit code {code}")
    else:
        evaluate_partition(cfg, out, rank, world, not args.no_progress, args.rescore)
    if not args.no_report:
        summary = build_report(out, cfg.report.clip_unit, cfg.report.embed_video)
        clip = summary["clip"]
        print(f"report: {out / 'index.html'}  clip ({cfg.report.clip_unit}) mean {clip['mean']}")


if __name__ == "__main__":
    main()

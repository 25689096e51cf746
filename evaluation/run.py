"""``make eval``: image(s) -> SDS 3D -> renders, mesh, video -> scores -> report.

Objects are sorted by id and dealt round-robin to ``world_size`` workers; a worker's rank comes
from ``--rank/--world-size``, a SLURM array (``SLURM_ARRAY_TASK_ID``; a resubmitted task takes
the count ``expected.json`` recorded) or ``RANK``/``WORLD_SIZE``. On a machine with several GPUs
the process starts one worker per GPU (each sees only its GPU), so N machines x G GPUs split the
objects N*G ways.

A done object (``result.json``) is skipped only when it was made with the same model, config and
scorer (``evaluation/fingerprint.py``); otherwise the run refuses and names what changed
(``--rescore`` redoes exports and scores of a kept field, ``--recompute`` starts the object
again). An interrupted object resumes from its field checkpoint. An object that fails is recorded
(``failed.json``, shown in the report) and the others go on; the report is written even when a
worker fails, and the exit code says that something failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from cluster import array
from evaluation import fingerprint as fp
from evaluation.config import ConfigError, resolve_config
from evaluation.evaluate import FAILED, RESULT, STARTED, Evaluator, read_json, write_json_atomic
from evaluation.inputs import ObjectRef, list_objects
from evaluation.report import build_report, console_summary
from evaluation.schedules import schedule_warnings

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
        help="redo exports and scores of done objects from their field checkpoints (no SDS; "
        "more --steps continue the optimisation); refused if the model or SDS settings changed",
    )
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="start again every object whose recorded model/config/scorer differ from this run",
    )
    parser.add_argument("--no-report", action="store_true", help="skip rebuilding the report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (and where each value came from), evaluate nothing",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_intermixed_args(argv)  # overrides may sit between flags


def partition_from_env(
    rank: int | None, world_size: int | None, out: Path | None = None
) -> tuple[int, int]:
    """(rank, world size) from the flags, else a SLURM array task (its id is the rank, the count
    the array's), else RANK/WORLD_SIZE, else (0, 1). An array that does not start at 0 is a
    resubmitted part of an earlier one (``--array=3`` of 8): its count is the one the output
    folder recorded, so the task takes its share of the original split."""
    partial = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0)) > 0
    recorded = recorded_world_size(out) if out is not None and partial else None
    try:
        return array.partition_from_env(rank, world_size, recorded=recorded)
    except ValueError as error:
        raise ValueError(f"--rank/--world-size: {error}") from None


def recorded_world_size(out: Path) -> int | None:
    """How many workers the folder's evaluation was split into (expected.json), if recorded."""
    expected = out / "expected.json"
    if not expected.is_file():
        return None
    value = read_json(expected).get("world_size")
    return int(value) if isinstance(value, int) and value > 0 else None


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


class Refused(SystemExit):
    """Done objects were made with other settings; the message names them and the way out."""


def plan(
    refs: list[ObjectRef], out: Path, current: dict, rescore: bool, recompute: bool
) -> tuple[list[tuple[ObjectRef, dict]], list[str]]:
    """Which objects to evaluate (with their fingerprints) and which conflicts refuse the run."""
    todo, conflicts = [], []
    for ref in refs:
        folder = out / "objects" / ref.id
        try:
            digest = ref.digest()
        except OSError:
            digest = None  # unreadable: evaluating it records the failure
        mine = fp.make(current["cfg"], current["identity"], digest)
        result = read_json(folder / RESULT)
        started = read_json(folder / STARTED)
        if result is not None:
            changed = fp.changes(result.get("fingerprint"), mine)
            if not changed and not rescore:
                continue  # done with these very settings
            kept_field = not set(changed) & set(fp.FIELD_GROUPS)
            fewer = int(result.get("steps", 0)) > int(current["cfg"].sds.steps)
            if rescore and kept_field and not fewer:
                todo.append((ref, mine))
                continue
        elif (folder / FAILED).is_file():
            if started is None or set(fp.changes(started, mine)) & set(fp.FIELD_GROUPS):
                reset(folder)  # a failed object has no result to protect: retry afresh
            todo.append((ref, mine))
            continue
        elif started is not None:
            changed = fp.changes(started, mine)
            changed = {g: v for g, v in changed.items() if g in fp.FIELD_GROUPS}
            if not changed:
                todo.append((ref, mine))  # interrupted: resumes from its field checkpoint
                continue
            fewer = False
        else:
            todo.append((ref, mine))
            continue
        if recompute:
            reset(folder)
            todo.append((ref, mine))
            continue
        what = "; ".join(f"{g}: {', '.join(lines[:3])}" for g, lines in changed.items())
        if fewer:
            what += f"; its field has {result['steps']} steps, more than sds.steps"
        hint = "--recompute" if set(changed) & set(fp.FIELD_GROUPS) or fewer else "--rescore"
        state = "done" if result else "started"
        conflicts.append(f"{ref.id} ({state}) with other {what} [{hint}]")
    return todo, conflicts


def reset(folder: Path) -> None:
    """Forget an object's results and field so it starts again (inputs are never touched)."""
    for name in (RESULT, STARTED, FAILED, "field.pt"):
        (folder / name).unlink(missing_ok=True)
    for sub in ("views", "normal", "textureless", "mesh", "sampled"):
        shutil.rmtree(folder / sub, ignore_errors=True)


def refusal_message(conflicts: list[str]) -> str:
    shown = "\n  ".join(conflicts[:10]) + ("\n  ..." if len(conflicts) > 10 else "")
    return (
        f"refusing: {len(conflicts)} object(s) in this output folder were made with other "
        f"settings than this run:\n  {shown}\n"
        "Use another --out, --rescore (exports, scorer or more steps; keeps the field), or "
        "--recompute (starts those objects again)."
    )


def record_failure(folder: Path, ref: ObjectRef, err: BaseException) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / RESULT
    if stale.is_file():  # a failed rescore: the old result no longer matches this run
        os.replace(stale, folder / "result.stale.json")
    write_json_atomic(
        folder / FAILED,
        {
            "id": ref.id,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exception(err)[-6:],
        },
    )


def evaluate_partition(
    cfg,
    out: Path,
    rank: int,
    world: int,
    progress: bool,
    rescore: bool = False,
    recompute: bool = False,
) -> tuple[list[str], list[str]]:
    """Evaluate this worker's share; returns (evaluated ids, failed ids). ``rescore`` redoes done
    objects' exports and scores from their field checkpoints (e.g. with another scoring backbone);
    ``recompute`` starts again objects made with other settings."""
    refs = list_objects(cfg.inputs)[rank::world]
    current = {"cfg": cfg, "identity": fp.model_identity(cfg)}
    todo, conflicts = plan(refs, out, current, rescore, recompute)
    if conflicts:
        raise Refused(refusal_message(conflicts))
    log.info(
        "rank %d/%d: %d objects, %d done, %d to go",
        rank,
        world,
        len(refs),
        len(refs) - len(todo),
        len(todo),
    )
    if not todo:
        return [], []
    evaluator = Evaluator(cfg, progress=progress)
    done, failed = [], []
    for ref, mine in tqdm(todo, desc=f"objects (rank {rank})", disable=not progress):
        folder = out / "objects" / ref.id
        try:
            evaluator(ref, folder, mine)
        except Exception as err:  # one bad object must not stop the others
            log.error("object %s failed: %s: %s", ref.id, type(err).__name__, err)
            record_failure(folder, ref, err)
            failed.append(ref.id)
            continue
        (folder / FAILED).unlink(missing_ok=True)
        done.append(ref.id)
    return done, failed


NO_MODEL = (
    "error: no model to evaluate: pass MODEL=<model folder> to make eval (--model: a folder from "
    "make export or make convert-model), or model.size=tiny (ARGS=model.size=tiny) for a "
    "random-init pipeline check whose scores mean nothing"
)


def write_expected(out: Path, cfg, world_size: int = 1) -> None:
    """All object ids of the input (every rank), so the report can name the missing ones, and the
    number of workers they are split between (a resubmitted array task reads it back)."""
    ids = [ref.id for ref in list_objects(cfg.inputs)]
    out.mkdir(parents=True, exist_ok=True)
    record = {"inputs": str(cfg.inputs.path), "objects": ids, "world_size": world_size}
    write_json_atomic(out / "expected.json", record)


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
    try:
        cfg, resolved = resolve_config(args.config, args.overrides, extra)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if args.print_config:
        print(resolved.describe())
        return
    for warning in schedule_warnings(cfg):  # e.g. --steps below a schedule given in steps
        log.warning(warning)
    if not cfg.model.path and resolved.is_default("model.size"):
        raise SystemExit(NO_MODEL)  # a random model is a pipeline check: it must be asked for
    out = Path(args.out)
    try:
        rank, world = partition_from_env(args.rank, args.world_size, out)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:  # an empty or missing input folder fails here, in one line, before anything is written
        write_expected(out, cfg, world)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    gpus = local_gpus(args.gpus) if cfg.device in ("auto", "cuda") else []
    problem = None
    try:
        if len(gpus) > 1:
            code = spawn_per_gpu(strip_partition_flags(argv), gpus, rank, world)
            if code:
                problem = f"a GPU worker failed with exit code {code}"
        else:
            _, failed = evaluate_partition(
                cfg, out, rank, world, not args.no_progress, args.rescore, args.recompute
            )
            if failed:
                problem = f"{len(failed)} object(s) failed: {', '.join(failed[:10])}"
    except Refused:
        raise  # nothing was evaluated: the report of the folder is unchanged
    except Exception as err:  # this worker died: still report what every worker finished
        problem = f"rank {rank} failed: {type(err).__name__}: {err}"
        log.exception(problem)
    if not args.no_report:
        summary = build_report(out, cfg.report.clip_unit)
        print(console_summary(out, summary, cfg.report.clip_unit))
    if problem:
        raise SystemExit(f"{problem} (reasons in {out / 'index.html'} and objects/*/failed.json)")


if __name__ == "__main__":
    main()

"""``make render-objaverse`` / ``make render-samples`` on a SLURM cluster: one array task per
partition (``--part-index $SLURM_ARRAY_TASK_ID --part-count N``), then the manifest merge and the
summary as a job that starts when the whole array has ended (``afterany``: it also reports the
partitions still missing). Resubmitting one task (``sbatch --array=7 OUT/slurm/render.sbatch``) or
the whole array renders only what is missing: each task resumes from its partition's manifest.

Without a SLURM controller (or inside a job, e.g. a hand-written array script) the render runs
here, exactly as ``python -m data_prep.render``. The config, source and output folder's layout are
checked on the submitting host before anything is queued.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import slurm
from data_prep import render
from data_prep.config import add_config_arguments, resolve_from_args
from data_prep.manifest import recorded_part_count


def render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.render", add_help=False)
    add_config_arguments(parser)
    parser.add_argument("--summary-json", default=None)
    return parser


def scripts(rest: list[str], out: Path, tasks: int, gpus: int, options) -> list[tuple]:
    """(path, text, name, dependency kind) of the array and of the merge job."""
    logs = out / "slurm"
    array = slurm.header(
        "render", options, logs / "render-%A_%a.out", gpus_per_node=gpus,
        array=f"0-{tasks - 1}", requeue=True,
    )  # fmt: skip
    python = sys.executable
    render_cmd = slurm.python_command(python, "data_prep.render", [*rest, "--out", str(out)])
    array_text = slurm.job_script(
        array,
        "One partition per task; its manifest makes a rerun of the task resume.",
        [
            'echo "array task $SLURM_ARRAY_TASK_ID on $SLURMD_NODENAME"',
            f'{render_cmd} --part-index "$SLURM_ARRAY_TASK_ID" --part-count {tasks}',
        ],
    )
    merge_options = slurm.JobOptions(
        partition=options.partition, account=options.account, qos=options.qos,
        extra=options.extra,
    )  # fmt: skip
    merge = slurm.header("render-merge", merge_options, logs / "render-merge-%j.out")
    merge_text = slurm.job_script(
        merge,
        "After every array task: one manifest.json (or the partitions still missing), summary.",
        [
            slurm.python_command(python, "data_prep.summary", ["merge", str(out)]),
            "status=$?",
            slurm.python_command(python, "data_prep.summary", ["summary", str(out)]),
            "exit $status",
        ],
        strict=False,
    )
    return [
        (logs / "render.sbatch", array_text, "render", None),
        (logs / "render-merge.sbatch", merge_text, "render-merge", "afterany"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # the render's own flags pass through untouched
    )  # fmt: skip
    parser.add_argument(
        "--tasks", type=int, default=None,
        help="array tasks = partitions (default: the folder's recorded layout, else 8)",
    )  # fmt: skip
    parser.add_argument("--gpus-per-task", type=int, default=0, help="GPUs of each array task")
    slurm.add_job_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        if slurm.runs_here(args.launcher):
            return render.main(rest)
        config = render_parser().parse_intermixed_args(rest)
        resolved = resolve_from_args(config)[0]
        resolved.validate()
        out = Path(resolved.out).resolve()
        recorded = recorded_part_count(out)
        tasks = args.tasks or recorded or 8
        if recorded and recorded != tasks:
            raise ValueError(
                f"{out} is split into {recorded} partitions: TASKS={tasks} would render objects "
                f"twice; use TASKS={recorded} or another OUT"
            )
        options = slurm.options_from_args(args)
        print(
            f"render {resolved.source} -> {out}: {tasks} array tasks (one partition each), "
            f"{resolved.workers} worker(s) per task, then merge + summary"
        )
        ids = slurm.submit_chain(
            scripts(rest, out, tasks, args.gpus_per_task, options), args.dry_run
        )
        if ids:
            print(f"Resubmit one task: sbatch --array=7 {out}/slurm/render.sbatch (it resumes)")
    except (ValueError, FileNotFoundError, slurm.SlurmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make eval`` on a SLURM cluster: one job of NODES nodes, one task per node, each using all of
its node's GPUs (``evaluation.run`` starts one worker per GPU), so N nodes x G GPUs split the
objects N*G ways (``--rank $SLURM_PROCID --world-size $SLURM_NTASKS``); when every task has ended,
the job writes the one report of the folder. A requeued or resubmitted job skips the objects done
and resumes the others from their field checkpoints.

Without a SLURM controller (or inside a job) it runs here, exactly as ``python -m evaluation.run``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cluster import slurm
from evaluation import run
from evaluation.config import ConfigError, resolve_config


def script(rest: list[str], out: Path, nodes: int, gpus: int, options) -> str:
    lines = slurm.header(
        "eval", options, out / "slurm" / "eval-%j.out", nodes=nodes, gpus_per_node=gpus,
        requeue=True,
    )  # fmt: skip
    task = slurm.python_command(
        sys.executable, "evaluation.run", [*rest, "--out", str(out), "--no-report"]
    )
    per_task = f'echo "task $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME"; exec {task} --rank "$SLURM_PROCID" --world-size "$SLURM_NTASKS"'  # noqa: E501
    report = slurm.python_command(sys.executable, "evaluation.report", ["--out", str(out)])
    return slurm.job_script(
        lines,
        "One task per node (it starts a worker per GPU of its node), then one report.",
        [
            f"srun bash -c {shlex.quote(per_task)}",
            "status=$?  # failed objects are listed in the report; the job then fails too",
            report,
            "exit $status",
        ],
        strict=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )  # fmt: skip
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the SLURM job")
    slurm.add_job_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        if "--print-config" in rest or slurm.runs_here(args.launcher):
            run.main(rest)
            return 0
        given = run.parse_args(rest)
        extra = {"inputs": {"path": given.images}} if given.images else {}
        if given.model:
            extra["model"] = {"path": given.model}
        cfg, resolved = resolve_config(given.config, given.overrides, extra)
        if not cfg.model.path and resolved.is_default("model.size"):
            raise ConfigError(run.NO_MODEL)
        if not cfg.inputs.path or not Path(cfg.inputs.path).exists():
            raise FileNotFoundError(f"IMAGES: {cfg.inputs.path or '(none)'} does not exist")
        partition = slurm.partition_info(args.partition)
        gpus = 0 if given.gpus == "none" else partition.gpus
        slurm.check_request(partition, gpus, 0 if args.dry_run else args.nodes)
        out = Path(given.out).resolve()
        print(
            f"eval {cfg.inputs.path} -> {out}: {args.nodes} node(s) x {max(gpus, 1)} worker(s) "
            f"(partition {partition.name}, {partition.gres}), then one report"
        )
        text = script(rest, out, args.nodes, gpus, slurm.options_from_args(args))
        slurm.submit_chain([(out / "slurm" / "eval.sbatch", text, "eval", None)], args.dry_run)
    except (ConfigError, FileNotFoundError, slurm.SlurmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

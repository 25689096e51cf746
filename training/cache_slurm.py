"""``make cache-latents`` on a SLURM cluster: one job of NODES nodes with one task per GPU of a
node (one per node without GPUs), each task a rank of ``training.latent_cache`` (``SLURM_PROCID``
of ``SLURM_NTASKS``) caching every world-th input shard. A requeued or resubmitted job keeps the
shards already cached. The folder is the same bytes as a one-process cache.

Without a SLURM controller (or inside a job) it runs here, as ``python -m training.latent_cache``;
under torchrun each process is a rank (``RANK``/``WORLD_SIZE``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import slurm
from training import latent_cache


def script(rest: list[str], out: Path, nodes: int, gpus: int, options: slurm.JobOptions) -> str:
    lines = slurm.header(
        "cache-latents", options, out / "slurm" / "cache-latents-%j.out", nodes=nodes,
        tasks_per_node=max(gpus, 1), gpus_per_node=gpus, requeue=True,
    )  # fmt: skip
    command = slurm.python_command(sys.executable, "training.latent_cache", rest)
    return slurm.job_script(
        lines,
        "One rank per task (SLURM_PROCID of SLURM_NTASKS): rank r caches input shards r, r+N, ...",
        [
            "srun bash -c 'echo \"rank $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME\"'",
            f"srun --kill-on-bad-exit=1 {command}",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )  # fmt: skip
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the SLURM job")
    parser.add_argument(
        "--gpus", type=int, default=None, help="tasks (GPUs) per node; default: the partition's"
    )
    slurm.add_job_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        if slurm.runs_here(args.launcher):
            latent_cache.main(rest)
            return 0
        given = latent_cache.parse_args(rest)
        latent_cache.expand_shard_urls(given.data)  # a wrong DATA fails here, before queueing
        partition = slurm.partition_info(args.partition)
        gpus = partition.gpus if args.gpus is None else args.gpus
        slurm.check_request(partition, gpus, 0 if args.dry_run else args.nodes)
        out = Path(given.out).resolve()
        print(
            f"cache-latents {' '.join(given.data)} -> {out}: {args.nodes} node(s) x "
            f"{max(gpus, 1)} rank(s) (partition {partition.name}, {partition.gres})"
        )
        text = script(rest, out, args.nodes, gpus, slurm.options_from_args(args))
        slurm.submit_chain(
            [(out / "slurm" / "cache-latents.sbatch", text, "cache-latents", None)], args.dry_run
        )
    except (FileNotFoundError, slurm.SlurmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

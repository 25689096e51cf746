"""``make finetune``: run fine-tuning on this machine, under torchrun, or as a SLURM job.

* SLURM (a controller answers ``scontrol ping``, or inside an allocation): the job is decided by
  the cluster, not by the submitting host (a login node has no GPU): the ``sd21-base`` config and
  the partition's GPUs per node unless CONFIG=/GPUS= say otherwise. The config, DATA and INIT are
  checked here before anything is queued; the script ``OUT/slurm/stageN.sbatch`` (one task per
  GPU, ``srun``, SIGUSR1 before the time limit -> checkpoint and requeue) is submitted, or run
  with ``srun`` directly inside an allocation (``salloc``). ``--stage 1+2`` submits stage 2 too,
  to start after stage 1 succeeded (``--dependency=afterok``), from the stage-1 run.
* Otherwise, several nodes or GPUs: ``torchrun`` for this node (node rank 0), and print the exact
  command to run on every other node (same MASTER_ADDR/PORT, its NODE_RANK).
* One node, one device (a laptop CPU with the tiny config): a plain single process.

``--launcher slurm|torchrun|local`` (``LAUNCHER=``) overrides the guess; ``--dry-run`` prints the
scripts and commands and runs or submits nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster import slurm
from models.checkpoint_io import CheckpointError
from training.config import ConfigError, RunConfig, load_config, resolve_config
from training.shard_check import DataError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    mode: str  # local | torchrun | slurm
    commands: list[list[str]]  # commands[0] runs here; the rest are for the other nodes
    script: str | None = None  # the sbatch script (slurm; the last stage's for --stage 1+2)


@dataclass
class Job:
    """One stage's run: its config file, the overrides given to it, and what they make."""

    stage: int
    config_file: str
    flags: list[str]  # the launcher's flags as key=value (NODES, GPUS, DATA, INIT, OUT)
    overrides: list[str]  # the user's key=value (ARGS)
    config: RunConfig

    @property
    def out(self) -> Path:
        out = Path(self.config.out)
        return out if out.is_absolute() else ROOT / out


def default_config(stage: int, config: str | None = None, cluster: bool = False) -> str:
    """``CONFIG``: a YAML path, or a preset name (``tiny``, ``sd21-base``) meaning that preset's
    file for this stage; none: ``sd21-base`` on a cluster or with a GPU, ``tiny`` otherwise."""
    if config and (ROOT / "configs" / f"stage{stage}-{config}.yaml").is_file():
        return str(ROOT / "configs" / f"stage{stage}-{config}.yaml")
    if config:
        return config
    size = "sd21-base" if cluster or torch.cuda.is_available() else "tiny"
    return str(ROOT / "configs" / f"stage{stage}-{size}.yaml")


def host_address() -> str:
    try:  # the address other nodes reach this one on (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def stages(args: argparse.Namespace) -> list[int]:
    return [1, 2] if args.stage == "1+2" else [int(args.stage)]


def make_job(args: argparse.Namespace, stage: int, gpus: int, cluster: bool) -> Job:
    """The stage's config with the launcher's settings, loaded and validated (a bad key stops here,
    before any queue wait). With ``--stage 1+2`` and OUT, the runs are OUT/stage1 and OUT/stage2,
    and stage 2 starts from stage 1's run."""
    overrides = [f"strategy.num_nodes={args.nodes}", f"strategy.devices={gpus}"]
    out, init = args.out, args.init
    if args.stage == "1+2":
        first = make_job(argparse.Namespace(**{**vars(args), "stage": "1"}), 1, gpus, cluster)
        out = str(Path(args.out) / f"stage{stage}") if args.out else None
        if stage == 2:
            init = str(first.out if not args.out else Path(args.out) / "stage1")
    for key, value in (("data.train", args.data), ("model.init", init), ("out", out)):
        if value:
            overrides.append(f"{key}={value}")
    config_file = default_config(stage, args.config, cluster)
    config = resolve_config(config_file, args.overrides, overrides)[0]
    return Job(stage, config_file, overrides, list(args.overrides), config)


def train_args(job: Job) -> list[str]:
    return ["-m", "training.train", "--config", job.config_file, *job.flags, *job.overrides]


def check_inputs(job: Job, chained: bool) -> None:
    """DATA and INIT exist and read as expected, on the submitting host (shared storage)."""
    from training.datamodule import ShardDataModule
    from training.init_detect import detect_init
    from training.model_init import PRESETS

    ShardDataModule(job.config.data).check()
    if not chained:  # what INIT holds, read here: a bad or uncached one fails before queueing
        detect_init(job.config.model.init, PRESETS)


def job_options(config: RunConfig, args: argparse.Namespace, tasks: int, cpus: int) -> tuple:
    """sbatch settings: Make variables win over the config's ``slurm.*`` keys. CPUs per task are
    lowered to what a node has (a request no node meets would pend forever); the note says so."""
    section = config.slurm
    wanted = args.cpus_per_task or section.cpus_per_task
    fitting = max(1, cpus // max(tasks, 1)) if cpus else wanted
    note = (
        f"note: --cpus-per-task lowered from {wanted} to {fitting} (a node has {cpus} CPUs for "
        f"{tasks} tasks)"
        if wanted > fitting
        else ""
    )
    options = slurm.JobOptions(
        partition=args.partition or section.partition or None,
        account=args.account or section.account or None,
        qos=args.qos or section.qos or None,
        time=args.time or section.time or None,
        constraint=args.constraint or section.constraint or None,
        cpus_per_task=min(wanted, fitting),
        extra=[*section.extra, *shlex.split(args.sbatch_args or "")],
    )
    return options, note


def slurm_script(job: Job, args: argparse.Namespace, gpus: int, options: slurm.JobOptions) -> str:
    name = f"isotropic3d-stage{job.stage}"
    lines = slurm.header(
        name, options, job.out / "slurm" / "%x-%j.out", nodes=args.nodes, tasks_per_node=gpus,
        gpus_per_node=gpus, requeue=True, signal=f"USR1@{job.config.slurm.signal_seconds}",
    )  # fmt: skip
    command = shlex.join([args.python, *train_args(job)])
    return slurm.job_script(
        lines,
        "One task per GPU (Lightning reads the SLURM environment). SIGUSR1 before the time\n"
        "limit, or `scancel --signal=USR1`: checkpoint at the next step, requeue, resume.",
        [
            "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a dead rank fails the job, no hang",
            'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
            "srun bash -c 'echo \"task $SLURM_PROCID on $SLURMD_NODENAME\"'  # the task layout",
            f"srun --kill-on-bad-exit=1 {command}",
        ],
    )


def srun_command(job: Job, args: argparse.Namespace, gpus: int) -> list[str]:
    """Inside an allocation: the tasks start at once on its nodes."""
    gpu_flag = [f"--gpus-per-node={gpus}"] if gpus else []
    return [
        "srun", f"--nodes={args.nodes}", f"--ntasks-per-node={max(gpus, 1)}", *gpu_flag,
        f"--job-name=isotropic3d-stage{job.stage}", "--kill-on-bad-exit=1",
        args.python, *train_args(job),
    ]  # fmt: skip


def summary(job: Job, args: argparse.Namespace, gpus: int, where: str) -> str:
    tasks = args.nodes * max(gpus, 1)
    per_device = job.config.data.batch_size
    accumulate = int(getattr(job.config.train, "accumulate_grad_batches", 1) or 1)
    extra = f" x {accumulate} accumulated" if accumulate > 1 else ""
    return (
        f"stage {job.stage}: config {job.config_file}\n"
        f"  {args.nodes} node(s) x {gpus} GPU(s) = {tasks} task(s) ({where})\n"
        f"  global batch {per_device * tasks * accumulate} objects "
        f"({per_device} per device x {tasks} tasks{extra}); run folder {job.out}"
    )


def plan_slurm(args: argparse.Namespace) -> tuple[Plan, list[tuple[Job, str, str]]]:
    """The jobs under SLURM: [(job, script text, summary)]; the plan's command is the first's."""
    allocation = slurm.in_allocation()
    partition = None if allocation and args.gpus is not None else slurm.partition_info(
        args.partition or load_config(default_config(1, args.config, True)).slurm.partition or None
    )  # fmt: skip
    if partition is not None and args.gpus is None and partition.gpus == 0:
        raise slurm.SlurmError(
            f"partition {partition.name} has no GPUs (GRES {partition.gres}): choose a GPU "
            f"partition (PARTITION=...), or GPUS=0 to run one CPU task per node"
        )
    gpus = args.gpus if args.gpus is not None else partition.gpus
    nodes_note = slurm.check_nodes(partition, args.nodes) if partition else ""
    if partition is not None:  # a dry run shows the script a bigger partition would get
        slurm.check_request(partition, gpus, 0 if args.dry_run else args.nodes)
    where = f"partition {partition.name}, {partition.gres}" if partition else "this allocation"
    jobs = []
    for stage in stages(args):
        job = make_job(args, stage, max(gpus, 1), cluster=True)
        tasks = max(gpus, 1)
        options, note = job_options(job.config, args, tasks, partition.cpus if partition else 0)
        text = slurm_script(job, args, gpus, options)
        notes = [summary(job, args, gpus, where), note, nodes_note and f"note: {nodes_note}"]
        jobs.append((job, text, "\n".join(x for x in notes if x)))
    first = jobs[0][0]
    if allocation:
        return Plan("slurm", [srun_command(first, args, gpus)]), jobs
    return Plan("slurm", [["sbatch", str(first.out / "slurm" / f"stage{first.stage}.sbatch")]], jobs[-1][1]), jobs  # fmt: skip


def local_gpus(args: argparse.Namespace) -> int:
    return args.gpus if args.gpus is not None else max(torch.cuda.device_count(), 1)


def choose_mode(args: argparse.Namespace) -> str:
    """slurm | torchrun | local: ``--launcher``, else whether a SLURM controller answers."""
    multi = args.nodes > 1 or local_gpus(args) > 1
    if args.no_slurm and args.launcher in ("auto", "slurm"):
        return "torchrun" if multi else "local"
    mode = slurm.choose_launcher(args.launcher, multi)
    if mode != "slurm" and (args.stage == "1+2" or args.after):
        raise slurm.SlurmError(
            "STAGE=1+2 and --after chain SLURM jobs; without SLURM run STAGE=1, then STAGE=2"
        )
    return mode


def plan(args: argparse.Namespace) -> Plan:
    """What would run (SLURM: asks the cluster about its partition; checks no file)."""
    mode = choose_mode(args)
    if mode == "slurm":
        return plan_slurm(args)[0]
    gpus = local_gpus(args)
    job = make_job(args, stages(args)[0], gpus, cluster=False)
    if mode == "local":
        return Plan("local", [[args.python, *train_args(job)]])
    master = args.master_addr or os.environ.get("MASTER_ADDR") or host_address()
    commands = []
    for rank in range(args.nodes):
        commands.append(
            [
                args.python, "-m", "torch.distributed.run",
                f"--nnodes={args.nodes}", f"--nproc-per-node={gpus}", f"--node-rank={rank}",
                f"--master-addr={master}", f"--master-port={args.master_port}",
                *train_args(job),
            ]
        )  # fmt: skip
    return Plan(mode, commands)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=("1", "2", "1+2"), default="1")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes")
    parser.add_argument(
        "--gpus", type=int, default=None,
        help="GPUs (processes) per node; default: the partition's under SLURM, else all here, or 1",
    )  # fmt: skip
    parser.add_argument(
        "--config", default=None,
        help="default: configs/stage{STAGE}-{sd21-base on SLURM or a GPU | tiny}.yaml",
    )  # fmt: skip
    parser.add_argument("--data", default=None, help="shard source(s) -> data.train")
    parser.add_argument("--init", default=None, help="initial weights -> model.init")
    parser.add_argument("--out", default=None, help="run folder -> out")
    parser.add_argument(
        "--launcher", default=os.environ.get("LAUNCHER") or "auto", choices=slurm.LAUNCHERS,
        help="auto: SLURM when a controller answers, torchrun for several processes, else local",
    )  # fmt: skip
    parser.add_argument(
        "--master-addr", default=None, help="rendezvous host (default: $MASTER_ADDR or this host)"
    )
    parser.add_argument("--master-port", type=int, default=29500)
    group = parser.add_argument_group("SLURM (default: the config's slurm.* keys)")
    group.add_argument("--partition", default=None)
    group.add_argument("--account", default=None)
    group.add_argument("--qos", default=None)
    group.add_argument("--time", default=None, help="time limit of one job, e.g. 48:00:00")
    group.add_argument("--constraint", default=None)
    group.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per GPU task")
    group.add_argument("--sbatch-args", default=None, help='more sbatch options, "--mem=0 ..."')
    group.add_argument("--after", default=None, help="start after this job id succeeded")
    parser.add_argument("--no-slurm", action="store_true", help="never SLURM (torchrun / local)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved run config (and where each value came from), run nothing",
    )
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_args(argv)


def submit_all(args: argparse.Namespace, jobs: list[tuple[Job, str, str]]) -> list[str]:
    """Write every stage's script, print it on a dry run, else submit them chained."""
    ids: list[str] = []
    for job, text, _ in jobs:
        path = job.out / "slurm" / f"stage{job.stage}.sbatch"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if args.dry_run:
            print(f"--- {path} (dry run: not submitted)\n{text}")
            continue
        after = ids[-1] if ids else args.after
        job_id = slurm.submit(path, f"afterok:{after}" if after else None)
        ids.append(job_id)
        name = f"isotropic3d-stage{job.stage}"
        log = slurm.log_path(job.out / "slurm" / "%x-%j.out", job_id, name)
        print(
            slurm.describe_submitted(job_id, name, log) + (f" (after job {after})" if after else "")
        )
    return ids


def print_config(args: argparse.Namespace) -> int:
    cluster = choose_mode(args) == "slurm"
    gpus = local_gpus(args) if not cluster or args.gpus is not None else 1
    for stage in stages(args):
        job = make_job(args, stage, gpus, cluster)
        print(resolve_config(job.config_file, job.overrides, job.flags)[1].describe())
    return 0


def main(argv: list[str] | None = None, replace_process: bool = False) -> int:
    """``replace_process``: run this node's command in place of the launcher (``exec``) rather than
    as its child, so the launcher's own memory (~0.7 GB of imports) is not held beside the run's
    and signals reach the run directly."""
    args = parse(argv)
    try:
        if args.print_config:
            return print_config(args)
        if choose_mode(args) != "slurm":
            launch = plan(args)
        else:
            launch, jobs = plan_slurm(args)
            for job, _, text in jobs:
                print(text)
                check_inputs(job, chained=job.stage == 2 and args.stage == "1+2")
            if launch.commands[0][0] == "sbatch":
                submit_all(args, jobs)
                return 0
    except (ConfigError, slurm.SlurmError, FileNotFoundError, DataError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if launch.mode == "torchrun" and len(launch.commands) > 1:
        print(
            "This node runs node rank 0. Run on each other node (same repository and data paths):"
        )
        for command in launch.commands[1:]:
            print("  " + shlex.join(command))
    print("Running: " + shlex.join(launch.commands[0]), flush=True)
    if args.dry_run:
        return 0
    if replace_process:
        os.chdir(ROOT)
        os.execvp(launch.commands[0][0], launch.commands[0])
    return subprocess.call(launch.commands[0], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(replace_process=True))

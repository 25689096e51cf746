"""``make finetune``: run fine-tuning on this machine, under torchrun, or as a SLURM job.

* SLURM present (``sbatch`` on PATH): write ``OUT/slurm/stageN.sbatch`` (one task per GPU, ``srun``,
  requeue on SIGUSR1 90 s before the time limit) and submit it.
* Otherwise, several nodes or GPUs: ``torchrun`` for this node (node rank 0), and print the exact
  command to run on every other node (same MASTER_ADDR/PORT, its NODE_RANK).
* One node, one device (a laptop CPU with the tiny config): a plain single process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from training.config import ConfigError, resolve_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    mode: str  # local | torchrun | slurm
    commands: list[list[str]]  # commands[0] runs here; the rest are for the other nodes
    script: str | None = None  # the sbatch script (slurm)


def default_config(stage: int, config: str | None = None) -> str:
    """``CONFIG``: a YAML path, or a preset name (``tiny``, ``sd21-base``) meaning that preset's
    file for this stage; none: ``sd21-base`` with a GPU, ``tiny`` without."""
    if config and (ROOT / "configs" / f"stage{stage}-{config}.yaml").is_file():
        return str(ROOT / "configs" / f"stage{stage}-{config}.yaml")
    if config:
        return config
    size = "sd21-base" if torch.cuda.is_available() else "tiny"
    return str(ROOT / "configs" / f"stage{stage}-{size}.yaml")


def host_address() -> str:
    try:  # the address other nodes reach this one on (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def flag_overrides(args: argparse.Namespace, gpus: int) -> list[str]:
    """The launcher's flags (``make finetune NODES= GPUS= DATA= INIT= OUT=``) as config overrides."""
    overrides = [f"strategy.num_nodes={args.nodes}", f"strategy.devices={gpus}"]
    for key, value in (("data.train", args.data), ("model.init", args.init), ("out", args.out)):
        if value:
            overrides.append(f"{key}={value}")
    return overrides


def train_args(args: argparse.Namespace, gpus: int) -> list[str]:
    overrides = flag_overrides(args, gpus)
    return [
        "-m",
        "training.train",
        "--config",
        default_config(args.stage, args.config),
        *overrides,
        *args.overrides,
    ]


def slurm_script(args: argparse.Namespace, gpus: int, out: Path) -> str:
    command = shlex.join([args.python, *train_args(args, gpus)])
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name=isotropic3d-stage{args.stage}",
            f"#SBATCH --nodes={args.nodes}",
            f"#SBATCH --ntasks-per-node={gpus}",  # Lightning expects one task per GPU
            f"#SBATCH --gpus-per-node={gpus}",
            f"#SBATCH --cpus-per-task={args.cpus_per_task}",
            f"#SBATCH --time={args.time}",
            "#SBATCH --signal=SIGUSR1@90",  # Lightning checkpoints and requeues on SIGUSR1
            "#SBATCH --requeue",
            f"#SBATCH --output={out}/slurm/%x-%j.out",
            "set -euo pipefail",
            f"cd {shlex.quote(str(ROOT))}",
            "export NCCL_ASYNC_ERROR_HANDLING=1  # a hung or dead rank fails the job instead of hanging",
            f"srun --kill-on-bad-exit=1 {command}",
            "",
        ]
    )


def gpus_per_node(args: argparse.Namespace) -> int:
    return args.gpus if args.gpus is not None else max(torch.cuda.device_count(), 1)


def plan(args: argparse.Namespace) -> Plan:
    gpus = gpus_per_node(args)
    out = Path(args.out) if args.out else ROOT / "outputs" / "finetune"
    slurm = shutil.which("sbatch") is not None and not args.no_slurm
    if slurm:
        script = slurm_script(args, gpus, out)
        return Plan("slurm", [["sbatch", str(out / "slurm" / f"stage{args.stage}.sbatch")]], script)
    if args.nodes == 1 and gpus == 1:
        return Plan("local", [[args.python, *train_args(args, gpus)]])
    master = args.master_addr or os.environ.get("MASTER_ADDR") or host_address()
    commands = []
    for rank in range(args.nodes):
        commands.append(
            [
                args.python, "-m", "torch.distributed.run",
                f"--nnodes={args.nodes}", f"--nproc-per-node={gpus}", f"--node-rank={rank}",
                f"--master-addr={master}", f"--master-port={args.master_port}",
                *train_args(args, gpus),
            ]
        )  # fmt: skip
    return Plan("torchrun", commands)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes")
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs (processes) per node; default: all GPUs, or 1"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="default: configs/stage{STAGE}-{sd21-base on GPU | tiny}.yaml",
    )
    parser.add_argument("--data", default=None, help="shard source(s) -> data.train")
    parser.add_argument("--init", default=None, help="initial weights -> model.init")
    parser.add_argument("--out", default=None, help="run folder -> out")
    parser.add_argument(
        "--master-addr", default=None, help="rendezvous host (default: $MASTER_ADDR or this host)"
    )
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--time", default="48:00:00", help="SLURM time limit")
    parser.add_argument(
        "--cpus-per-task", type=int, default=8, help="SLURM CPUs per GPU task (loader workers)"
    )
    parser.add_argument(
        "--no-slurm", action="store_true", help="use torchrun even where sbatch exists"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved run config (and where each value came from), run nothing",
    )
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.print_config:
        try:
            _, resolved = resolve_config(
                default_config(args.stage, args.config),
                args.overrides,
                flag_overrides(args, gpus_per_node(args)),
            )
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(resolved.describe())
        return 0
    launch = plan(args)
    if launch.mode == "slurm":
        path = Path(launch.commands[0][-1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(launch.script or "")
        print(f"SLURM batch script: {path}\n{launch.script}")
    if launch.mode == "torchrun" and len(launch.commands) > 1:
        print(
            "This node runs node rank 0. Run on each other node (same repository and data paths):"
        )
        for command in launch.commands[1:]:
            print("  " + shlex.join(command))
    print("Running: " + shlex.join(launch.commands[0]), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(launch.commands[0], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

"""What every SLURM job of this project shares: is there a cluster, what its partition offers,
the ``#SBATCH`` header, submitting, and telling the user what was submitted.

A machine counts as a SLURM cluster when a controller answers (``scontrol ping``), not because
``sbatch`` is installed: client packages alone (or a cluster that is down) would turn every local
run into a failing submission. ``LAUNCHER=slurm|torchrun|local`` overrides the guess.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHERS = ("auto", "slurm", "torchrun", "local")
REPO = Path(__file__).resolve().parents[1]  # every job runs from the repository's root


class SlurmError(RuntimeError):
    """A request SLURM cannot meet, or a failed submission; the message says what to change."""


def controller_answers(timeout: float = 15.0) -> bool:
    """True when ``scontrol ping`` reaches a running controller."""
    if shutil.which("scontrol") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # scontrol would retry reading it for a minute
        return False
    try:
        result = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and " is UP" in result.stdout


def in_allocation() -> bool:
    """Inside ``salloc`` or a job: ``srun`` starts the tasks directly instead of a new job."""
    return bool(os.environ.get("SLURM_JOB_ID")) and shutil.which("srun") is not None


def choose_launcher(wanted: str, multi: bool) -> str:
    """``wanted``: auto | slurm | torchrun | local; ``multi``: several processes are asked for."""
    if wanted not in LAUNCHERS:
        raise SlurmError(f"LAUNCHER={wanted}: expected one of {', '.join(LAUNCHERS)}")
    if wanted != "auto":
        if wanted == "slurm" and not (in_allocation() or controller_answers()):
            raise SlurmError(
                "LAUNCHER=slurm: no SLURM controller answers `scontrol ping` here "
                "(is SLURM_CONF set? `make slurm-up` starts a local cluster)"
            )
        return wanted
    if in_allocation() or controller_answers():
        return "slurm"
    return "torchrun" if multi else "local"


@dataclass
class Partition:
    name: str
    nodes: int
    cpus: int  # per node
    gpus: int  # per node (GRES gpu), 0 when it has none
    gres: str


def _gpus_of(gres: str) -> int:
    """GPUs per node in sinfo's GRES column: ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if match:
            total += int(match.group(1))
    return total


def partition_info(name: str | None = None) -> Partition:
    """The partition ``name`` (default: the cluster's default partition), as sinfo reports it."""
    args = ["sinfo", "-h", "-o", "%P|%D|%c|%G"] + (["-p", name] if name else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    rows = [line.split("|") for line in result.stdout.splitlines() if line.count("|") == 3]
    if result.returncode or not rows:
        raise SlurmError(
            f"sinfo found no partition {name or '(default)'}: {result.stderr.strip() or 'none'}"
        )
    if name is None:
        defaults = [r for r in rows if r[0].endswith("*")]
        rows = defaults or rows[:1]
    part = rows[0][0].rstrip("*")
    rows = [r for r in rows if r[0].rstrip("*") == part]  # one row per node configuration
    best = max(rows, key=lambda r: _gpus_of(r[3]))
    return Partition(
        name=part,
        nodes=sum(int(r[1]) for r in rows),
        cpus=int(best[2].rstrip("+")),
        gpus=_gpus_of(best[3]),
        gres=best[3],
    )


@dataclass
class JobOptions:
    """Settings of every submission (Make variables PARTITION, ACCOUNT, QOS, TIME, CONSTRAINT,
    SBATCH_ARGS; config keys ``slurm.*`` where a config exists)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    extra: list[str] = field(default_factory=list)  # more sbatch options, e.g. --mem=200G


def header(
    name: str,
    options: JobOptions,
    output: Path,
    *,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    array: str | None = None,
    requeue: bool = False,
    signal: str | None = None,
) -> list[str]:
    """The ``#SBATCH`` lines of a job (``output`` may use %x, %j, %A, %a)."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
    ]
    if gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    for flag, value in (
        ("partition", options.partition),
        ("account", options.account),
        ("qos", options.qos),
        ("time", options.time),
        ("constraint", options.constraint),
        ("cpus-per-task", options.cpus_per_task),
        ("array", array),
        ("signal", signal),
    ):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    if requeue:
        lines += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]  # one log across requeues
    lines.append(f"#SBATCH --output={output}")
    lines += [f"#SBATCH {shlex.quote(x)}" for x in options.extra]
    return lines


def job_script(lines: list[str], about: str, body: list[str], strict: bool = True) -> str:
    """A job script: the ``#SBATCH`` ``lines`` (:func:`header`), a comment saying what the job
    does, bash's error settings (``strict``: stop at the first failing command; otherwise the body
    handles exit codes itself), the repository as working folder, then ``body``."""
    return "\n".join(
        [
            *lines,
            *(f"# {line}" for line in about.splitlines()),
            "set -euo pipefail" if strict else "set -uo pipefail",
            f"cd {shlex.quote(str(REPO))}",
            *body,
            "",
        ]
    )


def python_command(python: str, module: str, args: list[str]) -> str:
    """``python -m module args...`` quoted for a job script."""
    return shlex.join([python, "-m", module, *args])


def runs_here(launcher: str) -> bool:
    """Whether a submitting command runs its work in this process instead of queueing a job:
    inside a job already (an array task, a hand-written script), when asked to (``local``,
    ``torchrun``), or where no SLURM controller answers."""
    if os.environ.get("SLURM_JOB_ID") or launcher in ("local", "torchrun"):
        return True
    return choose_launcher(launcher, multi=False) != "slurm"


def check_request(partition: Partition, gpus: int, nodes: int) -> None:
    """Explain a request the partition cannot meet (sbatch alone answers with one line)."""
    if gpus > 0 and partition.gpus == 0:
        raise SlurmError(
            f"partition {partition.name} has no GPUs (GRES {partition.gres}): choose a GPU "
            f"partition (PARTITION=...) or run CPU tasks with GPUS=0"
        )
    if gpus > partition.gpus:
        raise SlurmError(
            f"partition {partition.name} has {partition.gpus} GPUs per node ({partition.gres}); "
            f"GPUS={gpus} cannot be met: use GPUS={partition.gpus} or fewer"
        )
    if check_nodes(partition, nodes):
        raise SlurmError(check_nodes(partition, nodes))


def check_nodes(partition: Partition, nodes: int) -> str:
    """'' or why the partition cannot give ``nodes`` nodes."""
    if nodes <= partition.nodes:
        return ""
    return f"partition {partition.name} has {partition.nodes} nodes; NODES={nodes} cannot be met"


def submit(script: Path, dependency: str | None = None) -> str:
    """``sbatch`` the script; the job id. ``dependency``: e.g. ``afterok:123``."""
    args = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else [])
    result = subprocess.run([*args, str(script)], capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise SlurmError(f"sbatch {script} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def log_path(pattern: Path, job_id: str, name: str) -> Path:
    """The log file of a submitted job (its array's first task for %a)."""
    text = str(pattern).replace("%x", name).replace("%j", job_id).replace("%A", job_id)
    return Path(text.replace("%a", "0"))


def describe_submitted(job_id: str, name: str, log: Path) -> str:
    return (
        f"Submitted {name} as SLURM job {job_id}\n"
        f"  log:    {log}\n"
        f"  follow: tail -f {log}    (state: squeue -j {job_id})\n"
        f"  cancel: scancel {job_id}"
    )


def add_job_arguments(parser) -> None:
    """The flags every submitting command shares (Make: LAUNCHER, PARTITION, ACCOUNT, QOS, TIME,
    CONSTRAINT, CPUS_PER_TASK, SBATCH_ARGS)."""
    group = parser.add_argument_group("SLURM")
    group.add_argument(
        "--launcher", default=os.environ.get("LAUNCHER") or "auto", choices=LAUNCHERS
    )
    group.add_argument("--partition", default=None)
    group.add_argument("--account", default=None)
    group.add_argument("--qos", default=None)
    group.add_argument("--time", default=None, help="time limit of one task, e.g. 24:00:00")
    group.add_argument("--constraint", default=None)
    group.add_argument("--cpus-per-task", type=int, default=None)
    group.add_argument("--sbatch-args", default=None, help='more sbatch options, "--mem=0 ..."')
    group.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")


def options_from_args(args) -> JobOptions:
    return JobOptions(
        partition=args.partition, account=args.account, qos=args.qos, time=args.time,
        constraint=args.constraint, cpus_per_task=args.cpus_per_task,
        extra=shlex.split(args.sbatch_args or ""),
    )  # fmt: skip


def submit_chain(jobs: list[tuple[Path, str, str, str | None]], dry_run: bool) -> list[str]:
    """Write each ``(script path, text, job name, dependency kind)`` and submit it, the ones with a
    kind (``afterok``, ``afterany``) after the job before; on a dry run print them instead."""
    ids: list[str] = []
    for path, text, name, kind in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if dry_run:
            print(f"--- {path} (dry run: not submitted)\n{text}")
            continue
        after = f"{kind}:{ids[-1]}" if kind and ids else None
        job_id = submit(path, after)
        ids.append(job_id)
        output = next(
            x.split("=", 1)[1] for x in text.splitlines() if x.startswith("#SBATCH --output=")
        )
        note = (
            f" (starts when job {ids[-2]} has {'succeeded' if kind == 'afterok' else 'ended'})"
            if after
            else ""
        )
        print(describe_submitted(job_id, name, log_path(Path(output), job_id, name)) + note)
    return ids

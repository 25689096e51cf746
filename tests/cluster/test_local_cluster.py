"""``make slurm-up`` / ``make slurm-down`` as a user runs them: up starts both nodes and says how to
use the cluster; a job holding both nodes runs; down cancels it and leaves no daemon (slurmctld,
slurmd, slurmstepd, munged) and no job task behind. The processes are found here by their command
lines, independently of how ``down`` finds them. (This cluster runs beside the session's one.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cluster_helpers import make

from cluster.local import LocalCluster

TASK = "sleep 6173"  # a job task nobody else runs: found by its command line


def _processes(*needles: str) -> dict[int, str]:
    """Running processes (not zombies) whose command line or environment contains any of
    ``needles`` (a step daemon, ``slurmstepd: [1.0]``, names its cluster only in the latter)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(n in command or n in environ for n in needles):
            found[int(entry.name)] = command
    return found


def _job_state(job: str, env: dict[str, str]) -> str:
    text = subprocess.run(
        ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    return text.split("JobState=", 1)[-1].split()[0] if "JobState=" in text else text


def test_make_slurm_up_then_down_leaves_nothing_behind():
    root = Path(tempfile.mkdtemp(prefix="isoup-", dir="/tmp"))  # short: munge's socket is here
    conf = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        up = make("slurm-up", f"SLURM_DIR={root}", timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export SLURM_CONF={conf}" in up.stdout and "make slurm-down" in up.stdout
        assert "n1 idle" in up.stdout and "n2 idle" in up.stdout and "gpu:2" in up.stdout
        daemons = _processes(str(root))
        names = " ".join(daemons.values())
        assert all(d in names for d in ("munged", "slurmctld", "slurmd")), daemons
        job = subprocess.run(
            ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", f"--output={root}/job.out",
             "--wrap", f"srun {TASK}"],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        deadline = time.monotonic() + 60
        while len(_processes(TASK)) < 2:  # one task on each node
            assert time.monotonic() < deadline, _job_state(job, env)
            time.sleep(0.5)
        assert _job_state(job, env) == "RUNNING"
        steps = [c for c in _processes(str(conf)).values() if c.startswith("slurmstepd")]
        assert steps, "the job's step daemons"

        down = make("slurm-down", f"SLURM_DIR={root}", timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped" in down.stdout
        assert _processes(str(root), TASK) == {}  # daemons, step daemons, tasks: all gone
        assert not [p for p in root.glob("*.pid")]
        status = make("slurm-status", f"SLURM_DIR={root}", timeout=60)
        assert status.returncode == 0 and f"local SLURM cluster in {root}: stopped" in status.stdout
    finally:
        LocalCluster(root).down()  # whatever the assertions left
        shutil.rmtree(root, ignore_errors=True)

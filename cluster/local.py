"""A real two-node SLURM cluster on this one machine: ``make slurm-up`` / ``make slurm-down``, and
the tests' cluster (tests/cluster/conftest.py).

Debian's ``slurm-wlm`` and ``munge`` (installed with apt-get on first use) run as one ``munged``,
one ``slurmctld`` and two ``slurmd`` (``-N n1``, ``-N n2``) on 127.0.0.1 with their own ports, all
state under one folder: nothing in /etc is used but an ``n1``/``n2`` line in /etc/hosts (so that a
rendezvous address on a node resolves). Each node declares ``gpu:2`` backed by stand-in device
files (the null and zero devices), so the very script a GPU cluster gets is accepted here;
``CUDA_VISIBLE_DEVICES`` is set by SLURM as on a real cluster, and torch, finding no CUDA, runs on
the CPU. The clients find this cluster through ``SLURM_CONF`` (printed by ``up``).

``down`` cancels every job, stops the daemons by their pid files, then ends whatever they left
(job steps, tasks) found by a marker in their environment: nothing of this cluster outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NODES = ("n1", "n2")
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "sinfo", "squeue")
MARKER = "ISOTROPIC3D_LOCAL_SLURM"  # in the daemons' environment: what down() may end
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "outputs" / "slurm-local"


# Cleanup never fails on a daemon or job that is already gone.
_quiet = contextlib.suppress(OSError, subprocess.SubprocessError)


class ClusterError(RuntimeError):
    """The local cluster cannot be installed or started; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _root_command(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return args
    if shutil.which("sudo"):
        return ["sudo", "-n", *args]
    raise ClusterError(f"{' '.join(args)} needs root (no sudo here); run it as root once")


def install() -> None:
    """apt-get install slurm-wlm and munge where any of their programs is missing."""
    missing = [name for name in DAEMONS if shutil.which(name) is None and not _sbin(name)]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise ClusterError(
            f"SLURM programs missing ({', '.join(missing)}) and no apt-get to install "
            f"{' '.join(PACKAGES)}: install SLURM 22.05+ and munge with your package manager"
        )
    print(f"installing {' '.join(PACKAGES)} (apt-get) for the local SLURM cluster", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(_root_command(args), env=env, capture_output=True, text=True)
        if result.returncode:
            raise ClusterError(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.is_file() else None


def _program(name: str) -> str:
    found = shutil.which(name) or _sbin(name)
    if found is None:
        raise ClusterError(f"{name} not found after installing {' '.join(PACKAGES)}")
    return found


def ensure_hosts() -> None:
    """``n1`` and ``n2`` must resolve to 127.0.0.1 (rendezvous addresses name a node)."""
    unresolved = []
    for node in NODES:
        try:
            if socket.gethostbyname(node) != "127.0.0.1":
                raise ClusterError(
                    f"{node} resolves to {socket.gethostbyname(node)}, not 127.0.0.1"
                )
        except socket.gaierror:
            unresolved.append(node)
    if not unresolved:
        return
    line = f"127.0.0.1 {' '.join(unresolved)}  # local SLURM cluster (make slurm-up)\n"
    try:
        with open("/etc/hosts", "a") as hosts:
            hosts.write(line)
    except PermissionError as error:
        raise ClusterError(f"add this line to /etc/hosts (as root): {line}") from error


@dataclass
class LocalCluster:
    """The cluster whose state (config, keys, spool, logs, pid files) lives in ``root``."""

    root: Path
    cpus: int = 4  # per node; may exceed the machine (config_overrides): tests ask for few
    gpus: int = 2  # stand-in GPUs per node
    requeue_delay: int = 5  # seconds a requeued job waits (SLURM's default: 120)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, srun, the launcher) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _pid_files(self) -> list[Path]:
        return [
            self.root / "munged.pid",
            self.root / "slurmctld.pid",
            *(self.root / f"slurmd-{n}.pid" for n in NODES),
        ]

    def write_config(self) -> None:
        for sub in ("ctld", "log", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged refuses a socket folder others may write to
        key = self.root / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname()
        ports = {"ctld": _free_port(), **{n: _free_port() for n in NODES}}
        r = self.root
        devices = "\n".join(f"Name=gpu File={f}" for f in ("/dev/null", "/dev/zero")[: self.gpus])
        (r / "gres.conf").write_text(f"AutoDetect=off\n{devices}\n")
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[n]} "
            f"CPUs={self.cpus} Gres=gpu:{self.gpus} State=UNKNOWN"
            for n in NODES
        )
        self.conf.write_text(
            f"""# Written by cluster/local.py: a two-node cluster on one host (make slurm-up).
ClusterName=isolocal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again
AuthInfo=socket={r}/munge.socket,cred_expire={self.requeue_delay}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/ctld
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
KillWait=10
MinJobAge=600
JobRequeue=1
{nodes}
PartitionName=local Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        )

    def _daemon_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, MARKER: str(self.root)}

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (kept by the child)
        result = subprocess.run(
            args, env=self._daemon_env(), stdout=log, stderr=subprocess.STDOUT, timeout=60
        )
        if result.returncode:
            raise ClusterError(f"{name} did not start ({' '.join(args)}): see {self.root}/log/")

    def running(self) -> bool:
        return any(_alive(_read_pid(p)) for p in self._pid_files())

    def controller_answers(self, timeout: float = 10.0) -> bool:
        result = subprocess.run(
            ["scontrol", "ping"], env={**os.environ, **self.env}, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        return "UP" in result.stdout

    def up(self, timeout: float = 90.0) -> None:
        """Install what is missing, write the config and start the daemons; returns once both
        nodes accept jobs. On any failure everything started is stopped again."""
        install()
        ensure_hosts()
        if self.running():
            self.down()
        self.write_config()
        try:
            r = self.root
            self._start(
                [_program("munged"), f"--socket={r}/munge.socket", f"--key-file={r}/munge.key",
                 f"--pid-file={r}/munged.pid", f"--log-file={r}/log/munged.log",
                 f"--seed-file={r}/munged.seed", "--force"],
                "munged",
            )  # fmt: skip
            self._start([_program("slurmctld"), "-f", str(self.conf), "-i"], "slurmctld")
            for node in NODES:
                self._start(
                    [_program("slurmd"), "-f", str(self.conf), "-N", node], f"slurmd-{node}"
                )
            self._wait_idle(timeout)
        except BaseException:
            self.down()
            raise

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        env = {**os.environ, **self.env}
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True,
                timeout=30,
            )  # fmt: skip
            state = result.stdout + result.stderr
            found = dict(line.split() for line in result.stdout.splitlines() if line.strip())
            if all(found.get(n) == "idle" for n in NODES):
                return
            time.sleep(1.0)
        raise ClusterError(f"the nodes did not come up in {timeout:.0f} s: {state.strip()!r}")

    def down(self) -> None:
        """Cancel every job, stop the daemons, then end anything they left behind."""
        env = {**os.environ, **self.env}
        if self.conf.exists() and _alive(_read_pid(self.root / "slurmctld.pid")):
            with _quiet:
                subprocess.run(["scancel", "--user", str(os.getuid())], env=env, timeout=20)
                deadline = time.monotonic() + 30
                while (
                    time.monotonic() < deadline
                    and subprocess.run(
                        ["squeue", "-h"], env=env, capture_output=True, text=True, timeout=20
                    ).stdout.strip()
                ):
                    time.sleep(1.0)
        for pid_file in reversed(self._pid_files()):  # nodes first, munge last
            _end(_read_pid(pid_file))
            pid_file.unlink(missing_ok=True)
        for pid in _marked_processes(str(self.root), str(self.conf)):
            _end(pid)

    def status(self) -> str:
        if not self.running():
            return f"local SLURM cluster in {self.root}: stopped"
        result = subprocess.run(
            ["sinfo", "-N", "-o", "%N %t %c %G %P"], env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return f"local SLURM cluster in {self.root}: running\n{result.stdout}{result.stderr}"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def _end(pid: int | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, of one process we started."""
    if not _alive(pid) or pid == os.getpid():
        return
    with _quiet:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with _quiet:
            os.kill(pid, signal.SIGKILL)


def _marked_processes(root: str, conf: str) -> list[int]:
    """Processes this cluster started: the daemons' children (slurmstepd, which carries the
    daemons' marker) and job tasks (SLURM_CONF of this cluster and a SLURM_JOB_ID)."""
    found = []
    own = {os.getpid(), os.getppid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        names = {item.split(b"=", 1)[0]: item.split(b"=", 1)[-1] for item in environ if item}
        daemon = names.get(MARKER.encode()) == root.encode()
        task = names.get(b"SLURM_CONF") == conf.encode() and b"SLURM_JOB_ID" in names
        if daemon or task:
            found.append(int(entry.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("install", "up", "down", "status"))
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="state folder of the cluster")
    parser.add_argument("--cpus", type=int, default=4, help="CPUs declared per node")
    parser.add_argument("--requeue-delay", type=int, default=5, help="seconds (SLURM default 120)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(Path(args.root).resolve(), args.cpus, requeue_delay=args.requeue_delay)
    try:
        if args.action == "install":  # make test: before the suite, as for the report's browser
            install()
            ensure_hosts()
        elif args.action == "up":
            cluster.up()
            print(cluster.status())
            print(f"Use it with:  export SLURM_CONF={cluster.conf}\nStop it with: make slurm-down")
        elif args.action == "down":
            cluster.down()
            print(f"local SLURM cluster in {cluster.root}: stopped")
        else:
            print(cluster.status())
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

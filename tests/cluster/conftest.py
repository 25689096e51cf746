"""The local two-node SLURM cluster (cluster/local.py), started once per session for the cluster
tests and always stopped: a finalizer, an exit hook and SIGTERM all lead to ``down``, which leaves
no slurmctld, slurmd, slurmstepd, munged or job task behind."""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from cluster.local import LocalCluster


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # pytest then runs the finalizers


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running :class:`LocalCluster` (2 nodes x 4 CPUs x 2 stand-in GPUs, requeue delay 5 s);
    its clients need ``cluster.env`` (SLURM_CONF). Its folder is short: munge's socket lives there."""
    root = Path(tempfile.mkdtemp(prefix="isoslurm-", dir="/tmp"))
    cluster = LocalCluster(root, cpus=4, gpus=2, requeue_delay=5)
    atexit.register(cluster.down)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(cluster.down)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """This test's process (and what it starts) talks to the local cluster."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm_cluster

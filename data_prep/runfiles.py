"""Files a render run keeps beside its shards: the partition lock and the scratch folders.

The lock is ``flock`` on ``OUT/.lock-PPP``; file systems without ``flock`` (some NFS and Lustre
mounts answer ENOLCK/EOPNOTSUPP) fall back to an owner file created with ``O_EXCL`` that names
host and pid, so a second run still stops with a clear message and a stale owner on this host is
taken over. Scratch space is node-local (``$TMPDIR``), one folder per run and one per object.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

BUSY = (
    "partition {part} of {out} is being rendered by another process{who}; give each concurrent "
    "run its own --part-index (or wait for the other run)"
)


class OwnerFileLock:
    """``O_EXCL`` lock file for file systems without ``flock``; removed on :meth:`close`."""

    def __init__(self, path: Path, out: Path, part: int):
        self.path = path
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _read_owner(path)
                if _stale(held):
                    path.unlink(missing_ok=True)  # its process on this host is gone
                    continue
                who = f" ({held.get('host')} pid {held.get('pid')})"
                hint = f"; if no run is active there, delete {path}"
                raise RuntimeError(BUSY.format(part=part, out=out, who=who) + hint) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
            return
        raise RuntimeError(BUSY.format(part=part, out=out, who=""))

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> OwnerFileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stale(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return False  # another machine: we cannot tell whether it still runs
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def lock_partition(out: Path, part: int, flock=fcntl.flock):
    """An exclusive lock per partition (two processes writing one partition's shards and
    manifest would corrupt each other); released when the returned object is closed."""
    handle = open(out / f".lock-{part:03d}", "w")
    try:
        flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(BUSY.format(part=part, out=out, who="")) from None
    except OSError:  # ENOLCK, EOPNOTSUPP...: no flock on this file system
        handle.close()
        return OwnerFileLock(out / f".lock-{part:03d}.owner", out, part)
    return handle


def scratch_root() -> Path:
    """Node-local scratch for the workers' PNGs (``$TMPDIR``, else the system temp folder), not
    the shared output folder: millions of small files must not go through a network file system."""
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "isotropic3d-render"


def make_run_scratch() -> Path:
    """A fresh scratch folder for this run (``HOST-PID``); removes those of dead runs first."""
    root = scratch_root()
    host = socket.gethostname()
    for folder in root.glob(f"{host}-*"):
        try:
            os.kill(int(folder.name.rsplit("-", 1)[1]), 0)
        except (ProcessLookupError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass
    work = root / f"{host}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    return work

"""A pool of long-lived Blender worker processes with a hard per-object timeout.

Each worker (:mod:`data_prep.blender_worker`) renders one object per job, so Blender's start-up
cost is paid once per worker, not per object. The parent owns every deadline: a worker that
overruns is SIGKILLed and replaced, and its object is retried up to ``timeout_retries`` times (a
busy node can slow one render down) before it is reported as ``timeout``; a worker that dies on
its own (segfault, OOM killer, someone's SIGKILL) is replaced and its object retried up to
``crash_retries`` times before it is reported as ``worker_crashed``. Objects that fail inside
Blender (corrupt files...) are reported at once: rendering them again gives the same answer. A
worker is restarted after ``recycle_after`` objects (0 = never), between jobs, so memory that
Blender leaks per import cannot pile up over a long run. Workers die with the parent
(PR_SET_PDEATHSIG), so a killed run leaves no orphan renders behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05  # how often a job source that had nothing ready is asked again
_END = object()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: workers still end when their stdin closes
        pass


class _Worker:
    def __init__(self, index: int, env: dict[str, str], log_path: Path):
        self.index, self.env, self.log_path = index, env, log_path
        self.proc: subprocess.Popen | None = None
        self.job: dict | None = None
        self.attempt = 0
        self.deadline = 0.0
        self.buffer = b""
        self.served = 0  # jobs finished since start (recycling)

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = os.environ | self.env
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "data_prep.blender_worker", "--result-fd", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=env,
                cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,
            )
        os.close(write_fd)
        self.fd, self.buffer, self.job, self.served = read_fd, b"", None, 0
        self.starts = getattr(self, "starts", 0) + 1

    def send(self, job: dict, attempt: int, timeout_s: float) -> bool:
        self.job, self.attempt = job, attempt
        self.deadline = time.monotonic() + timeout_s
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read_lines(self) -> list[dict] | None:
        """Complete JSON lines now readable; None on EOF (the worker died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> int | None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            os.close(self.fd)
            code, self.proc = self.proc.returncode, None
            return code
        return None

    def close(self, grace_s: float = 5.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # EOF: the worker's job loop ends
            self.proc.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            pass
        self.kill()


class WorkerPool:
    """Run render jobs on ``len(worker_envs)`` worker processes; iterate results as they finish."""

    def __init__(
        self,
        worker_envs: list[dict[str, str]],
        log_dir: str | Path,
        timeout_s: float,
        crash_retries: int = 1,
        timeout_retries: int = 0,
        recycle_after: int = 0,
    ):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.timeout_s, self.crash_retries = timeout_s, crash_retries
        self.timeout_retries, self.recycle_after = timeout_retries, recycle_after
        self.workers = [
            _Worker(i, env, log_dir / f"worker-{i}.log") for i, env in enumerate(worker_envs)
        ]

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None]

    def __enter__(self) -> WorkerPool:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.close()

    def _failure(self, job: dict, reason: str, detail: str) -> dict:
        return {"id": job["id"], "ok": False, "reason": reason, "detail": detail}

    def run(self, jobs: Iterable[dict | None]) -> Iterator[tuple[dict, dict]]:
        """Yield ``(job, result)`` pairs in completion order; ``jobs`` is consumed lazily and may
        yield ``None`` for "no job ready yet" (downloads still running): the pool then goes on
        collecting results and enforcing deadlines, and asks again shortly. It must not block."""
        source = iter(jobs)
        retry: deque[tuple[dict, int]] = deque()
        exhausted = False
        while True:
            waiting = False  # a free worker asked for a job that is not ready yet
            for worker in self.workers:
                if worker.job is not None:
                    continue
                recycle = self.recycle_after and worker.served >= self.recycle_after
                if recycle:
                    worker.close()
                if recycle or worker.proc is None or worker.proc.poll() is not None:
                    worker.kill()
                    worker.start()
                if retry:
                    job, attempt = retry.popleft()
                elif not exhausted and not waiting:
                    job = next(source, _END)
                    if job is _END:
                        exhausted = True
                        continue
                    if job is None:
                        waiting = True
                        continue
                    attempt = 0
                else:
                    continue
                if not worker.send(job, attempt, self.timeout_s):
                    yield from self._crashed(worker, retry)
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                if exhausted and not retry:
                    return
                if waiting:
                    time.sleep(POLL_S)
                continue
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            wait = min(wait, POLL_S if waiting else 1.0)
            readable, _, _ = select.select([w.fd for w in busy], [], [], wait)
            for worker in busy:
                if worker.fd in readable:
                    lines = worker.read_lines()
                    if lines is None:
                        yield from self._crashed(worker, retry)
                        continue
                    for message in lines:
                        if message.get("id") == worker.job["id"]:
                            job, worker.job = worker.job, None
                            worker.served += 1
                            if worker.attempt:
                                message["attempts"] = worker.attempt + 1
                            yield job, message
                elif time.monotonic() > worker.deadline:
                    job, attempt = worker.job, worker.attempt
                    worker.kill()
                    worker.start()
                    if attempt < self.timeout_retries:
                        retry.append((job, attempt + 1))  # after the queue: a fresh worker
                        continue
                    detail = f"no result after {self.timeout_s:g} s, {attempt + 1} tries"
                    yield job, self._failure(job, "timeout", detail) | {"attempts": attempt + 1}

    def _crashed(self, worker: _Worker, retry: deque) -> Iterator[tuple[dict, dict]]:
        job, attempt = worker.job, worker.attempt
        code = worker.kill()
        worker.start()
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if attempt < self.crash_retries:
            retry.appendleft((job, attempt + 1))  # transient (killed, OOM): render it again
            return
        detail = f"worker died ({how}), {attempt + 1} tries"
        yield job, self._failure(job, "worker_crashed", detail) | {"attempts": attempt + 1}

"""The worker pool keeps collecting results and enforcing deadlines while its job source has
nothing ready (downloads in flight), and replaces crashed workers, retrying their object a bounded
number of times."""

from __future__ import annotations

import os
import signal
import threading
import time

from data_prep.pool import WorkerPool
from data_prep.samples import write_samples

SETTINGS = dict(res=128, samples=100000, adaptive_threshold=0.0, denoise=False, max_bounces=1)
SETTINGS |= dict(device="cpu", threads=1, ambient=0.75, key_light=0.0, object_radius=0.7)


def test_timeouts_are_enforced_while_no_job_is_ready(tmp_path):
    path = write_samples(tmp_path / "src", ["rainbow_blob"])["rainbow_blob"]
    job = {
        "id": "slow",
        "path": str(path),
        "out_dir": str(tmp_path / "job"),
        "views": [
            {"c2w": [[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 0], [0, 0, 0, 1]], "fov_deg": 40}
        ],
        "settings": SETTINGS,
    }
    asked = []

    def jobs():
        yield job
        started = time.monotonic()
        while time.monotonic() - started < 5:  # a download that takes 5 s
            asked.append(time.monotonic())
            yield None

    with WorkerPool([{}, {}], tmp_path / "logs", timeout_s=1.5) as pool:  # one stays free
        started = time.monotonic()
        results = pool.run(jobs())
        finished, result = next(results)
        assert result["reason"] == "timeout" and finished["id"] == "slow"
        assert time.monotonic() - started < 4.5  # not after the 5 s "download"
        assert len(asked) > 10  # the source was polled, not waited on
        assert list(results) == []


def test_a_crashed_workers_object_is_retried_on_a_fresh_worker_a_bounded_number_of_times(
    tmp_path,
):
    path = write_samples(tmp_path / "src", ["rainbow_blob"])["rainbow_blob"]
    out_dir = tmp_path / "job"
    job = {
        "id": "crashy",
        "path": str(path),
        "out_dir": str(out_dir),
        "views": [
            {"c2w": [[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 0], [0, 0, 0, 1]], "fov_deg": 40}
        ],
        "settings": SETTINGS,  # renders for minutes: only a crash ends an attempt
    }
    killed: list[int] = []
    done = threading.Event()

    def crash_each_attempt(pool: WorkerPool) -> None:
        """SIGKILL (as the OOM killer would) whichever worker holds the job, each time a worker
        has received it (its per-job log appears), until the pool gives up."""
        log = out_dir / "blender.log"
        while not done.is_set():
            pids = pool.pids
            if log.exists() and pids and pids[0] not in killed:
                log.unlink()  # the next attempt writes a new one
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)
            time.sleep(0.02)

    with WorkerPool([{}], tmp_path / "logs", timeout_s=120, crash_retries=1) as pool:
        killer = threading.Thread(target=crash_each_attempt, args=(pool,), daemon=True)
        killer.start()
        try:
            results = list(pool.run([job]))
        finally:
            done.set()
            killer.join()
        fresh = pool.pids
    [(finished, result)] = results
    assert finished["id"] == "crashy" and result["reason"] == "worker_crashed", result
    # tried twice (crash_retries: 1), each time on its own process, then reported
    assert len(killed) == 2 and result["attempts"] == 2, (killed, result)
    assert "signal 9" in result["detail"] and "2 tries" in result["detail"]
    assert fresh and fresh[0] not in killed  # the pool is left with a live replacement


def test_scene_reuse_between_views_gives_the_same_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    from models.cameras import camera_to_world

    path = write_samples(tmp_path / "src", ["front_marker"])["front_marker"]
    views = [
        {"c2w": camera_to_world(20.0, azimuth, 2.5).tolist(), "fov_deg": 40.0}
        for azimuth in (30.0, 120.0, 250.0)
    ]
    settings = SETTINGS | dict(res=32, samples=4, key_light=1.0)
    jobs = [
        {
            "id": f"reuse-{reuse}",
            "path": str(path),
            "out_dir": str(tmp_path / f"reuse-{reuse}"),
            "views": views,
            "settings": settings | {"persistent_data": reuse},
        }
        for reuse in (True, False)
    ]
    with WorkerPool([{}], tmp_path / "logs", timeout_s=60) as pool:
        results = {job["id"]: result for job, result in pool.run(jobs)}
    assert all(result["ok"] for result in results.values()), results
    for view in range(3):
        with_reuse, without = (
            np.asarray(Image.open(tmp_path / f"reuse-{r}" / f"{view:03d}.png"))
            for r in (True, False)
        )
        assert with_reuse[..., 3].any() and np.array_equal(with_reuse, without), view

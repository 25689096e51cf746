"""The worker pool keeps collecting results and enforcing deadlines while its job source has
nothing ready (downloads in flight)."""

from __future__ import annotations

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

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

"""Heavy jobs on the local two-node cluster: ``make render-samples TASKS=2``
renders one partition per node whose shards equal a single-process render's, merges the manifests
in a job after the array, and a resubmitted task renders its own partition of the original layout
(it used to take the one-task array's size as the partition count), as does the whole array
resubmitted: only what is missing (here nothing) is rendered; ``make eval NODES=2``
evaluates one object per node and writes one report."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from cluster_helpers import ROOT, job_ids, make, wait_done
from PIL import Image, ImageDraw

sys.path.insert(0, str(ROOT / "tests" / "evaluation"))
from eval_helpers import TINY_OVERRIDES  # noqa: E402  (the evaluation tests' tiny settings)

# the settings of the session's rendered_shards fixture (tests/conftest.py), as flags
RENDER = "--samples 8 --no-denoise --num-quads 1 --num-refs 1 --shard-size 4"


def _objects(folder: Path) -> dict[str, dict]:
    """Per object: its views' pixels, cameras and metadata (without the thread count, which
    follows the workers per machine)."""
    found: dict[str, dict] = defaultdict(dict)
    for shard in sorted(folder.glob("**/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if ext.endswith(".png"):
                    data = np.asarray(Image.open(io.BytesIO(data))).tobytes()
                elif ext == "meta.json":
                    meta = json.loads(data)
                    meta["renderer"].pop("threads", None)
                    data = json.dumps(meta, sort_keys=True)
                found[key][ext] = data
    return dict(found)


def test_render_array_over_two_nodes_equals_one_process(slurm_env, rendered_shards, tmp_path):
    out = tmp_path / "array"
    result = make(
        "render-samples", "TASKS=2", "CPUS_PER_TASK=4", f"OUT={out}", "RES=32", "WORKERS=2",
        f"ARGS={RENDER}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    array, merge = job_ids(result.stdout)
    assert f"(starts when job {array} has ended)" in result.stdout
    states = wait_done([merge])
    logs = {p.name: p.read_text() for p in (out / "slurm").glob("*.out")}
    assert states[merge]["JobState"] == "COMPLETED", logs
    tasks = [logs[f"render-{array}_{i}.out"] for i in (0, 1)]
    assert "array task 0 on n1" in tasks[0] and "array task 1 on n2" in tasks[1]
    counts = [
        int(re.search(rf"partition {i}/2: (\d+) objects", text).group(1))
        for i, text in enumerate(tasks)
    ]
    assert sum(counts) == 10 and min(counts) > 0, counts  # each node rendered its own partition
    assert all(list((out / f"part-00{i}").glob("*.tar")) for i in (0, 1))
    merged = json.loads((out / "manifest.json").read_text())
    assert sorted(merged["parts"]) == [0, 1] and merged["done"] == 10 and merged["problems"] == []
    assert (out / "contact_sheet.png").is_file()  # the summary ran after the merge
    assert _objects(out) == _objects(rendered_shards)  # same objects, pixels, cameras, metadata
    # Resubmitting task 1 alone (an array of one task, id 1): partition 1 of 2, nothing left to do
    again = subprocess.run(
        ["sbatch", "--parsable", "--array=1", str(out / "slurm" / "render.sbatch")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    job = again.stdout.strip()
    wait_done([job])
    log = (out / "slurm" / f"render-{job}_1.out").read_text()
    expected = (
        f"partition 1/2: {counts[1]} objects, {counts[1]} already done or failed before, 0 rendered"
    )
    assert expected in log, log
    # Resubmitting the whole array: every task finds its partition done and renders nothing
    again = subprocess.run(
        ["sbatch", "--parsable", str(out / "slurm" / "render.sbatch")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    job = again.stdout.strip()
    wait_done([f"{job}_0", f"{job}_1"])
    for i, count in enumerate(counts):
        log = (out / "slurm" / f"render-{job}_{i}.out").read_text()
        assert (
            f"partition {i}/2: {count} objects, {count} already done or failed before, 0 rendered"
            in log
        ), log


def _draw_images(folder: Path) -> Path:
    folder.mkdir()
    for name, colour in [("duck", (220, 180, 30)), ("tomato", (200, 40, 40))]:
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(image).ellipse((16, 8, 48, 56), fill=(*colour, 255))
        image.save(folder / f"{name}.png")
    return folder


def test_eval_over_two_nodes_writes_one_report(slurm_env, tmp_path):
    images, out = _draw_images(tmp_path / "images"), tmp_path / "eval"
    args = ["model.size=tiny", "--no-progress", "report.clip_unit=raw", *TINY_OVERRIDES]
    result = make(
        "eval", f"IMAGES={images}", f"OUT={out}", "NODES=2", "CONFIG=configs/eval_tiny.yaml",
        f"ARGS={' '.join(args)}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 node(s) x 2 worker(s) (partition local, gpu:2), then one report" in result.stdout
    (job,) = job_ids(result.stdout)
    states = wait_done([job])
    log = (out / "slurm" / f"eval-{job}.out").read_text()
    assert states[job]["JobState"] == "COMPLETED", log[-4000:]
    assert "task 0 of 2 on n1" in log and "task 1 of 2 on n2" in log
    for name in ("duck", "tomato"):
        assert json.loads((out / "objects" / name / "result.json").read_text())["steps"] == 2
    report = json.loads((out / "results.json").read_text())
    assert sorted(o["id"] for o in report["objects"]) == ["duck", "tomato"], report
    assert (out / "index.html").is_file()

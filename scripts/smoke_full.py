"""The full-size smoke run (``make smoke-full``): the sd21-base model through every stage on a CPU.

A user's path with the real files, on one rank: the published MVDream checkpoint layout
(random tensors, scripts/standins.py) and local open_clip files in the hub's layout; one object
rendered at 256 px; its latents cached (``make cache-latents``, which converts the MVDream file);
stage 1 for two optimizer steps under DeepSpeed bf16; stage 2 for two steps from stage 1's
ZeRO checkpoint; export from stage 2's; then ``make eval`` on the exported model: two SDS steps
at 256 px, the 4-view sampler at 256 px (2 DDIM steps) and the CLIP score. The memory planner's
prediction for stage 1 (scripts/plan_memory.py, activations measured here at full size) is
compared with stage 1's measured peak.

Every step is the project's own command line in its own process with the production configs
(``configs/stage{1,2}-sd21-base.yaml``, ``configs/eval.yaml``) and only the overrides that fit a
small machine (:data:`STAGE_OVERRIDES`, :data:`EVAL_OVERRIDES`). Each step prints its time, its
process's peak resident memory and the bytes it wrote; the folder's peak size is tracked. Each
stage's checkpoint is deleted once the next step holds what it needs, and the whole folder at the
end (``--keep`` keeps it). ``--summary FILE`` writes the figures as JSON.

    python scripts/smoke_full.py [--work DIR] [--keep] [--summary FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9

# The overrides a user makes to fit a small machine (everything else: the production configs).
STAGE_OVERRIDES = [
    "train.max_steps=2",  # steps
    "data.batch_size=1",  # batch: one object (4 views + reference) per step
    "strategy.name=deepspeed",  # the GPU default's engine (ZeRO-2, bf16) on the CPU, one rank
    "model.grad_checkpointing=true",  # activations recomputed in the backward
    "data.cached=true",  # latents and CLIP embeddings from the cache: no frozen encoder in memory
    "ema.enabled=false",  # the fp32 weight EMA (+3.5 GB) does not fit beside ZeRO on 20 GB
    "data.num_workers=1",  # 2 cores
    "log.progress_bar=false",
]
EVAL_OVERRIDES = [
    "sds.resolution=[256,256]",  # both SDS steps at the real resolution
    "sds.batch_views=[4,4]",  # one view group per step
    "metrics.multiview.steps=2",  # the 4-view sampler at 256 px: 2 DDIM steps
    "export.turntable_frames=8",
    "export.mesh_resolution=64",
]
BUDGET = {"rss_gb": 20.0, "minutes": 12.0, "disk_gb": 40.0}


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_gb: float
    written_gb: float
    command: list[str]


@dataclass
class Summary:
    steps: list[Step] = field(default_factory=list)
    peak_disk_gb: float = 0.0
    seconds: float = 0.0
    plan: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def folder_bytes(folder: Path) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
            except FileNotFoundError:  # removed while walking
                pass
    return total


class DiskWatch(threading.Thread):
    """The work folder's size every half second: its peak, and deletions once a file appears
    (``after(marker, victim)``: remove ``victim`` once ``marker`` exists)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.peak, self.rules = folder, 0, []
        self.stop = threading.Event()

    def after(self, marker: Path, victim: Path) -> None:
        self.rules.append((marker, victim))

    def poll(self) -> None:
        for marker, victim in list(self.rules):
            if marker.exists():
                shutil.rmtree(victim, ignore_errors=True) if victim.is_dir() else victim.unlink(
                    missing_ok=True
                )
                print(f"  removed {victim.name} ({marker.parent.name}/{marker.name} exists)")
                self.rules.remove((marker, victim))
        self.peak = max(self.peak, folder_bytes(self.folder))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()


def run_step(name: str, command: list[str], env: dict, log: Path) -> Step:
    """One command in its own process: its time, peak RSS (of it and its children, from wait4)
    and bytes written (the kernel's block-output count)."""
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    step = Step(name, seconds, usage.ru_maxrss * 1024 / GB, usage.ru_oublock * 512 / GB, command)
    print(
        f"[{name}] {seconds:.0f} s, peak RSS {step.peak_rss_gb:.2f} GB, "
        f"wrote {step.written_gb:.2f} GB, exit {code}",
        flush=True,
    )
    if code != 0:
        tail = log.read_text()[-6000:]
        raise RuntimeError(f"step {name} failed with exit code {code}:\n{tail}")
    return step


def smoke(work: Path, summary: Summary, watch: DiskWatch) -> None:
    py = sys.executable
    threads = str(os.cpu_count() or 1)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
        "DS_ACCELERATOR": "cpu",
        "ISOTROPIC3D_OPENCLIP_CHECKPOINT": str(work / "weights" / "open_clip_vit_h14.bin"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def step(name: str, *args: str) -> None:
        summary.steps.append(run_step(name, [py, *args], env, logs / f"{name}.log"))
        watch.poll()

    weights, render, cache = work / "weights", work / "render", work / "cache"
    mvdream = weights / "sd-v2.1-base-4view.pt"
    converted = weights / f"imported-{mvdream.stem}"  # where model.init converts it, once
    s1, s2, export = work / "stage1", work / "stage2", work / "export"
    step("standins", "scripts/standins.py", "--out", str(weights))
    step(
        "render", "-m", "data_prep.render", "--config", "configs/render-preview.yaml",
        "--source", "samples", "--count", "1", "--res", "256", "--out", str(render),
        "--no-progress",
    )  # fmt: skip
    watch.after(converted / "model.json", mvdream)  # the published file is read once
    step(
        "cache-latents", "-m", "training.latent_cache", "--data", str(render),
        "--init", str(mvdream), "--out", str(cache), "--resolution", "256",
    )  # fmt: skip
    step(
        "plan-memory", "scripts/plan_memory.py", "--config", "configs/stage1-sd21-base.yaml",
        "--nodes", "1", "--gpus", "1", "--measure", "--init", str(converted),
        "--json", str(work / "plan.json"), *STAGE_OVERRIDES,
    )  # fmt: skip
    watch.after(s1 / "base_model" / "model.json", converted)
    step(
        "stage1", "-m", "training.launch", "--stage", "1", "--config", "sd21-base",
        "--nodes", "1", "--gpus", "1", "--no-slurm", "--data", str(cache),
        "--init", str(converted), "--out", str(s1), *STAGE_OVERRIDES,
    )  # fmt: skip
    # Stage 2 converts stage 1's ZeRO checkpoint into a model folder first: then stage 1 can go.
    watch.after(s2 / "base_model" / "model.json", s1)
    step(
        "stage2", "-m", "training.launch", "--stage", "2", "--config", "sd21-base",
        "--nodes", "1", "--gpus", "1", "--no-slurm", "--data", str(cache),
        "--init", str(s1), "--out", str(s2), *STAGE_OVERRIDES,
    )  # fmt: skip
    step("export", "-m", "training.checkpoints", str(s2), "--out", str(export))
    shutil.rmtree(s2)
    step(
        "eval", "-m", "evaluation.run", "--images", str(render), "--model",
        str(export / "fp32"), "--out", str(work / "eval"), "--steps", "2", "--gpus", "none",
        "--no-progress", "metrics.clip.backbone=ViT-L-14",
        f"metrics.clip.local_path={weights / 'open_clip_vit_l14.bin'}", *EVAL_OVERRIDES,
    )  # fmt: skip
    summary.plan = json.loads((work / "plan.json").read_text())
    results = json.loads((work / "eval" / "results.json").read_text())
    summary.files = {"eval_results": results}


def report(summary: Summary) -> str:
    lines = [f"{'step':<14}{'time s':>8}{'peak RSS GB':>13}{'written GB':>12}"]
    for s in summary.steps:
        lines.append(f"{s.name:<14}{s.seconds:>8.0f}{s.peak_rss_gb:>13.2f}{s.written_gb:>12.2f}")
    total_written = sum(s.written_gb for s in summary.steps)
    lines.append(f"{'total':<14}{summary.seconds:>8.0f}{'':>13}{total_written:>12.2f}")
    lines.append(f"peak size of the work folder: {summary.peak_disk_gb:.1f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--summary", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="smoke-full-"))
    work.mkdir(parents=True, exist_ok=True)
    summary, watch = Summary(), DiskWatch(work)
    watch.start()
    start = time.perf_counter()
    try:
        smoke(work, summary, watch)
    finally:
        summary.seconds = time.perf_counter() - start
        watch.stop.set()
        watch.join()
        summary.peak_disk_gb = watch.peak / GB
        print(report(summary))
        if args.summary:
            Path(args.summary).write_text(json.dumps(asdict(summary), indent=2, default=str))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

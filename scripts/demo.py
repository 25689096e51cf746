"""`make demo`: the whole stack end to end on the built-in samples, offline, with the tiny model.

render samples -> shards + contact sheet -> stage 1 -> stage 2 (from stage 1) -> export ->
sample 4 views of a held-out object -> SDS image-to-3D on it -> CLIP-similarity report.

Each step runs the same command a user would type (printed before it runs), so the demo doubles
as a walk-through. Rerunning resumes: renders, training runs and evaluations skip finished work.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT = "car"  # the object kept out of training: sampled and lifted to 3D at the end


def run_step(title: str, command: list[str], timings: dict[str, float]) -> None:
    """Run one pipeline command, echoing it so the user can run it by hand."""
    print(f"\n==> {title}\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    timings[title] = time.perf_counter() - start


def write_meshes(out: Path) -> tuple[Path, Path]:
    """Built-in samples as GLB files: every object but the held-out one for training."""
    from data_prep.samples import SAMPLES, write_samples

    train_names = [name for name in SAMPLES if name != HELD_OUT]
    train_dir, held_dir = out / "meshes" / "train", out / "meshes" / "heldout"
    write_samples(train_dir, train_names)
    write_samples(held_dir, [HELD_OUT])
    return train_dir, held_dir


def reference_image(shards: Path, dest: Path) -> Path:
    """The held-out object's first reference view (RGBA PNG), as the user's input image."""
    import webdataset as wds

    sample = next(iter(wds.WebDataset(sorted(map(str, shards.glob("*.tar"))), shardshuffle=False)))
    meta = json.loads(sample["meta.json"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(sample[f"{meta['refs'][0]:03d}.png"])
    return dest


def plot_losses(runs: dict[str, Path], dest: Path) -> Path:
    """Training loss of both stages against the step (raw and smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, run in runs.items():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = np.array([r["step"] for r in records])
        losses = np.array([r["loss"] for r in records])
        line = ax.plot(steps, losses, alpha=0.3)[0]
        window = max(1, len(losses) // 10)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("diffusion loss (MSE)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="results folder")
    parser.add_argument("--res", type=int, default=64, help="render resolution (px)")
    parser.add_argument("--stage1-steps", type=int, default=120, help="stage-1 optimizer steps")
    parser.add_argument("--stage2-steps", type=int, default=60, help="stage-2 optimizer steps")
    parser.add_argument(
        "--sds-steps", type=int, default=60, help="SDS steps on the held-out object"
    )
    parser.add_argument("--workers", type=int, default=2, help="Blender worker processes")
    args = parser.parse_args(argv)

    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    py = sys.executable
    timings: dict[str, float] = {}
    start = time.perf_counter()
    train_meshes, held_meshes = write_meshes(out)
    shards, held_shards = out / "shards" / "train", out / "shards" / "heldout"
    render = [py, "-m", "data_prep.render", "--res", str(args.res), "--num-quads", "2"]
    render += ["--num-refs", "2", "--samples", "16", "--workers", str(args.workers)]
    run_step(
        "render training objects (Blender Cycles, CPU)",
        render + ["--source", str(train_meshes), "--out", str(shards)],
        timings,
    )
    run_step(
        "render the held-out object",
        render + ["--source", str(held_meshes), "--out", str(held_shards)],
        timings,
    )
    sheet = out / "contact_sheet.png"
    run_step(
        "shard summary and contact sheet",
        [py, "-m", "data_prep.summary", "summary", str(shards), "--sheet", str(sheet)],
        timings,
    )

    stage1, stage2 = out / "stage1", out / "stage2"
    common = [f"data.train=[{shards}]", "data.num_workers=1"]
    run_step(
        "stage 1: CLIP-image conditioning (tiny model, CPU)",
        [py, "-m", "training.train", "--config", "configs/stage1-tiny.yaml", f"out={stage1}"]
        + common
        + [f"train.max_steps={args.stage1_steps}", "log.sample_every_n_steps=60"],
        timings,
    )
    run_step(
        "stage 2: explicit multi-view attention, initialised from stage 1",
        [py, "-m", "training.train", "--config", "configs/stage2-tiny.yaml", f"out={stage2}"]
        + common
        + [f"model.init={stage1}", f"train.max_steps={args.stage2_steps}"]
        + ["log.sample_every_n_steps=30"],
        timings,
    )
    model = out / "model"
    run_step(
        "export the stage-2 run to our model format",
        [py, "-m", "training.checkpoints", str(stage2), "--out", str(model)],
        timings,
    )

    image = reference_image(held_shards, out / "inputs" / f"{HELD_OUT}.png")
    grid = out / "samples" / f"{HELD_OUT}_views.png"
    run_step(
        "sample 4 views of the held-out object (stage-2 reference frame)",
        [py, "-m", "models.sample", "--image", str(image), "--model", str(model / "ema")]
        + ["--out", str(grid), "--elevation", "15", "--reference-frame", "--seed", "0"],
        timings,
    )
    evaluation = out / "eval"
    run_step(
        "SDS image-to-3D on the held-out object's reference view, then scoring",
        [py, "-m", "evaluation.run", "--config", "configs/eval_tiny.yaml"]
        + ["--images", str(held_shards), "--model", str(model / "ema"), "--out", str(evaluation)]
        + ["--steps", str(args.sds_steps), "--gpus", "none"]
        # the recipe's schedules scaled to the short run: anneal t over 80%, 64 -> higher px halfway
        + [
            f"sds.t_anneal_steps={int(0.8 * args.sds_steps)}",
            f"sds.milestones=[{args.sds_steps // 2}]",
        ]
        + [
            f"sds.orient_ramp_steps={args.sds_steps // 2}",
            f"sds.checkpoint_every={args.sds_steps // 2}",
        ],
        timings,
    )
    loss_plot = plot_losses({"stage 1": stage1, "stage 2": stage2}, out / "training_loss.png")

    total = time.perf_counter() - start
    results = {
        "shards": shards,
        "contact sheet": sheet,
        "stage-1 run (checkpoints, tensorboard)": stage1,
        "stage-2 run (checkpoints, tensorboard)": stage2,
        "exported model (fp32/, ema/)": model,
        "training loss plot": loss_plot,
        "sampled views": grid,
        "SDS results (renders, video, mesh)": evaluation,
        "report (open in a browser)": evaluation / "index.html",
    }
    print("\n==> timings")
    for title, seconds in timings.items():
        print(f"  {seconds:7.1f} s  {title}")
    print(f"  {total:7.1f} s  total")
    print("\n==> results")
    for name, path in results.items():
        print(f"  {name:42s} {path}")
    (out / "demo_summary.json").write_text(
        json.dumps(
            {
                "seconds": total,
                "timings": timings,
                "results": {k: str(v) for k, v in results.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One-GPU check of every GPU-only path (``make gpu-check``; aim: under 8 minutes on an H100/H200).

Checks, in order (``--only``/``--skip`` take their names):
  cycles   Cycles renders 2 built-in samples on the GPU (device auto: OptiX, then CUDA); SKIPPED
           when bpy is not installed.
  bench    the real stage-1 step (latent cache, on the fly) beside the plain diffusers UNet step.
  zero2    Lightning + DeepSpeed ZeRO-2, bf16, sd21-base: stage 1 from the latent cache with a
           checkpoint and a resume, stage 1 on the fly, stage 2 from the stage-1 checkpoint,
           export of the ZeRO shards, the sampler on the export.
  compile  stage 1 with model.compile=true: time to the first step, steady images/s.
  zero3    ZeRO-3 in both stages: each with a checkpoint, a resume and an export the sampler loads.
  sds      SDS (sd21-base, configs/eval.yaml) it/s at 64 and 256 px, compiled and eager, the split, the
           projected 10,000-step recipe, and `python -m evaluation.run` on one object at 256 px.
Prints PASS/FAIL/SKIPPED per check with its figures, then a table; exits 1 if a check failed
(``--strict``: also if a performance target is missed). Every figure also goes through
scripts/bench_common.record (``make bench`` tables).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import gpu_check_lib as lib  # noqa: E402
from bench_common import record  # noqa: E402

CHECKS = ("cycles", "bench", "zero2", "compile", "zero3", "sds")
TARGETS = {  # figure: (minimum or maximum, bound)
    "zero2 vs plain UNet": (">=", 0.9),
    "s1 MFU": (">=", 0.35),
    "cache speed-up": (">=", 1.6),
    "SDS recipe min": ("<=", 10.0),
}


class Context:
    """Arguments, output folder and the inputs shared by the checks, built on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.plain_img_s: float | None = None  # from the bench check, for the zero2 ratio
        self.eager_first_step_s: float | None = None  # from zero2, for the compile overhead
        self._made: dict = {}

    def _once(self, name: str, make):
        if name not in self._made:
            try:
                self._made[name] = (make(), None)
            except Exception as error:  # noqa: BLE001 - remembered: every check that needs it fails
                self._made[name] = (None, error)
        value, error = self._made[name]
        if error is not None:
            raise RuntimeError(f"setup {name} failed: {error}") from error
        return value

    def shards(self) -> Path:
        def make() -> Path:
            if self.args.data:
                return Path(self.args.data)
            folder = self.out / "shards"
            if not list(folder.rglob("*.tar")):
                print(f"shards: {lib.render_shards(folder, self.args.objects)}", flush=True)
            return folder

        return self._once("shards", make)

    def base(self) -> Path:
        """One random-init sd21-base model folder: every run loads it instead of building it."""

        def make() -> Path:
            folder = self.out / "base"
            if not (folder / "model.json").exists():
                from models.bundle import build_model, save_model

                model = build_model("sd21-base", seed=0, device="cuda")
                model.preset["image_encoder"]["pretrained"] = None  # as training.model_init
                model.image_encoder.section["pretrained"] = None  # resolve_init: save weights
                save_model(model, folder, source={"init": "sd21-base"})
                del model
                lib.free_gpu()
            return folder

        return self._once("base", make)

    def cache(self) -> Path:
        def make() -> Path:
            folder = self.out / "cache"
            if not list(folder.rglob("*.tar")):
                args = ["--data", str(self.shards()), "--init", str(self.base())]
                args += ["--out", str(folder), "--resolution", "256"]
                lib.run_py(["-m", "training.latent_cache", *args], "latent cache")
            return folder

        return self._once("cache", make)

    def train(self, name: str, stage: int, zero: int, steps: int, *extra: str, new=False) -> dict:
        """One Lightning run (``new``: in an emptied folder, else it resumes from the folder's
        newest checkpoint); its wall time, seconds to the first step and perf figures."""
        run = lib.fresh(self.out / name) if new else self.out / name
        overrides = [
            f"out={run}", f"train.max_steps={steps}", f"strategy.zero_stage={zero}",
            f"data.batch_size={self.args.objects}", "data.num_workers=4",
            "data.steps_per_epoch=1000", "data.exact_resume=true", "strategy.name=deepspeed",
            "log.every_n_steps=5", "log.sample_every_n_steps=0", "log.progress_bar=false",
            "train.warmup_steps=5", "checkpoint.keep_last=1", *extra,
        ]  # fmt: skip
        config = f"configs/stage{stage}-sd21-base.yaml"
        what = f"{name}: stage {stage}, ZeRO-{zero}, to step {steps}"
        timing = lib.run_py(
            ["-m", "training.train", "--config", config, *overrides], what, run / "metrics.jsonl"
        )
        return {"run": run, **timing, **lib.perf(lib.metrics(run))}

    def cached(self) -> list[str]:
        return [f"data.train={self.cache()}", "data.cached=true"]


def check_cycles(ctx: Context) -> dict:
    if not lib.bpy_available():
        raise lib.Skipped("bpy is not installed in this environment (too big for some GPU hosts)")
    from data_prep.config import load_config
    from data_prep.render import render

    folder = lib.fresh(ctx.out / "cycles")
    config = load_config(
        source="samples", out=str(folder), count=2, res=256, samples=32, num_quads=1,
        num_refs=1, workers=1, device="auto", progress=False,
    )  # fmt: skip
    summary = render(config)
    devices = lib.shard_renderer_devices(folder)
    if summary.failed or summary.rendered != 2:
        raise RuntimeError(f"rendered {summary.rendered} of 2, failed: {summary.failed}")
    per_view = summary.timing.get("render", 0.0) / max(summary.views, 1)
    if not devices or any(d not in ("OPTIX", "CUDA") for d in devices):
        raise RuntimeError(
            f"Cycles did not use the GPU: meta renderer.device = {devices} ({per_view:.2f} s/view)"
        )
    return {"device": devices[0], "s/view": per_view, "views": summary.views,
            "wall s": summary.seconds}  # fmt: skip


def check_bench(ctx: Context) -> dict:
    import bench_train

    bench = bench_train.run(bench_train.parse(["--objects", str(ctx.args.objects)]))
    lib.free_gpu()  # the benchmark's models go before the training runs start
    rates = bench["images_per_s"]
    ctx.plain_img_s = rates["plain diffusers UNet"]
    return {
        "plain img/s": ctx.plain_img_s,
        "cache img/s": rates["latent cache"],
        "on-the-fly img/s": rates["on the fly"],
        "bench vs plain": bench["cache_vs_plain"],
        "bench MFU": bench["mfu_latent_cache"] or 0.0,
        "bench peak GB": bench["peak_memory_gb"] or 0.0,
    }


def check_zero2(ctx: Context) -> dict:
    steps, keep = ctx.args.steps, ctx.args.keep
    init = f"model.init={ctx.base()}"
    fly = ctx.train("zero2_fly", 1, 2, 20, init, f"data.train={ctx.shards()}",
                    "checkpoint.every_n_steps=1000", new=True)  # fmt: skip
    lib.prune(fly["run"], keep=keep)
    every = f"checkpoint.every_n_steps={steps}"
    s1 = ctx.train("zero2_stage1", 1, 2, steps, init, *ctx.cached(), every, new=True)
    lib.newest_checkpoint(s1["run"], steps)
    resumed = ctx.train("zero2_stage1", 1, 2, steps + 10, init, *ctx.cached(), every)
    lib.expect_steps(s1["run"], steps + 10)
    s2_init = f"model.init={s1['run'] / 'checkpoints'}"
    s2 = ctx.train("zero2_stage2", 2, 2, 15, s2_init, *ctx.cached(), "checkpoint.every_n_steps=15",
                   new=True)  # fmt: skip
    lib.newest_checkpoint(s2["run"], 15)
    lib.prune(s1["run"], keep=keep)
    export = lib.export_and_sample(s2["run"], ctx.out / "zero2_export")
    lib.prune(s2["run"], ctx.out / "zero2_export", keep=keep)
    figures = {
        "s1 img/s": s1.get("img_s", 0.0), "s1 MFU": s1.get("mfu", 0.0),
        "s1 peak GB": s1.get("mem_gb", 0.0), "fly img/s": fly.get("img_s", 0.0),
        "s2 img/s": s2.get("img_s", 0.0), "s2 MFU": s2.get("mfu", 0.0),
        "resume s": resumed["seconds"], "export s": export["export_s"],
        "first step s": s1["first_step_s"] or 0.0,
        "cache speed-up": s1.get("img_s", 0.0) / max(fly.get("img_s", 0.0), 1e-9),
    }  # fmt: skip
    if ctx.plain_img_s:
        figures["zero2 vs plain UNet"] = s1.get("img_s", 0.0) / ctx.plain_img_s
    ctx.eager_first_step_s = s1["first_step_s"]
    return figures


def check_compile(ctx: Context) -> dict:
    run = ctx.train("compile", 1, 2, 20, f"model.init={ctx.base()}", *ctx.cached(),
                    "model.compile=true", "train.multiview_ratio=1.0",
                    "checkpoint.every_n_steps=1000", new=True)  # fmt: skip
    lib.expect_steps(run["run"], 20)
    lib.prune(run["run"], keep=ctx.args.keep)
    figures = {
        "first step s": run["first_step_s"] or 0.0,
        "steady img/s": run.get("img_s", 0.0),
        "MFU": run.get("mfu", 0.0),
        "peak GB": run.get("mem_gb", 0.0),
    }
    if ctx.eager_first_step_s and run["first_step_s"]:
        figures["compile s (vs eager)"] = run["first_step_s"] - ctx.eager_first_step_s
    return figures


def check_zero3(ctx: Context) -> dict:
    keep, figures = ctx.args.keep, {}
    s1, s2 = ctx.out / "zero3_stage1", ctx.out / "zero3_stage2"
    export1, export2 = ctx.out / "zero3_export1", ctx.out / "zero3_export2"
    stages = ((1, s1, [f"model.init={ctx.base()}"]), (2, s2, [f"model.init={export1 / 'ema'}"]))
    for stage, run, init in stages:
        ckpt = "checkpoint.every_n_steps=10"
        first = ctx.train(run.name, stage, 3, 10, *init, *ctx.cached(), ckpt, new=True)
        lib.newest_checkpoint(run, 10)
        resumed = ctx.train(run.name, stage, 3, 15, *init, *ctx.cached(), ckpt)
        lib.newest_checkpoint(run, 15)
        lib.expect_steps(run, 15)
        export = lib.export_and_sample(run, export1 if stage == 1 else export2)
        lib.prune(run, keep=keep)
        if stage == 1 and not keep:  # stage 2 starts from export1/ema only
            import shutil

            shutil.rmtree(export1 / "fp32", ignore_errors=True)
        figures |= {
            f"s{stage} img/s": first.get("img_s", 0.0),
            f"s{stage} peak GB": first.get("mem_gb", 0.0),
            f"s{stage} resume s": resumed["seconds"],
            f"s{stage} export s": export["export_s"],
        }
    lib.prune(export1, export2, keep=keep)
    return figures


def check_sds(ctx: Context) -> dict:
    speed = lib.sds_speed()  # sd21-base (random weights: same speed), configs/eval.yaml
    lib.free_gpu()
    figures = {}
    for px, row in speed["rows"].items():
        figures[f"{px}px it/s"] = row["it_s"]  # compiled (the evaluation default)
        figures[f"{px}px eager it/s"] = speed["eager"]["rows"][px]["it_s"]
        for part in ("render", "vae_encode", "unet", "backward"):  # ms per step
            figures[f"{px}px {part} ms"] = row[part]
    figures["SDS recipe min"] = speed["projected_min"]
    figures["SDS recipe eager min"] = speed["eager"]["projected_min"]
    folder = lib.fresh(ctx.out / "sds_eval")
    evaluation = lib.run_py(
        [
            "-m", "evaluation.run", "--images", str(ctx.shards()), "--model", str(ctx.base()),
            "--out", str(folder), "--steps", "30", "--gpus", "none", "--no-progress",
            "inputs.limit=1", "sds.milestones=[10]", "sds.resolution=[64,256]",
            "metrics.clip.backbone=tiny", "metrics.multiview.steps=5",
            "export.turntable_frames=8", "export.mesh_resolution=64",
        ],
        "evaluation.run on one object, 30 SDS steps (20 at 256 px)",
    )  # fmt: skip
    result = lib.finite_result(folder)
    figures["eval.run s"] = evaluation["seconds"]
    figures["eval steps"] = result.get("steps", 0)
    return figures


FUNCTIONS = {name: globals()[f"check_{name}"] for name in CHECKS}


def show(name: str, value) -> str:
    if "MFU" in name and isinstance(value, float):
        return f"{name} {value:.1%}"
    return f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"


def target_misses(figures: dict) -> list[str]:
    misses = []
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        if isinstance(value, float) and not (value >= bound if op == ">=" else value <= bound):
            misses.append(f"{key} {value:.3g} (target {op} {bound})")
    return misses


def run_check(name: str, ctx: Context) -> tuple[str, dict, str, float]:
    start = time.perf_counter()
    print(f"\n##### check {name}", flush=True)
    try:
        figures, status, note = FUNCTIONS[name](ctx), "PASS", ""
    except lib.Skipped as reason:
        figures, status, note = {}, "SKIPPED", str(reason)
    except Exception as error:  # noqa: BLE001 - recorded; the remaining checks still run
        traceback.print_exc()
        figures, status, note = {}, "FAIL", f"{type(error).__name__}: {error}"
    lib.free_gpu()
    seconds = time.perf_counter() - start
    misses = target_misses(figures)
    if misses:
        note = "; ".join(["below target: " + ", ".join(misses), note]).rstrip("; ")
    for key, value in figures.items():
        if isinstance(value, int | float):
            record("gpu_check", f"{name} {key}", float(value))
    record("gpu_check", f"{name} seconds", seconds, "s", status)
    line = "; ".join(p for p in (", ".join(show(k, v) for k, v in figures.items()), note) if p)
    print(f"{status} {name} ({seconds:.0f} s): {line}", flush=True)
    return status, figures, note, seconds


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="checks: " + ", ".join(CHECKS),
    )
    parser.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check"))
    parser.add_argument(
        "--data", default=None, help="256 px shards (default: render the built-in samples)"
    )
    parser.add_argument("--objects", type=int, default=16, help="objects per step (x4 views)")
    parser.add_argument("--steps", type=int, default=30, help="ZeRO-2 stage-1 steps before resume")
    parser.add_argument("--only", default="", help="comma list of checks to run")
    parser.add_argument("--skip", default="", help="comma list of checks to leave out")
    parser.add_argument("--keep", action="store_true", help="keep checkpoints and exports")
    parser.add_argument("--strict", action="store_true", help="a missed target fails too")
    args = parser.parse_args(argv)
    for flag in ("only", "skip"):
        names = [n.strip() for n in getattr(args, flag).split(",") if n.strip()]
        unknown = sorted(set(names) - set(CHECKS))
        if unknown:
            parser.error(f"--{flag}: unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
        setattr(args, flag, names)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check needs a CUDA GPU: none is visible here (torch.cuda.is_available() is "
            "False). The CPU paths are covered by `make test`."
        )
    chosen = [n for n in CHECKS if (not args.only or n in args.only) and n not in args.skip]
    ctx, start = Context(args), time.perf_counter()
    free = lib.disk_free_gb(ctx.out)
    print(f"{torch.cuda.get_device_name()}; checks: {', '.join(chosen)}; {free:.0f} GB free "
          f"under {ctx.out} (sd21-base ZeRO checkpoints are ~15 GB each)", flush=True)  # fmt: skip
    results = {name: run_check(name, ctx) for name in chosen}
    total = time.perf_counter() - start
    print(f"\n{torch.cuda.get_device_name()}, sd21-base, {args.objects} objects x 4 views, 256 px")
    print(f"{'check':8} {'status':8} {'s':>5}  figures")
    for name, (status, figures, note, seconds) in results.items():
        line = "; ".join(p for p in (", ".join(show(k, v) for k, v in figures.items()), note) if p)
        print(f"{name:8} {status:8} {seconds:5.0f}  {line}")
    print(f"total {total:.0f} s (aim: under 480 s); outputs under {ctx.out}")
    record("gpu_check", "total seconds", total, "s")
    failed = [n for n, r in results.items() if r[0] == "FAIL"]
    missed = [n for n, r in results.items() if "below target" in r[2]]
    if failed or (args.strict and missed):
        print(f"FAILED: {', '.join(failed + (missed if args.strict else []))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

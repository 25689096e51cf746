"""Fine-tuning entry point: ``python -m training.train --config configs/stage1-tiny.yaml key=value``.

The same code runs single-process on a CPU, under torchrun, and under SLURM's srun: Lightning
reads the launcher's environment (training.launch builds those commands)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DeepSpeedStrategy

from models.bundle import save_model
from models.checkpoint_io import CheckpointError
from training.callbacks import (
    EMAUpdate,
    FinalCheckpoint,
    LossBar,
    MetricsFile,
    SampleGrids,
    Throughput,
)
from training.checkpoint_files import BASE_MODEL, CHECKPOINTS, AtomicCheckpointIO
from training.config import ConfigError, RunConfig, resolve_config, save_config
from training.data_record import data_record
from training.datamodule import ShardDataModule
from training.latent_cache import check_cache_matches
from training.model_init import RANDOM_PREFIX, resolve_init
from training.module import FineTuneModule
from training.preemption import Preemption, StopFlag
from training.resume import install as install_resume
from training.run_logging import RunInfo, make_logger
from training.shard_check import DataError
from training.skipped_data import SkippedData
from training.strategy import build_launch


def global_rank_from_env() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def world_size_from_env() -> int:
    """Ranks in the job as the launcher (torchrun, srun) announced them; 1 when not launched so."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def build_trainer(
    config: RunConfig, data: ShardDataModule, flag: StopFlag | None = None
) -> pl.Trainer:
    out = Path(config.out)
    launch = build_launch(config)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=out / CHECKPOINTS,
            filename="step={step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=config.checkpoint.every_n_steps,
            save_top_k=config.checkpoint.keep_last,
            monitor="global_step",
            mode="max",
            save_on_train_epoch_end=False,
        ),
        EMAUpdate(),
        Throughput(config.log.every_n_steps, config.log.peak_tflops, config.data.resolution),
        MetricsFile(out, config.log.every_n_steps),
        SkippedData(out),  # names each skipped sample: the log and out/skipped.jsonl
        FinalCheckpoint(out / CHECKPOINTS, config.checkpoint.keep_last),
        Preemption(out / CHECKPOINTS, flag or StopFlag()),  # after the EMA update of the step
        RunInfo(config, out),
    ]
    if config.log.sample_every_n_steps > 0 and config.data.cached:
        warnings.warn("no sample grids from a latent cache (it holds no images)", stacklevel=2)
    elif config.log.sample_every_n_steps > 0:  # written to out/samples/ even without a logger
        batch = data.fixed_batch(config.log.sample_objects)
        callbacks.append(
            SampleGrids(
                config.log.sample_every_n_steps,
                batch,
                config.log.sample_steps,
                config.log.guidance_scale,
                out / "samples",
            )
        )
    if config.log.progress_bar:
        # The bar reads the loss from the device when it refreshes: refreshing only at the
        # logging cadence keeps that host sync out of every other step (training.callbacks.LossBar).
        callbacks.append(LossBar(refresh_rate=config.log.every_n_steps))
    return pl.Trainer(
        accelerator=launch.accelerator,
        devices=launch.devices,
        num_nodes=launch.num_nodes,
        strategy=launch.strategy,
        precision=launch.precision,
        max_steps=config.train.max_steps,
        max_epochs=-1,
        gradient_clip_val=config.train.grad_clip or None,
        accumulate_grad_batches=config.train.accumulate,
        gradient_clip_algorithm="norm",
        log_every_n_steps=config.log.every_n_steps,
        callbacks=callbacks,
        logger=make_logger(config, out),
        enable_progress_bar=config.log.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # webdataset splits by node itself
        num_sanity_val_steps=0,
        default_root_dir=str(out),
        deterministic=False,
        plugins=plugins(launch.strategy),
        **validation_args(config),
    )


def plugins(strategy) -> list:
    """Atomic checkpoint files (DDP / single); under SLURM, Lightning's auto-requeue off: it
    would save inside its signal handler and resume from its own ``hpc_ckpt_N`` (training.preemption
    does both safely)."""
    found: list = [] if isinstance(strategy, DeepSpeedStrategy) else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        found.append(SLURMEnvironment(auto_requeue=False))
    return found


def validation_args(config: RunConfig) -> dict:
    """The held-out loss every ``log.val_every_n_steps`` optimizer steps (counted across epochs)
    when ``data.val`` is given; no validation loop otherwise."""
    if config.data.val and config.log.val_every_n_steps > 0:
        return {"val_check_interval": config.log.val_every_n_steps, "check_val_every_n_epoch": None}
    return {"limit_val_batches": 0}


def check_init(config: RunConfig) -> None:
    """A full-size preset name alone would train from random weights without a word (a GPU-week
    wasted): stop and say what to pass. ``tiny`` is a random-init model by design."""
    if config.model.init == "sd21-base":
        raise ConfigError(
            "model.init: sd21-base alone is an untrained random init. Pass the weights to start "
            "from: INIT=sd-v2.1-base-4view.pt (MVDream checkpoint), INIT=<model folder> (make "
            'convert-model / make export) or INIT=<training run> (ARGS="model.init=..." with '
            f"python -m training.train); for a debugging run from random weights, "
            f"model.init={RANDOM_PREFIX}sd21-base"
        )


def check_accumulate(config: RunConfig) -> None:
    """An epoch must end on an optimizer step: Lightning steps a partial accumulation at the end
    of an epoch, which would give that step fewer objects than the others."""
    if config.data.steps_per_epoch % config.train.accumulate:
        raise ConfigError(
            f"data.steps_per_epoch ({config.data.steps_per_epoch}) must be a multiple of "
            f"train.accumulate ({config.train.accumulate}): batches per epoch, accumulated in "
            "groups of train.accumulate per optimizer step"
        )


def global_batch_line(config: RunConfig, world_size: int) -> str:
    """What one optimizer step trains on, and the LR it uses (printed at start)."""
    batch, accumulate = config.data.batch_size, config.train.accumulate
    total = batch * accumulate * world_size
    return (
        f"global batch: {total} objects per optimizer step ({batch} per rank x {accumulate} "
        f"accumulated x {world_size} ranks; {total * 4} target views), peak lr "
        f"{config.train.lr:g} (not rescaled with the batch: docs/training.md)"
    )


def run(config: RunConfig) -> pl.Trainer:
    check_init(config)
    check_accumulate(config)
    out = Path(config.out)
    resume = config.checkpoint.resume
    if resume not in ("auto", "none") and not Path(resume).exists():  # before the model loads
        raise ConfigError(f"checkpoint.resume: {resume} does not exist")
    flag = StopFlag()
    flag.install()  # from the start: a signal while the model loads must not kill the run
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    data = ShardDataModule(
        config.data,
        ref_in_targets=config.stage == 2 and config.stage2.ref_in_targets,
        exact_resume=config.data.exact_resume,
        ref_image=config.stage == 2,
    )
    first_samples = data.check()  # bad data stops here, in seconds, before any model is built
    rank, world_size = global_rank_from_env(), world_size_from_env()
    # Rank 0 reads the initial weights; the others get them by broadcast (FineTuneModule.setup).
    model = resolve_init(
        config.model.init, config.model.seed, config.model.init_ema, out, rank, world_size
    )
    if config.data.cached and rank == 0:  # a cache made by another VAE / encoder / resolution
        check_cache_matches(first_samples, model, config.data.resolution)
    if rank == 0:
        save_config(config, out / "config.yaml")
        if not (
            out / BASE_MODEL / "model.json"
        ).exists():  # frozen parts + start weights, for export
            save_model(model, out / BASE_MODEL, source={"init": config.model.init})
    module = FineTuneModule(config, model)
    module.training_data = data_record(first_samples, config)
    trainer = build_trainer(config, data, flag)
    if trainer.is_global_zero:
        print(global_batch_line(config, trainer.world_size), flush=True)
    # The resume checkpoint is chosen inside fit, on rank 0, and broadcast (training.resume).
    install_resume(trainer, config.checkpoint.resume, out, config.checkpoint.keep_last)
    # Our checkpoints hold tensors and plain containers only: load them weights-only.
    trainer.fit(module, datamodule=data, weights_only=True)
    return trainer


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML run config (configs/stage*.yaml)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (and where each value came from), train nothing",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=1e-5")
    args = parser.parse_args(argv)
    return args, args.overrides


def release_process_group() -> None:
    """Destroy the default process group, if any, while the interpreter is whole: gloo's worker
    threads outliving it abort a finished run's process at exit ("terminate called without an
    active exception", SIGABRT), which torchrun reports as a failed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        config, resolved = resolve_config(args.config, overrides)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    if args.print_config:
        print(resolved.describe())
        return
    try:
        run(config)
    except (ConfigError, CheckpointError, DataError) as error:
        # a bad setting, model.init or data.train/val: the key, the path and the problem, one line
        raise SystemExit(f"error: {error}") from None
    finally:
        release_process_group()


if __name__ == "__main__":
    main()

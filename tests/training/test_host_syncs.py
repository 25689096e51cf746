"""The step loop reads nothing back from the device between logging steps.

A real Lightning run (tiny model, the production callbacks, TensorBoard, the progress bar, the
weight EMA) with every way a tensor's value reaches the host counted: ``item``, ``tolist``,
``numpy``, ``cpu`` and Python's ``bool``/``float``/``int``/``index`` conversions, each of which
waits for the device on a GPU. Reads inside the data loader are left out (its tensors are host
tensors until the batch is transferred). Every read must fall in a logging step's window (from one
step's start to the next's)."""

from __future__ import annotations

import traceback
from collections import Counter

import pytorch_lightning as pl
import torch
from train_helpers import tiny_config

from models.bundle import build_model
from training.datamodule import ShardDataModule
from training.module import FineTuneModule
from training.train import build_trainer

EVERY, STEPS = 4, 9
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class HostReads(pl.Callback):
    """Counts host reads per optimizer step window (keyed by the step that starts it)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.reads: Counter = Counter()
        self.where: dict[int, list[str]] = {}
        self._saved: dict[str, object] = {}

    def start(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))

    def stop(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _wrap(self, name: str, original):
        def counted(tensor, *args, **kwargs):
            if self.step is not None:
                stack = traceback.extract_stack()[:-1]
                if not any("torch/utils/data/" in frame.filename for frame in stack):
                    self.reads[self.step] += 1
                    caller = next(
                        (f for f in reversed(stack) if "/torch/" not in f.filename), stack[-1]
                    )
                    self.where.setdefault(self.step, []).append(
                        f"{name} at {caller.filename}:{caller.lineno}"
                    )
            return original(tensor, *args, **kwargs)

        return counted

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.step = trainer.global_step

    def on_train_end(self, trainer, module) -> None:
        self.step = None


def test_no_host_reads_between_logging_steps(rendered_shards, tmp_path, capsys):
    config = tiny_config(
        tmp_path, rendered_shards, f"log.every_n_steps={EVERY}", f"train.max_steps={STEPS}",
        "checkpoint.every_n_steps=1000", "log.logger=tensorboard", "log.progress_bar=true",
        "ema.enabled=true", "ema.start_step=0", "data.steps_per_epoch=1000",
    )  # fmt: skip
    pl.seed_everything(0, verbose=False)
    data = ShardDataModule(config.data)
    module = FineTuneModule(config, build_model("tiny", seed=0))
    trainer = build_trainer(config, data)
    reads = HostReads()
    trainer.callbacks.insert(0, reads)
    reads.start()
    try:
        trainer.fit(module, datamodule=data)
    finally:
        reads.stop()
    assert trainer.global_step == STEPS
    # The window of step s (0-based) ends with optimizer step s + 1: it logs when that is a
    # multiple of log.every_n_steps; the last window also ends the run (final flush and save).
    logging = {s for s in range(STEPS) if (s + 1) % EVERY == 0} | {STEPS - 1}
    quiet = {s: reads.where[s] for s in range(STEPS) if s not in logging and reads.reads[s]}
    assert not quiet, f"host reads outside logging steps: {quiet}"
    # The counter sees the reads that logging does make (it would pass vacuously otherwise).
    assert all(reads.reads[s] > 0 for s in logging), dict(reads.reads)
    assert "loss/" in capsys.readouterr().out  # the bar still shows the loss, read at refreshes

"""MFU logging says why it is off instead of dropping ``perf/mfu`` without a word."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from train_helpers import TINY

from models.bundle import build_model
from training.callbacks import Throughput
from training.config import load_config
from training.module import FineTuneModule


@pytest.fixture(scope="module")
def module_and_trainer():
    module = FineTuneModule(load_config(TINY), build_model("tiny", seed=0))
    return module, pl.Trainer(logger=False, enable_progress_bar=False)


def test_flops_are_counted_when_a_peak_is_known(module_and_trainer, recwarn):
    module, trainer = module_and_trainer
    callback = Throughput(1, peak=100.0, data_resolution=32)
    callback.on_train_start(trainer, module)
    assert callback.flops_per_image[True] > 0 and module.flops_per_image > 0
    assert not [w for w in recwarn if "perf/mfu" in str(w.message)]


@pytest.mark.parametrize(
    "resolution, peak, reason",
    [
        (32, 0.0, "no peak FLOP/s known for this device"),
        (2, 100.0, "counting the UNet's FLOPs failed \\(RuntimeError"),  # a 2 px input fails
    ],
)
def test_no_mfu_says_why(module_and_trainer, resolution, peak, reason):
    module, trainer = module_and_trainer
    callback = Throughput(1, peak=peak, data_resolution=resolution)
    with pytest.warns(UserWarning, match=f"perf/mfu is not logged: {reason}"):
        callback.on_train_start(trainer, module)
    assert callback.flops_per_image == {}

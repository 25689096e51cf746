"""Config values are validated at load (a zero period or count is an error naming its key), and a
config's name works as well as its path (``CONFIG=tiny`` for make finetune)."""

from __future__ import annotations

import re

import pytest
from train_helpers import ROOT

from training.config import ConfigError, load_config
from training.launch import default_config

TINY = ROOT / "configs" / "stage1-tiny.yaml"


@pytest.mark.parametrize(
    "override",
    [
        "ema.update_every=0",
        "data.steps_per_epoch=0",
        "checkpoint.every_n_steps=0",
        "checkpoint.keep_last=0",
        "train.max_steps=0",
        "log.every_n_steps=0",
        "data.prefetch_factor=0",
        "train.lr=0",
        "data.num_workers=-1",
    ],
)
def test_zero_or_negative_counts_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(TINY, [override])


def test_preset_name_works_as_well_as_a_path():
    assert default_config(2, "tiny") == str(ROOT / "configs" / "stage2-tiny.yaml")
    assert default_config(1, "sd21-base") == str(ROOT / "configs" / "stage1-sd21-base.yaml")
    assert default_config(1, str(TINY)) == str(TINY)
    assert load_config("stage2-tiny").stage == 2
    with pytest.raises(ConfigError, match="not found"):
        load_config("stage9-nothing")

"""Run configs: all four load, every key is documented in place, overrides work, and a bad config
names the bad key."""

from __future__ import annotations

import dataclasses
import re

import pytest
from train_helpers import ROOT

from training.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((ROOT / "configs").glob("stage*.yaml"))


def _sections() -> set[str]:
    return {
        f.name
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(getattr(RunConfig(), f.name))
    }


def test_four_configs_exist_for_both_stages_and_sizes():
    names = {path.name for path in CONFIGS}
    assert {
        "stage1-tiny.yaml",
        "stage2-tiny.yaml",
        "stage1-sd21-base.yaml",
        "stage2-sd21-base.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_key_present_and_commented(path):
    config = load_config(path)
    assert config.stage == int(path.name[5])
    lines = path.read_text().splitlines()
    found, section = set(), ""
    for line in lines:
        match = re.match(r"^(\s*)([a-z_0-9]+):(.*)$", line)
        if not match:
            continue
        indent, key, rest = match.groups()
        if not indent:
            section = key
        full = key if not indent else f"{section}.{key}"
        if rest.strip() and not rest.strip().startswith("#"):
            assert "#" in rest, f"{path.name}: {full} has no comment"
        found.add(full)
    leaves = {k for k in found if "." in k or k not in _sections()}
    nested = set()
    for name in _sections():
        nested |= {f"{name}.{f.name}" for f in dataclasses.fields(getattr(RunConfig(), name))}
    expected = nested | {f.name for f in dataclasses.fields(RunConfig) if f.name not in _sections()}
    assert expected <= leaves, f"{path.name} lacks {sorted(expected - leaves)}"


def test_overrides_parse_yaml_values():
    config = load_config(
        ROOT / "configs/stage1-tiny.yaml",
        ["train.lr=1e-3", "data.train=[a, b]", "ema.enabled=false"],
    )
    assert (
        config.train.lr == 1e-3 and config.data.train == ["a", "b"] and config.ema.enabled is False
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=fast", "train.lr"),
        ("strategy.zero_stage=4", "strategy.zero_stage"),
        ("data.background=blue", "data.background"),
        ("train.cfg_dropout=2", "train.cfg_dropout"),
        ("ema.enabled=maybe", "ema.enabled"),
        ("nonsense", "nonsense"),
    ],
)
def test_bad_config_names_the_key(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(ROOT / "configs/stage1-tiny.yaml", [override])

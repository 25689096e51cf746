"""Strategies: the DeepSpeed strategy and its config are built and validated by DeepSpeed's own
config parser; without a GPU, DeepSpeed runs on its CPU accelerator (runs: test_deepspeed.py);
DDP uses gloo on CPU."""

from __future__ import annotations

import pytest
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy
from train_helpers import ROOT

from training import strategy as strategies
from training.config import ConfigError, load_config

SD21 = ROOT / "configs" / "stage1-sd21-base.yaml"


def _validated(ds_config: dict):
    from deepspeed.runtime.config import DeepSpeedConfig

    # Lightning adds these from the Trainer (precision, clipping, accumulation) at setup.
    full = {
        **ds_config,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
    }
    return DeepSpeedConfig(full)


def _validated_as_is(ds_config: dict):
    from deepspeed.runtime.config import DeepSpeedConfig

    return DeepSpeedConfig({**ds_config, "bf16": {"enabled": True}})


def test_deepspeed_zero2_is_the_gpu_default(monkeypatch):
    config = load_config(SD21)
    monkeypatch.setattr(strategies, "resolve_accelerator", lambda config: "gpu")
    monkeypatch.setattr(strategies.torch.cuda, "device_count", lambda: 8)
    launch = strategies.build_launch(config)
    assert launch.accelerator == "gpu" and launch.devices == 8 and launch.precision == "bf16-mixed"
    assert isinstance(launch.strategy, DeepSpeedStrategy)
    assert launch.strategy.exclude_frozen_parameters
    parsed = _validated(launch.strategy.config)
    assert parsed.zero_optimization_stage == 2 and parsed.train_micro_batch_size_per_gpu == 16
    assert parsed.zero_config.offload_optimizer is None


def test_deepspeed_gets_the_configured_clipping_and_accumulation(rendered_shards, tmp_path):
    """train.grad_clip and train.accumulate reach DeepSpeed's own config through the Trainer
    (Lightning writes them into it; DeepSpeed then clips and accumulates itself)."""
    from train_helpers import tiny_config

    from models.bundle import build_model
    from training.datamodule import ShardDataModule
    from training.module import FineTuneModule
    from training.train import build_trainer

    config = tiny_config(
        tmp_path, rendered_shards, "strategy.name=deepspeed", "train.grad_clip=0.37",
        "train.accumulate=3", "data.steps_per_epoch=3",
    )  # fmt: skip
    trainer = build_trainer(config, ShardDataModule(config.data))
    module = FineTuneModule(config, build_model("tiny", seed=0))
    module.trainer = trainer
    trainer.strategy.connect(module)
    trainer.strategy._format_batch_size_and_grad_accum_config()  # what setup does
    parsed = _validated_as_is(trainer.strategy.config)
    assert parsed.gradient_clipping == pytest.approx(0.37)
    assert parsed.gradient_accumulation_steps == 3


def test_deepspeed_zero3_with_cpu_offload_validates():
    config = load_config(
        SD21,
        [
            "strategy.zero_stage=3",
            "strategy.offload_optimizer=true",
            "strategy.offload_params=true",
        ],
    )
    parsed = _validated(strategies.deepspeed_config(config))
    assert parsed.zero_optimization_stage == 3
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.offload_optimizer.device == "cpu"


def test_bad_deepspeed_settings_name_the_key():
    with pytest.raises(ConfigError, match="strategy.offload_params"):
        strategies.deepspeed_config(load_config(SD21, ["strategy.offload_params=true"]))


def test_deepspeed_without_a_gpu_is_the_cpu_accelerator_in_bf16(monkeypatch):
    """The test/debug mode: DeepSpeed's CPU accelerator, gloo, bf16 as on GPUs."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    launch = strategies.build_launch(
        load_config(SD21, ["strategy.name=deepspeed", "strategy.accelerator=cpu"])
    )
    assert isinstance(launch.strategy, strategies.CPUDeepSpeedStrategy)
    assert launch.precision == "bf16-mixed" and launch.strategy._process_group_backend == "gloo"
    from deepspeed.accelerator import get_accelerator

    assert get_accelerator().device_name() == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(ConfigError, match="DS_ACCELERATOR"):
        strategies.use_cpu_deepspeed()


def test_cpu_uses_ddp_on_gloo_or_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    single = strategies.build_launch(load_config(SD21, ["strategy.accelerator=cpu"]))
    assert single.precision == "32" and single.devices == 1
    assert type(single.strategy).__name__ == "SingleDeviceStrategy"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # as torchrun sets it
    ddp = strategies.build_launch(load_config(SD21, ["strategy.accelerator=cpu"]))
    assert isinstance(ddp.strategy, DDPStrategy) and ddp.devices == 2
    assert ddp.strategy._process_group_backend == "gloo"

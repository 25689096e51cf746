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


OFFLOAD_SCRIPT = """
import os, torch
from training.strategy import share_offload_staging, use_cpu_deepspeed
use_cpu_deepspeed()
import deepspeed
from deepspeed.ops.adam import DeepSpeedCPUAdam
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
config = {
    "train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "zero_allow_untested_optimizer": True,
}
engine, _, _, _ = deepspeed.initialize(
    model=model, optimizer=DeepSpeedCPUAdam(model.parameters(), lr=1e-2), config=config
)
zero = engine.optimizer
weights = zero.parallel_partitioned_bit16_groups[0][0]
before = weights.clone()
print("freed", share_offload_staging(zero), weights.numel() * 2)
for _ in range(3):
    loss = engine(torch.randn(4, 64, dtype=torch.bfloat16)).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
master = zero.single_partition_of_fp32_groups[0]
print("shared", zero.param_buffer_of_bit16_for_cpu_offload_groups[0].data_ptr() == weights.data_ptr())
print("moved", bool((weights != before).any()))
print("equal", torch.equal(weights, master.detach().to(torch.bfloat16)))
print("in_module", model[0].weight.data_ptr() == weights.data_ptr())
"""


def test_cpu_offload_writes_the_update_into_the_weights_without_a_staging_copy(tmp_path):
    """On a CPU, ZeRO-Offload's bf16 staging buffer would be a second copy of the weights (1.7 GB at
    sd21-base size): it is pointed at the weights themselves, and the optimizer's update still
    reaches them (bf16 weights == fp32 masters cast, after real CPU Adam steps)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "RANK": "0",
        "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", OFFLOAD_SCRIPT], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    freed, size = lines["freed"].split()
    assert int(freed) == int(size) > 0
    assert lines["shared"] == "True" and lines["moved"] == "True"
    assert lines["equal"] == "True" and lines["in_module"] == "True"

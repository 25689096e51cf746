"""The training step as a GPU user runs it: gradient accumulation equal to the larger batch, the
global batch printed at start, bf16 gradients reduced in fp32 under DeepSpeed, the compiled UNet
trained on CPU, and a full-size preset that refuses to train from random weights unasked."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import ROOT, tiny_config

from models.bundle import build_model
from training import strategy as strategies
from training.config import ConfigError, load_config
from training.datamodule import ShardDataModule
from training.module import FineTuneModule
from training.train import build_trainer, global_batch_line, run

SD21 = ROOT / "configs" / "stage1-sd21-base.yaml"


class FirstGradients(pl.Callback):
    """The UNet's gradients just before the first optimizer step, and the objects behind them."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.keys += list(batch["key"])

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.clone() for n, p in module.unet.named_parameters()}


def _first_step(tmp_path, shards, batch: int, accumulate: int) -> FirstGradients:
    config = tiny_config(
        tmp_path,
        shards,
        f"data.batch_size={batch}",
        f"train.accumulate={accumulate}",
        "data.steps_per_epoch=4",
        "train.max_steps=1",
        "log.logger=none",
        "train.multiview_ratio=0.5",
    )
    pl.seed_everything(0, verbose=False)
    data = ShardDataModule(config.data)
    module = FineTuneModule(config, build_model("tiny", seed=0))
    trainer = build_trainer(config, data)
    capture = FirstGradients()
    trainer.callbacks.append(capture)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    return capture


def test_accumulation_gives_the_gradients_of_the_larger_batch(rendered_shards, tmp_path):
    whole = _first_step(tmp_path / "whole", rendered_shards, batch=2, accumulate=1)
    parts = _first_step(tmp_path / "parts", rendered_shards, batch=1, accumulate=2)
    assert whole.keys == parts.keys and len(whole.keys) == 2  # the same objects, split in two
    assert whole.grads.keys() == parts.grads.keys()
    for name, grad in whole.grads.items():
        torch.testing.assert_close(parts.grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    # Without per-object draws the halves would see other noise: the gradients would differ.
    assert any(g.abs().sum() > 0 for g in whole.grads.values())


def test_global_batch_is_printed_with_the_lr(rendered_shards, tmp_path, capsys):
    config = tiny_config(
        tmp_path, rendered_shards, "data.batch_size=2", "train.accumulate=2",
        "data.steps_per_epoch=2", "train.max_steps=1", "log.logger=none",
    )  # fmt: skip
    run(config)
    line = global_batch_line(config, 1)
    assert line in capsys.readouterr().out
    assert "4 objects per optimizer step" in line and "2 accumulated" in line
    assert global_batch_line(config, 64).startswith("global batch: 256 objects")


def test_an_epoch_must_end_on_an_optimizer_step(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards, "train.accumulate=3", "data.steps_per_epoch=4")
    with pytest.raises(ConfigError, match="multiple of train.accumulate"):
        run(config)


def test_compiled_unet_trains_on_cpu(rendered_shards, tmp_path):
    config = tiny_config(
        tmp_path, rendered_shards, "model.compile=true", "train.max_steps=2",
        "log.logger=none", "train.multiview_ratio=1.0",
    )  # fmt: skip
    trainer = run(config)
    module = trainer.lightning_module
    assert isinstance(module._compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["loss/all"])
    # A batch of another size (the last, partial batch of an epoch) compiles again and runs.
    unet, views = module.unet, 4
    for objects in (1,):
        x = torch.randn(objects * views, unet.conv_in.in_channels, 8, 8)
        t = torch.full((objects * views,), 10)
        context = torch.randn(objects * views, 1, unet.config.cross_attention_dim)
        camera = torch.randn(objects * views, 16)
        out = module._unet_call(x, t, context, camera, num_views=views)
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_bf16_gradients_are_reduced_in_fp32():
    from deepspeed.runtime.config import DeepSpeedConfig

    ds = strategies.deepspeed_config(load_config(SD21, ["train.accumulate=4"]))
    parsed = DeepSpeedConfig(
        {**ds, "gradient_accumulation_steps": 4, "bf16": {"enabled": True}}  # Lightning's part
    )
    assert parsed.communication_data_type == torch.float32


def test_sd21_base_without_init_names_what_to_pass(tmp_path):
    config = load_config(SD21, [f"out={tmp_path}"])
    with pytest.raises(ConfigError) as error:
        run(config)
    message = str(error.value)
    for expected in ("sd-v2.1-base-4view.pt", "model folder", "random:sd21-base"):
        assert expected in message
    assert not any(tmp_path.iterdir())  # stopped before writing anything


def test_the_ema_is_partitioned_from_the_start_when_deepspeed_is_picked(monkeypatch):
    from training import module as modules
    from training.ema import PartitionedWeightEMA

    # strategy.name: auto on a GPU machine resolves to DeepSpeed (training.strategy).
    monkeypatch.setattr(modules, "resolve_accelerator", lambda config: "gpu")
    config = load_config(ROOT / "configs" / "stage1-tiny.yaml")
    assert config.strategy.name == "auto" and config.ema.enabled
    module = FineTuneModule(config, build_model("tiny", seed=0))
    assert isinstance(module.weight_ema, PartitionedWeightEMA)
    assert module.weight_ema.shadow is None  # nothing held until bound to this rank's partition

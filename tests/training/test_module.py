"""Module pieces in isolation: LR schedule, weight EMA, gradient checkpointing and compile switches,
the frozen parts kept out of the module and the optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import ROOT

from models.bundle import build_model
from training.config import load_config
from training.ema import WeightEMA
from training.module import FineTuneModule, lr_lambda

TINY = ROOT / "configs" / "stage1-tiny.yaml"


def _batch(objects: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "views": torch.rand(objects, 4, 3, 32, 32, generator=g) * 2 - 1,
        "ref_image": torch.rand(objects, 3, 32, 32, generator=g) * 2 - 1,
        "ref_clip": torch.rand(objects, 3, 32, 32, generator=g),
        "cameras": torch.randn(objects, 4, 16, generator=g),
        "ref_camera": torch.randn(objects, 16, generator=g),
    }


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_warmup_then_schedule(schedule):
    config = load_config(
        TINY,
        [
            f"train.schedule={schedule}",
            "train.warmup_steps=10",
            "train.max_steps=110",
            "train.min_lr_ratio=0.1",
        ],
    )
    factor = lr_lambda(config)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    end = 1.0 if schedule == "constant" else 0.1
    assert factor(110) == pytest.approx(end) and factor(500) == pytest.approx(end)
    if schedule == "cosine":
        assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_weight_ema_is_fp32_and_follows_the_decay():
    layer = torch.nn.Linear(3, 3).to(torch.bfloat16)  # DeepSpeed's bf16 module weights
    ema = WeightEMA(layer, decay=0.9)
    start = {n: t.clone() for n, t in ema.shadow.items()}
    assert all(t.dtype == torch.float32 for t in start.values())
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(layer, step=1000)  # past the warm-up: decay 0.9
    expected = start["weight"] + 0.1 * (layer.weight.float() - start["weight"])
    torch.testing.assert_close(ema.shadow["weight"], expected)
    restored = WeightEMA(layer, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.shadow["weight"], ema.shadow["weight"])


def test_frozen_parts_are_outside_module_and_optimizer():
    module = FineTuneModule(load_config(TINY), build_model("tiny", seed=0))
    names = {n.split(".")[0] for n, _ in module.named_parameters()}
    assert names == {"unet"}
    assert not any(p.requires_grad for p in module.frozen.vae.parameters())
    assert not any(p.requires_grad for p in module.frozen.image_encoder.parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        config = load_config(
            TINY,
            [f"model.grad_checkpointing={str(checkpointing).lower()}", "train.multiview_ratio=1.0"],
        )
        module = FineTuneModule(config, build_model("tiny", seed=0))
        assert module.unet.is_gradient_checkpointing == checkpointing
        loss, multiview = module.loss_for(_batch(), step=0)
        loss.backward()
        results.append((loss.detach(), module.unet.conv_in.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_compile_switch_wraps_the_unet_without_a_second_copy():
    module = FineTuneModule(load_config(TINY, ["model.compile=true"]), build_model("tiny", seed=0))
    module.configure_model()
    assert isinstance(module._compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert all(k.startswith("unet.") for k in module.state_dict())


def test_stage2_reference_dropout_runs_steps_without_the_reference_frame():
    """On the steps the policy drops, the UNet sees the 4 targets alone (as SDS queries it);
    on the others, 4 targets + the reference frame; the same steps for the same seed."""
    from models.ema_frames import keeps_reference

    def frames_per_step(seed: int, dropout: float) -> list[int]:
        config = load_config(
            ROOT / "configs" / "stage2-tiny.yaml",
            [f"stage2.ref_dropout={dropout}", f"train.seed={seed}"],
        )
        module = FineTuneModule(config, build_model("tiny", seed=0))
        seen: list[int] = []
        hook = module.unet.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(kwargs["num_views"]), with_kwargs=True
        )
        with torch.no_grad():
            for step in range(12):
                module.loss_for(_batch(), step, multiview=True)
        hook.remove()
        assert seen == [4 if not keeps_reference(module.policy, seed, s) else 5 for s in range(12)]
        return seen

    dropped = frames_per_step(0, 0.5)
    assert set(dropped) == {4, 5}  # both kinds of step in 12 (seed 0)
    assert frames_per_step(0, 0.5) == dropped  # deterministic per seed
    assert frames_per_step(0, 0.0) == [5] * 12  # no dropout: always the reference frame

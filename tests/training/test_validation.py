"""The validation loop: a held-out loss on ``data.val`` shards every ``log.val_every_n_steps``
steps, logged beside the train loss, on the same held-out batches each time; sample grids are
drawn from the weight EMA (the weights that get exported), the live weights left untouched."""

from __future__ import annotations

import json
import math

import torch
from train_helpers import tiny_config

from models.bundle import build_model
from training.datamodule import ShardDataModule
from training.evaluate import generate_views
from training.module import FineTuneModule
from training.train import run


def test_held_out_loss_is_logged_with_the_train_loss(rendered_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    val = json.dumps([str(rendered_shards)])
    config = tiny_config(
        out, rendered_shards, f"data.val={val}", "log.val_every_n_steps=2", "data.val_batches=2",
        "train.max_steps=4", "checkpoint.every_n_steps=4",
    )  # fmt: skip
    trainer = run(config)
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    val_loss = events.Scalars("loss/val")
    assert len(val_loss) == 2 and all(math.isfinite(e.value) and e.value > 0 for e in val_loss)
    # after steps 2 and 4, at the logger steps of those steps' train loss (logged every 2 steps)
    assert [e.step for e in val_loss] == [e.step for e in events.Scalars("loss/all")]
    # The held-out loss is a function of the weights only: the same batches and draws each time.
    first = trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule)
    again = trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule)
    assert first[0]["loss/val"] == again[0]["loss/val"]


def test_validation_reads_the_same_held_out_batches(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards, "data.val_batches=3")
    config.data.val = [str(rendered_shards)]
    loader = ShardDataModule(config.data).val_dataloader()
    runs = [[(k, tuple(c.tolist())) for b in loader for k, c in zip(b["key"], b["choice"])]]
    runs.append([(k, tuple(c.tolist())) for b in loader for k, c in zip(b["key"], b["choice"])])
    assert len(runs[0]) == 3 * config.data.batch_size and runs[0] == runs[1]


def test_sample_grids_come_from_the_ema_weights(rendered_shards, tmp_path):
    config = tiny_config(tmp_path, rendered_shards)
    module = FineTuneModule(config, build_model("tiny", seed=0))
    other = build_model("tiny", seed=1).unet.state_dict()
    module.weight_ema.shadow = {n: other[n].float().clone() for n in module.weight_ema.names}
    live = {n: p.detach().clone() for n, p in module.unet.named_parameters()}
    batch = ShardDataModule(config.data).fixed_batch(1)

    from_ema = generate_views(module, batch, steps=2, guidance=1.0)
    assert all(torch.equal(p, live[n]) for n, p in module.unet.named_parameters())  # restored
    from_live = generate_views(module, batch, steps=2, guidance=1.0, use_ema=False)
    assert not torch.allclose(from_ema, from_live)
    module.unet.load_state_dict(module.weight_ema.shadow, strict=False)
    expected = generate_views(module, batch, steps=2, guidance=1.0, use_ema=False)
    torch.testing.assert_close(from_ema, expected)

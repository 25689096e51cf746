"""The batched device path (workers decode to uint8, training.batch_transforms makes the images)
produces the tensors of the per-sample path it replaced: ``data/per_sample_golden.npz`` holds
``training.samples.image_sample``'s outputs at commit ce05dc7 (the last per-sample version) for
the synthetic samples of data_helpers, resized (48 -> 16 px, random background), at the render's
size (white) and with the reference among the targets (40 -> 16 px, gray)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import synthetic_sample
from webdataset.utils import make_seed

from models.shards.images import decode_rgba
from training.batch_transforms import image_batch
from training.samples import collate, image_sample

GOLDEN = Path(__file__).parent / "data" / "per_sample_golden.npz"
CASES = {  # name: (render size, training resolution, background, reference among targets)
    "resize": (48, 16, "random", False),
    "native": (16, 16, "white", False),
    "refin": (40, 16, "gray", True),
}


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(GOLDEN) as data:
        return {name: torch.from_numpy(data[name]) for name in data.files}


def _worker_batch(case: str) -> dict:
    size, _, background, ref_in = CASES[case]
    samples = []
    for seed in range(3):
        rng = random.Random(make_seed(7, seed))  # the stream's per-sample generator
        samples.append(image_sample(synthetic_sample(seed, size), rng, background, ref_in))
    return collate(samples)


@pytest.mark.parametrize("case", sorted(CASES))
def test_device_path_reproduces_the_per_sample_path(case, golden):
    batch = _worker_batch(case)
    assert batch["rgba"].dtype == torch.uint8  # only decoded bytes cross the worker boundary
    assert batch["rgba"].shape == (3, 5, CASES[case][0], CASES[case][0], 4)
    out = image_batch(batch, CASES[case][1], ref_image=True)
    assert "rgba" not in out and "background" not in out
    for seed in range(3):
        for name in ("views", "ref_image", "ref_clip"):
            torch.testing.assert_close(
                out[name][seed], golden[f"{case}/{seed}/{name}"], atol=2e-6, rtol=0
            )
        for name in ("cameras", "ref_camera", "angles", "choice"):
            assert torch.equal(out[name][seed], golden[f"{case}/{seed}/{name}"]), name


def test_stage1_makes_no_reference_image(golden):
    out = image_batch(_worker_batch("resize"), 16, ref_image=False)
    assert "ref_image" not in out
    torch.testing.assert_close(out["ref_clip"][0], golden["resize/0/ref_clip"], atol=2e-6, rtol=0)


def test_objects_of_different_render_sizes_share_a_batch(golden):
    rng = random.Random(make_seed(7, 0))
    small = image_sample(synthetic_sample(0, 48), rng, "random", False)
    rng = random.Random(make_seed(7, 1))
    large = image_sample(synthetic_sample(1, 64), rng, "random", False)
    batch = collate([small, large])
    assert isinstance(batch["rgba"], list)  # not stackable: resized per object on the device
    out = image_batch(batch, 16)
    assert out["views"].shape == (2, 4, 3, 16, 16)
    torch.testing.assert_close(out["views"][0], golden["resize/0/views"], atol=2e-6, rtol=0)


def test_per_view_decode_matches_the_batched_one():
    sample = synthetic_sample(2, 48)
    batch = image_batch(
        collate([image_sample(sample, random.Random(1), "black", False)]), 16, ref_image=True
    )
    view = int(batch["choice"][0, 0])
    rgba = decode_rgba(sample, view, 16)  # premultiplied, for per-view users
    torch.testing.assert_close(
        rgba[:3].clamp(0, 1) * 2 - 1, batch["views"][0, 0], atol=2e-6, rtol=0
    )


@pytest.mark.parametrize("stage", [1, 2])
def test_the_reference_is_vae_encoded_only_in_stage2(stage, rendered_shards, tmp_path):
    from train_helpers import tiny_config

    from models.bundle import build_model
    from training.datamodule import ShardDataModule
    from training.module import FineTuneModule

    config = tiny_config(tmp_path, rendered_shards, stage=stage)
    data = ShardDataModule(config.data, ref_image=stage == 2)
    raw = next(iter(data.make_loader(config.data.train, progress=lambda: 0)))
    batch = data.on_after_batch_transfer(raw, 0)  # what the trainer hands the module
    assert ("ref_image" in batch) == (stage == 2)
    module = FineTuneModule(config, build_model("tiny", seed=0))
    encoded = []
    encode = module.frozen.vae.encode
    module.frozen.vae.encode = lambda images, **kw: (
        encoded.append(len(images)),
        encode(images, **kw),
    )[1]
    generators = module.object_generators(config.data.batch_size, step=0)
    latents, _, ref_latent = module.encode_batch(batch, generators)
    b = config.data.batch_size
    assert encoded == [b * 4 + (b if stage == 2 else 0)]
    assert latents.shape[:2] == (b, 4) and len(ref_latent) == (b if stage == 2 else 0)

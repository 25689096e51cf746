"""A model folder's components load in their ecosystems' own loaders: diffusers for the UNet,
VAE and scheduler, open_clip for the image encoder; and our loader reads them back bit-exactly
(also the version-1 flat layout of older folders)."""

from __future__ import annotations

import json

import open_clip
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from models.attention import MultiViewAttnProcessor
from models.bundle import build_model, load_model
from models.unet import MultiViewUNet


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_components_load_in_diffusers_and_open_clip(tiny_model_dir):
    model = build_model("tiny", seed=0)
    plain = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    _equal(plain, model.unet)
    multiview = MultiViewUNet.from_pretrained(tiny_model_dir / "unet")
    assert all(isinstance(p, MultiViewAttnProcessor) for p in multiview.attn_processors.values())
    torch.manual_seed(0)
    x, t = torch.randn(8, model.latent_channels, 8, 8), torch.full((8,), 500)
    context, camera = torch.randn(8, 1, 32), torch.randn(8, 16)
    with torch.no_grad():
        expected = model.unet(x, t, context, camera, num_views=4)
        assert torch.equal(multiview(x, t, context, camera, num_views=4), expected)
        single = plain(x, t, encoder_hidden_states=context, class_labels=camera).sample
        assert torch.allclose(single, model.unet(x, t, context, camera, num_views=1), atol=1e-5)
        assert not torch.allclose(single, expected, atol=1e-3)  # the joint attention matters
    vae = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    _equal(vae, model.vae.model)
    assert vae.config.scaling_factor == model.vae.scaling_factor
    scheduler = DDPMScheduler.from_pretrained(tiny_model_dir / "scheduler")
    assert torch.equal(scheduler.alphas_cumprod, model.noise_scheduler.alphas_cumprod)
    clip = open_clip.create_model(f"local-dir:{tiny_model_dir / 'image_encoder'}").eval()
    _equal(clip.visual, model.image_encoder.visual)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            clip.encode_image(pixels), model.image_encoder.visual(pixels), atol=1e-5
        )


def test_version_1_flat_folders_still_load(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    old = tmp_path / "v1"
    old.mkdir()
    save_file(dict(model.unet.state_dict()), str(old / "unet.safetensors"))
    save_file(dict(model.vae.model.state_dict()), str(old / "vae.safetensors"))
    visual = {k: v.contiguous() for k, v in model.image_encoder.visual.state_dict().items()}
    save_file(visual, str(old / "image_encoder.safetensors"))
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    meta |= {"version": 1, "image_encoder_weights": "image_encoder.safetensors"}
    (old / "model.json").write_text(json.dumps(meta))
    loaded = load_model(old)
    for a, b in (
        (loaded.unet, model.unet),
        (loaded.image_encoder.visual, model.image_encoder.visual),
    ):
        _equal(a, b)


def test_saving_the_same_weights_gives_the_same_bytes(tmp_path):
    # The eval fingerprint hashes these files: a rerun of the same export must not look like a new model.
    from models.layout import save_tensors

    state = {f"w{i}": torch.full((3,), float(i)) for i in range(4)}
    digests = set()
    for i in range(8):
        path = tmp_path / f"{i}.safetensors"
        save_tensors(state, path)
        digests.add(path.read_bytes())
    assert len(digests) == 1

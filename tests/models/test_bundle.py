"""Model bundle: presets, our format round trip, image encoder, VAE, schedules."""

import json
import shutil

import pytest
import torch
import yaml

from models.bundle import build_model, load_model, load_preset, save_model
from models.detect import load_diffusers_folder
from models.image_encoder import ENV_CHECKPOINT, ImageEncoder, resolve_pretrained_file
from models.sample import sample_views
from models.unet import unet_config
from models.vae import latent_channels, vae_config


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


def test_save_load_round_trip_is_exact(tiny_model_dir):
    model = build_model("tiny", seed=0)
    loaded = load_model(tiny_model_dir)
    original, restored = _state(model), _state(loaded)
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert restored[key].dtype == torch.float32
        assert torch.equal(value, restored[key]), key
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert meta["image_encoder_weights"] == "image_encoder" and meta["version"] == 2
    assert meta["preset"]["cameras"]["legacy_double_radians"] is False


def test_seed_controls_init():
    a, b, c = (build_model("tiny", seed=s).unet.conv_in.weight for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_save_with_replacement_unet_weights(tmp_path):
    model = build_model("tiny", seed=0)
    ema = {k: torch.full_like(v, 0.5) for k, v in model.unet.state_dict().items()}
    loaded = load_model(save_model(model, tmp_path / "m", unet_state_dict=ema))
    assert all(torch.all(v == 0.5) for v in loaded.unet.state_dict().values())
    with pytest.raises(ValueError, match="unet_state_dict keys"):
        save_model(model, tmp_path / "bad", unet_state_dict={"x": torch.zeros(1)})


def test_bad_preset_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="known"):
        load_preset("nope")
    text = (load_preset.__globals__["CONFIG_DIR"] / "model_tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("norm_num_groups: 8   ", "norm_groupz: 8   ", 1))
    with pytest.raises(ValueError, match="norm_groupz"):
        build_model(bad)
    bad.write_text(text.replace("  steps: 10 ", "  stepz: 10 ", 1))
    with pytest.raises(ValueError, match="sampling.stepz"):
        build_model(bad)


def test_sd21_base_shapes_on_meta():
    model = build_model("sd21-base", device="meta")
    unet_params = sum(p.numel() for p in model.unet.parameters())
    # The fixture README: SD-2.1 UNet 865,910,724 + camera MLP 1,661,440.
    assert unet_params == 867_572_164
    assert model.unet.class_embedding.linear_1.weight.shape == (1280, 16)
    assert sum(p.numel() for p in model.vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 632_076_800
    assert model.image_encoder.embed_dim == model.context_dim == 1024
    # A shape-only forward at full size: 2 objects x 4 views and 2 x 5, 256 px (32x32 latents).
    for views in (4, 5):
        frames = 2 * views
        out = model.unet(
            torch.empty(frames, 4, 32, 32, device="meta"),
            torch.zeros(frames, dtype=torch.long, device="meta"),
            torch.empty(frames, 1, 1024, device="meta"),
            torch.empty(frames, 16, device="meta"),
            num_views=views,
        )
        assert out.shape == (frames, 4, 32, 32)


def test_image_encoder_preprocessing_and_uncond():
    encoder = build_model("tiny").image_encoder
    rgba = torch.rand(2, 4, 48, 64)
    rgba[:, 3] = 0.0  # fully transparent: must become white
    pixels = encoder.preprocess(rgba)
    assert pixels.shape == (2, 3, 32, 32)
    white = (1 - encoder.mean) / encoder.std
    torch.testing.assert_close(pixels, white.expand_as(pixels))
    assert encoder.encode(rgba).shape == (2, 1, 32)
    assert torch.count_nonzero(encoder.unconditional(3)) == 0
    assert encoder.unconditional(3).shape == (3, 1, 32)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training


def test_image_encoder_offline_error_is_clear(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    monkeypatch.delenv(ENV_CHECKPOINT, raising=False)
    with pytest.raises(RuntimeError, match=ENV_CHECKPOINT):
        resolve_pretrained_file("ViT-H-14", "laion2b_s32b_b79k")


def test_image_encoder_loads_a_local_open_clip_file(tmp_path, monkeypatch):
    section = load_preset("tiny")["image_encoder"]
    source = ImageEncoder(section)
    full = {f"visual.{k}": v for k, v in source.visual.state_dict().items()}
    full["text_projection"] = torch.zeros(4, 4)  # a full open_clip file also has the text tower
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(full, path)
    from models.image_encoder import load_pretrained_weights

    target = ImageEncoder(section)
    load_pretrained_weights(target, "ViT-H-14", str(path))
    for key, value in source.visual.state_dict().items():
        assert torch.equal(target.visual.state_dict()[key], value)


def test_latent_channels_follow_the_vae_section():
    """A preset without ``vae.latent_channels`` keeps SD's 4 (published checkpoints); the UNet's
    first and last conv follow the key, and a bad key is named."""
    sd21 = load_preset("sd21-base")
    assert latent_channels(sd21["vae"]) == 4
    assert vae_config(sd21["vae"])["latent_channels"] == 4
    config = unet_config(sd21["unet"], latent_channels(sd21["vae"]))
    assert config["in_channels"] == config["out_channels"] == 4
    section = {**sd21["vae"], "latent_channel": 8}
    with pytest.raises(ValueError, match="latent_channel"):
        vae_config(section)


def test_a_preset_with_more_latent_channels_trains_saves_and_samples(tmp_path):
    """``vae.latent_channels: 8`` reaches every place a latent is made: the VAE, the UNet's
    convs, the saved folder (ours and the plain diffusers one) and the sampler's noise."""
    preset = tmp_path / "tiny8.yaml"
    config = load_preset("tiny")
    config["vae"]["latent_channels"] = 8
    preset.write_text(yaml.safe_dump(config))
    model = build_model(preset)
    assert model.latent_channels == 8 and model.unet.config.out_channels == 8
    latents = model.vae.encode(torch.rand(4, 3, 32, 32) * 2 - 1, sample=False)
    assert latents.shape == (4, 8, 8, 8)
    camera = model.cameras(torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, 270.0]))
    context = model.image_encoder.encode(torch.rand(1, 3, 32, 32)).expand(4, -1, -1)
    out = model.unet(latents, torch.full((4,), 500), context, camera, num_views=4)
    assert out.shape == latents.shape
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.preset["vae"]["latent_channels"] == 8 and loaded.latent_channels == 8
    # the same folder without model.json: the preset is read back from the diffusers configs
    shutil.copytree(
        tmp_path / "model", tmp_path / "plain", ignore=shutil.ignore_patterns("model.json")
    )
    assert load_diffusers_folder(tmp_path / "plain").preset["vae"] == loaded.preset["vae"]
    result = sample_views(loaded, torch.rand(3, 32, 32), steps=2, progress=False)
    assert result.images.shape == (4, 3, 32, 32) and torch.isfinite(result.images).all()


def test_vae_round_trip_shapes_and_scale():
    model = build_model("tiny")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    latents = model.vae.encode(images, sample=False)
    assert latents.shape == (3, latent_channels(model.preset["vae"]), 8, 8)  # 4x VAE
    assert model.unet.config.in_channels == model.unet.config.out_channels == latents.shape[1]
    raw = model.vae.model.encode(images).latent_dist.mode()
    torch.testing.assert_close(latents, raw * model.preset["vae"]["scaling_factor"])
    assert model.vae.scaling_factor == model.preset["vae"]["scaling_factor"]
    assert model.vae.decode(latents).shape == images.shape


def test_schedule_is_mvdream():
    model = build_model("tiny")
    sched = model.noise_scheduler
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sched.betas.double(), betas, rtol=1e-6, atol=1e-9)
    assert sched.config.prediction_type == "epsilon"
    ddim = model.ddim_scheduler()
    ddim.set_timesteps(50)
    assert len(ddim.timesteps) == 50 and int(ddim.timesteps[0]) == 981


def test_legacy_camera_flag_changes_camera_inputs():
    model = build_model("tiny")
    normal = model.cameras(torch.tensor([0.0]), torch.tensor([90.0]))
    model.preset["cameras"]["legacy_double_radians"] = True
    legacy = model.cameras(torch.tensor([0.0]), torch.tensor([90.0]))
    assert normal.shape == (1, 16) and not torch.allclose(normal, legacy)


def test_clip_resize_is_kornias_antialiased_bicubic():
    # Checked against kornia.geometry.resize(..., "bicubic", align_corners=True, antialias=True)
    # (max difference 2e-7); kornia is not a dependency, so the test pins its two regimes.
    import torch.nn.functional as F

    from models.image_encoder import resize_bicubic

    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    plain = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(resize_bicubic(x, (224, 224)), plain)  # blur sigma 0.07: none
    big = F.interpolate(x, size=(512, 512), mode="nearest")
    blurred = resize_bicubic(big, (224, 224))
    sharp = F.interpolate(big, size=(224, 224), mode="bicubic", align_corners=True)
    assert blurred.std() < sharp.std()  # 2.3x downscale: Gaussian pre-blur (sigma 0.64)
    torch.testing.assert_close(resize_bicubic(torch.full((1, 3, 90, 70), 0.3), (224, 224)),
                               torch.full((1, 3, 224, 224), 0.3))  # fmt: skip

"""Multi-view UNet: joint attention, per-view equivalence, camera conditioning, V per call."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from models.bundle import build_model, load_preset
from models.cameras import camera_embedding, camera_to_world, orthogonal_azimuths
from models.vae import latent_channels

CHANNELS = latent_channels(load_preset("tiny")["vae"])  # the tiny UNet's latent channels


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


def _inputs(batch: int, views: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = batch * views
    x = torch.randn(frames, CHANNELS, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).repeat_interleave(views)
    context = torch.randn(batch, 1, 32, generator=g).repeat_interleave(views, 0)
    azimuths = orthogonal_azimuths(15.0, views).repeat(batch)
    camera = camera_embedding(camera_to_world(torch.full((frames,), 10.0), azimuths))
    return x, t, context, camera


@torch.no_grad()
def test_joint_attention_is_joint_and_objects_stay_separate(tiny):
    x, t, context, camera = _inputs(batch=2, views=4)
    base = tiny.unet(x, t, context, camera, num_views=4)
    x2 = x.clone()
    x2[0] += torch.randn_like(x2[0])  # change view 0 of object 0 only
    moved = tiny.unet(x2, t, context, camera, num_views=4)
    for view in (1, 2, 3):  # other views of the same object see the change
        assert not torch.allclose(base[view], moved[view], atol=1e-6)
    torch.testing.assert_close(base[4:], moved[4:])  # the other object does not
    per_view = tiny.unet(x2, t, context, camera, num_views=1)
    per_view_base = tiny.unet(x, t, context, camera, num_views=1)
    torch.testing.assert_close(per_view[1:], per_view_base[1:])  # V=1: views independent


@torch.no_grad()
def test_single_view_equals_diffusers_per_view_attention(tiny):
    x, t, context, camera = _inputs(batch=3, views=1)
    ours = tiny.unet(x, t, context, camera, num_views=1)
    processors = tiny.unet.attn_processors
    try:
        tiny.unet.set_attn_processor(AttnProcessor2_0())
        plain = super(type(tiny.unet), tiny.unet).forward(
            x, t, encoder_hidden_states=context, class_labels=camera, return_dict=False
        )[0]
    finally:
        tiny.unet.set_attn_processor(processors)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_camera_changes_output_and_orthogonal_views_differ(tiny):
    x, t, context, camera = _inputs(batch=1, views=4)
    same_x = x[:1].expand(4, -1, -1, -1).contiguous()
    out = tiny.unet(same_x, t, context, camera, num_views=1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (out[i] - out[j]).abs().max() > 1e-4, (i, j)
    no_camera = tiny.unet(same_x, t, context, None, num_views=1)
    assert (no_camera[0] - out[0]).abs().max() > 1e-4
    torch.testing.assert_close(no_camera[0], no_camera[1])  # without camera: identical inputs


@pytest.mark.parametrize("views", [1, 4, 5])
@torch.no_grad()
def test_variable_view_count(tiny, views):
    x, t, context, camera = _inputs(batch=2, views=views)
    assert tiny.unet(x, t, context, camera, num_views=views).shape == x.shape


def test_bad_view_count_is_rejected(tiny):
    x, t, context, camera = _inputs(batch=1, views=4)
    with pytest.raises(ValueError, match="num_views"):
        tiny.unet(x[:3], t[:3], context[:3], camera[:3], num_views=4)


def test_gradient_checkpointing_matches(tiny):
    x, t, context, camera = _inputs(batch=1, views=4)
    grads = []
    for checkpointing in (False, True):
        tiny.unet.zero_grad()
        if checkpointing:
            tiny.unet.enable_gradient_checkpointing()
        tiny.unet.train()
        tiny.unet(x, t, context, camera, num_views=4).square().mean().backward()
        grads.append(tiny.unet.conv_in.weight.grad.clone())
        tiny.unet.disable_gradient_checkpointing()
        tiny.unet.eval()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    tiny.unet.zero_grad()


@torch.no_grad()
def test_torch_compile_graph_matches_eager(tiny):
    # aot_eager traces forward through dynamo + AOTAutograd (what inductor compiles) without
    # needing a C compiler; the bench runs the inductor backend.
    x, t, context, camera = _inputs(batch=1, views=4)
    compiled = torch.compile(tiny.unet, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(
        compiled(x, t, context, camera, num_views=4), tiny.unet(x, t, context, camera, num_views=4)
    )

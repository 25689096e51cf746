"""Stage-2 EMA frame assembly: placement of the clean latent, timestep, camera; loss mask."""

import pytest
import torch

from models.ema_frames import (
    EMAFramePolicy,
    assemble_ema_frames,
    choose_reference_view,
    masked_mse,
)

B, V = 2, 4


def _inputs():
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(B * V, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500, 500, 500, 20, 20, 20, 20])
    cams = torch.randn(B * V, 16, generator=g)
    ref = torch.randn(B, 4, 8, 8, generator=g)
    ctx = torch.randn(B, 1, 32, generator=g)
    noise = torch.randn(B * V, 4, 8, 8, generator=g)
    ref_cam = torch.randn(B, 16, generator=g)
    return noisy, t, cams, ref, ctx, noise, ref_cam


def test_default_policy_places_reference_last():
    noisy, t, cams, ref, ctx, noise, _ = _inputs()
    frames = assemble_ema_frames(noisy, t, cams, ref, ctx, V, noise=noise)
    assert frames.num_views == V + 1 and frames.latents.shape == (B * (V + 1), 4, 8, 8)
    for b in range(B):
        base = b * (V + 1)
        assert torch.equal(frames.latents[base : base + V], noisy[b * V : (b + 1) * V])
        assert torch.equal(frames.latents[base + V], ref[b])  # clean reference, last
        assert torch.equal(frames.timesteps[base + V], t[b * V])  # same t as its targets
        assert torch.count_nonzero(frames.cameras[base + V]) == 0  # zero camera
        assert torch.equal(frames.cameras[base : base + V], cams[b * V : (b + 1) * V])
        assert torch.equal(frames.context[base : base + V + 1], ctx[b].expand(V + 1, 1, 32))
        assert torch.equal(frames.target[base : base + V], noise[b * V : (b + 1) * V])
    assert frames.loss_mask.tolist() == ([1.0] * V + [0.0]) * B


def test_alternative_policies():
    noisy, t, cams, ref, ctx, noise, ref_cam = _inputs()
    policy = EMAFramePolicy(
        reference_timestep="zero", reference_camera="true", reference_in_loss=True
    )
    frames = assemble_ema_frames(
        noisy, t, cams, ref, ctx.repeat_interleave(V, 0), V, policy, noise, ref_cam
    )
    ref_rows = torch.arange(B) * (V + 1) + V
    assert frames.timesteps[ref_rows].tolist() == [0, 0]
    assert torch.equal(frames.cameras[ref_rows], ref_cam)
    assert frames.loss_mask.tolist() == [1.0] * (B * (V + 1))
    with pytest.raises(ValueError, match="reference_camera"):
        assemble_ema_frames(noisy, t, cams, ref, ctx, V, EMAFramePolicy(reference_camera="true"))
    with pytest.raises(ValueError, match="reference_timestep"):
        EMAFramePolicy(reference_timestep="later")


def test_loss_mask_excludes_reference():
    noisy, t, cams, ref, ctx, noise, _ = _inputs()
    frames = assemble_ema_frames(noisy, t, cams, ref, ctx, V, noise=noise)
    prediction = frames.target.clone()
    prediction[V] += 100.0  # a huge error on object 0's reference frame only
    assert masked_mse(prediction, frames) == 0
    prediction[0] += 1.0  # an error on a target frame counts
    assert masked_mse(prediction, frames) > 0


def test_reference_pose_choice():
    g = torch.Generator().manual_seed(0)
    targets, others = [0, 1, 2, 3], [8, 9]
    among = EMAFramePolicy(reference_among_targets=True)
    assert {choose_reference_view(among, targets, others, g) for _ in range(20)} <= set(targets)
    apart = {choose_reference_view(EMAFramePolicy(), targets, others, g) for _ in range(20)}
    assert apart <= set(others)
    with pytest.raises(ValueError, match="non-target"):
        choose_reference_view(EMAFramePolicy(), targets, [], g)


def test_reference_dropout_drops_the_frame_on_a_seeded_fraction_of_steps():
    from models.ema_frames import keeps_reference

    half = EMAFramePolicy(reference_dropout=0.5)
    kept = [keeps_reference(half, seed=0, step=s) for s in range(2000)]
    assert kept == [keeps_reference(half, seed=0, step=s) for s in range(2000)]  # per seed
    assert kept != [keeps_reference(half, seed=1, step=s) for s in range(2000)]
    assert 0.45 < sum(kept) / len(kept) < 0.55
    assert all(keeps_reference(EMAFramePolicy(), 0, s) for s in range(200))  # default: never
    assert not any(keeps_reference(EMAFramePolicy(reference_dropout=1.0), 0, s) for s in range(200))
    with pytest.raises(ValueError, match="reference_dropout"):
        EMAFramePolicy(reference_dropout=1.5)

    noisy, t, cams, ref, ctx, noise, ref_cam = _inputs()
    alone = assemble_ema_frames(noisy, t, cams, ref, ctx, V, half, noise, with_reference=False)
    assert alone.num_views == V and torch.equal(alone.latents, noisy)
    assert torch.equal(alone.cameras, cams) and torch.equal(alone.target, noise)
    assert torch.equal(alone.context, ctx.repeat_interleave(V, 0))
    assert alone.loss_mask.tolist() == [1.0] * (B * V)  # every target in the loss
    pred = torch.randn_like(noise)
    assert torch.isclose(masked_mse(pred, alone), (pred - noise).pow(2).mean())

"""SDS guidance: gradients reach the field and never the frozen model; schedules and the
released recipe's defaults; checkpoints resume exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from eval_helpers import tiny_config
from PIL import Image

from evaluation.config import DEFAULT_CONFIG, ConfigError, load_config
from evaluation.field import Field
from evaluation.guidance import MultiViewGuidance
from evaluation.schedules import at_step, lr_factor, schedule_warnings
from evaluation.sds import (
    FieldState,
    build_occupancy,
    optimise,
    orientation_weight,
    phase,
    sds_step,
    step_shading,
)
from models.bundle import build_model


@pytest.fixture(scope="module")
def tiny_model():
    return build_model("tiny", seed=0)


def _camera_input(model):
    return lambda cams: model.cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance)


@pytest.mark.parametrize(
    "loss, space", [("x0_recon", "latent"), ("sds", "latent"), ("x0_recon", "image")]
)
def test_sds_gradients_reach_the_field_only(tiny_model, loss, space):
    cfg = tiny_config(f"sds.loss={loss}", f"sds.target_space={space}")
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    state = FieldState(Field(cfg.field), build_occupancy(cfg))
    generator = torch.Generator().manual_seed(0)
    terms = sds_step(state, guidance, cond, cfg, 0, generator, _camera_input(tiny_model))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and terms["loss"] > 0
    table_grad = state.field.encoding.table.grad
    assert table_grad is not None and table_grad.abs().sum() > 0
    assert all(p.grad is not None for p in state.field.density_net.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tiny_model.parameters())


def test_std_rescale_blends_towards_the_unguided_scale(tiny_model):
    """With rescale 1 the target's per-object std equals the conditional-only x0's std."""
    cfg = tiny_config("sds.recon_std_rescale=1.0", "sds.target_space=latent")
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    captured = {}
    original = guidance._x0

    def spy(noisy, eps, alpha_bar):
        out = original(noisy, eps, alpha_bar)
        captured.setdefault("x0", []).append(out)
        return out

    guidance._x0 = spy
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    out = guidance(
        rgb, torch.zeros(4, 16), cond, step=0, generator=torch.Generator().manual_seed(1)
    )
    guided, plain = captured["x0"]
    factor = plain.std() / guided.std()
    target_latents = out["latents"] - 0  # the loss is 0.5 * ||z - target||^2 / B
    expected = 0.5 * ((target_latents - guided * factor) ** 2).sum() / 4
    assert torch.allclose(out["loss"], expected, rtol=1e-4)


def test_timestep_annealing_and_resolution_schedule(tiny_model):
    cfg = load_config()
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    assert guidance.timestep_range(0) == (980, 980)
    assert guidance.timestep_range(4000) == (500, 740)
    assert guidance.timestep_range(8000) == (20, 500) == guidance.timestep_range(9999)
    assert phase(cfg.sds, 0) == (64, 8) and phase(cfg.sds, 4999) == (64, 8)
    assert phase(cfg.sds, 5000) == (256, 4)


def test_schedules_follow_the_step_count_or_are_named(tiny_model):
    """The schedules are fractions of sds.steps: a 600-step run anneals over 480 steps, switches
    resolution and starts shading at 300; a schedule given in steps beyond the run is named."""
    cfg = load_config(extra={"sds": {"steps": 600}})
    assert schedule_warnings(cfg) == []
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    assert guidance.timestep_range(480) == (20, 500) and guidance.timestep_range(240)[0] == 500
    assert phase(cfg.sds, 299) == (64, 8) and phase(cfg.sds, 300) == (256, 4)
    assert orientation_weight(cfg.sds, 300) == 1000.0
    generator = torch.Generator().manual_seed(0)
    assert {step_shading(cfg.material, s, generator, 600)[0] for s in range(300)} == {"albedo"}
    shaded = {step_shading(cfg.material, s, generator, 600)[0] for s in range(300, 600)}
    assert shaded == {"albedo", "diffuse", "textureless"}
    late = load_config(
        overrides=["material.ambient_only_steps=5000", "sds.milestones=[700]"],
        extra={"sds": {"steps": 600}},
    )
    warnings = schedule_warnings(late)
    assert len(warnings) == 2
    assert "'sds.milestones' = 700" in warnings[0] and "never starts" in warnings[0]
    assert "'material.ambient_only_steps' = 5000" in warnings[1]
    assert "shading never starts" in warnings[1]


def test_guidance_anneals_when_an_end_is_set(tiny_model):
    """``sds.guidance_scale_end``: linear from ``guidance_scale`` at ``guidance_anneal_start``
    to the end at ``guidance_anneal_steps``; the step's UNet combination and ``paint`` use the
    scheduled value; constant when the end is null; a length beyond the run is named; a
    negative end is refused."""
    constant = MultiViewGuidance(tiny_model, load_config().sds, 4, torch.device("cpu"))
    assert {constant.guidance_at(s) for s in (0, 5000, 9999)} == {10.0}
    cfg = load_config(
        overrides=["sds.guidance_scale=5", "sds.guidance_scale_end=1", "sds.guidance_anneal_steps=0.5"],
        extra={"sds": {"steps": 600}},
    )  # fmt: skip
    assert schedule_warnings(cfg) == []
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    assert [guidance.guidance_at(s) for s in (0, 150, 300, 599)] == [5.0, 3.0, 1.0, 1.0]
    scales = []
    original = guidance.predict_noise
    guidance.predict_noise = lambda *a: scales.append(a[-1]) or original(*a)
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    rgb = torch.rand(4, 32, 32, 3)
    for step in (0, 150, 450):
        guidance(rgb, torch.zeros(4, 16), cond, step, torch.Generator().manual_seed(0))
    guidance.paint(guidance.encode(rgb), 500, cond, torch.zeros(4, 16))
    assert scales == [5.0, 3.0, 1.0, 1.0]  # paint: where the schedule ends
    # at scale 1 the guided prediction is the conditional one
    noisy = torch.randn(4, tiny_model.latent_channels, 4, 4)
    t = torch.full((4,), 500)
    guided, plain = original(noisy, t, cond.expand(4, -1, -1), torch.zeros(4, 16), 1.0)
    assert torch.allclose(guided, plain, atol=1e-5)
    window = ["sds.guidance_scale_end=1", "sds.guidance_anneal_start=0.75"]
    finish = load_config(overrides=window, extra={"sds": {"steps": 600}})  # ends at 0.8: 480
    finish_guidance = MultiViewGuidance(tiny_model, finish.sds, 4, torch.device("cpu"))
    assert [finish_guidance.guidance_at(s) for s in (0, 450, 465, 480, 599)] == [
        10.0, 10.0, 5.5, 1.0, 1.0
    ]  # fmt: skip
    late = load_config(overrides=["sds.guidance_anneal_steps=700"], extra={"sds": {"steps": 600}})
    (warning,) = schedule_warnings(late)
    assert "'sds.guidance_anneal_steps' = 700" in warning and "never completes" in warning
    with pytest.raises(ConfigError, match="sds.guidance_scale_end"):
        load_config(overrides=["sds.guidance_scale_end=-1"])


def test_albedo_finish_ends_the_run_unshaded():
    """``material.albedo_finish_steps``: shaded steps only between the warm-up and the finish,
    as a fraction of the run or a step count; a finish longer than the run is named."""
    generator = torch.Generator().manual_seed(0)
    for finish in ("0.25", "150"):
        cfg = load_config(
            overrides=[f"material.albedo_finish_steps={finish}"], extra={"sds": {"steps": 600}}
        )
        modes = [step_shading(cfg.material, s, generator, 600)[0] for s in range(600)]
        assert set(modes[:300]) == {"albedo"} and set(modes[450:]) == {"albedo"}
        assert set(modes[300:450]) == {"albedo", "diffuse", "textureless"}
    default = load_config(extra={"sds": {"steps": 600}})
    assert default.material.albedo_finish_steps == 0  # the released recipe shades to the end
    last = {step_shading(default.material, s, generator, 600)[0] for s in range(560, 600)}
    assert last == {"albedo", "diffuse", "textureless"}
    long = load_config(
        overrides=["material.albedo_finish_steps=700"], extra={"sds": {"steps": 600}}
    )
    (warning,) = schedule_warnings(long)
    assert "'material.albedo_finish_steps' = 700" in warning and "whole run" in warning
    overlap = ["material.ambient_only_steps=0.6", "material.albedo_finish_steps=0.5"]
    (warning,) = schedule_warnings(load_config(overrides=overlap, extra={"sds": {"steps": 600}}))
    assert "no shaded step" in warning and "step 300 of 600" in warning


def test_defaults_are_the_released_recipe():
    """Every number of the released recipe (docs/design.md, section 7) is a default of configs/eval.yaml."""
    cfg = load_config()
    assert cfg.sds.steps == 10000 and cfg.cameras.views == 4
    assert cfg.sds.batch_views == [8, 4] and cfg.sds.resolution == [64, 256]
    assert [at_step(m, cfg.sds.steps) for m in cfg.sds.milestones] == [5000]
    assert cfg.cameras.relative_radius == [0.8, 1.0] and cfg.cameras.fov_deg == [15.0, 60.0]
    assert cfg.cameras.elevation_deg == [0.0, 30.0] and cfg.cameras.azimuth_deg == [0.0, 360.0]
    assert cfg.sds.guidance_scale == 10.0
    assert cfg.sds.t_start == 0.98 and cfg.sds.t_end == [0.02, 0.50]
    assert at_step(cfg.sds.t_anneal_steps, cfg.sds.steps) == 8000
    assert cfg.sds.loss == "x0_recon" and cfg.sds.recon_std_rescale == 0.5
    assert cfg.sds.lambda_orient == [10.0, 1000.0]
    assert at_step(cfg.sds.orient_ramp_steps, cfg.sds.steps) == 5000
    assert cfg.renderer.background == [1.0, 1.0, 1.0]
    assert cfg.optim.betas == [0.9, 0.99] and cfg.optim.eps == 1e-15
    assert cfg.optim.lr_grid == 0.01 and cfg.optim.lr_mlp == 0.001
    assert cfg.metrics.clip.num_views == 8 and cfg.metrics.clip.elevation_deg == 0.0
    assert cfg.metrics.clip.background == [1.0, 1.0, 1.0]


def test_learning_rates_decay_linearly_to_the_last_step_when_asked():
    constant = tiny_config()
    assert constant.optim.decay_start is None  # the recipe's constant rates by default
    assert {lr_factor(constant.optim, step, 800) for step in range(800)} == {1.0}
    cfg = tiny_config("optim.decay_start=0.5", "optim.decay_to=0.1")
    factors = [lr_factor(cfg.optim, step, 800) for step in range(800)]
    assert factors[:401] == [1.0] * 401
    assert factors[-1] == pytest.approx(0.1) and factors[600] == pytest.approx(1 - 0.9 * 200 / 399)
    assert all(a > b for a, b in zip(factors[400:], factors[401:], strict=False))
    with pytest.raises(ConfigError, match="optim.decay_to"):
        tiny_config("optim.decay_to=0")
    late = tiny_config("optim.decay_start=900", "sds.steps=800")
    assert any("optim.decay_start" in w for w in schedule_warnings(late))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="sds.stepz"):
        load_config(overrides=["sds.stepz=3"])
    with pytest.raises(ConfigError, match="sds.guidance_scale"):
        load_config(overrides=["sds.guidance_scale=high"])
    with pytest.raises(ConfigError, match="sds.loss"):
        load_config(overrides=["sds.loss=l2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"renderer": {"occupancy": {"resolutoin": 8}}}))
    with pytest.raises(ConfigError, match="renderer.occupancy.resolutoin"):
        load_config(bad)
    # every key of the defaults carries a comment (documented in place) or is a section
    for line in DEFAULT_CONFIG.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"undocumented key: {line}"


def test_checkpoint_resume_continues_exactly(tiny_model, tmp_path):
    # schedules in steps: as fractions, the 1-step run's would differ from the 2-step run's
    steps = ["sds.milestones=[4]", "sds.t_anneal_steps=8", "material.ambient_only_steps=4"]
    steps += ["optim.decay_start=0", "optim.decay_to=0.5"]  # the resumed step runs at half rate
    cfg = tiny_config("sds.steps=2", "sds.checkpoint_every=1", *steps)
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    cam = _camera_input(tiny_model)
    straight = optimise(guidance, cond, cfg, tmp_path / "a.pt", cam, progress=False)
    half = tiny_config("sds.steps=1", "sds.checkpoint_every=1", *steps)
    optimise(guidance, cond, half, tmp_path / "b.pt", cam, progress=False)
    resumed = optimise(guidance, cond, cfg, tmp_path / "b.pt", cam, progress=False)
    assert resumed.step == straight.step == 2
    for key, value in straight.field.state_dict().items():
        # two uninterrupted CPU runs already differ by ~1e-6 (threaded reductions)
        assert torch.allclose(value, resumed.field.state_dict()[key], atol=1e-5), key


def test_a_frozen_shape_keeps_density_and_normals_while_the_albedo_learns():
    cfg = tiny_config()
    field = Field(cfg.field).double()
    torch.nn.init.uniform_(field.encoding.table, -1.0, 1.0)  # a non-trivial shape
    x = torch.rand(400, 3, dtype=torch.float64) * 1.6 - 0.8
    before = field(x, with_normals=True)
    field.freeze_geometry()
    optimizer = torch.optim.Adam(field.parameters(), lr=0.05)
    for _ in range(5):  # pull the albedo to white: its gradient reaches the shared grid table
        out = field(x, with_normals=True)
        optimizer.zero_grad()
        ((out["albedo"] - 1.0) ** 2).mean().backward()
        optimizer.step()
    after = field(x, with_normals=True)
    assert (after["albedo"] - before["albedo"]).abs().mean() > 0.05
    assert field.encoding.table.grad.abs().sum() > 0  # the live grid moved ...
    assert torch.equal(after["density"], before["density"])  # ... the shape did not
    assert torch.equal(field.density(x), before["density"])
    assert torch.allclose(after["normal"], before["normal"], atol=1e-12)


def test_the_albedo_finish_freezes_the_shape_and_resumes_exactly(tiny_model, tmp_path):
    """Steps 2 and 3 of a 4-step run are the finish: the field leaves with a frozen shape, the
    live grid painted past it, and a run stopped inside the finish resumes to the same field."""
    common = ["sds.checkpoint_every=1", "sds.milestones=[4]", "sds.t_anneal_steps=8"]
    common += ["material.ambient_only_steps=0", "material.diffuse_prob=1.0"]
    cfg = tiny_config("sds.steps=4", "material.albedo_finish_steps=2", *common)
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    cam = _camera_input(tiny_model)
    straight = optimise(guidance, cond, cfg, tmp_path / "a.pt", cam, progress=False)
    frozen = straight.field.geometry
    assert frozen is not None and not any(p.requires_grad for p in frozen.parameters())
    assert not torch.equal(frozen["encoding"].table, straight.field.encoding.table)
    assert torch.equal(frozen["density_net"][0].weight, straight.field.density_net[0].weight)
    # stopped at step 3 (finish from step 2 too), then resumed under the 4-step config
    half = tiny_config("sds.steps=3", "material.albedo_finish_steps=1", *common)
    optimise(guidance, cond, half, tmp_path / "b.pt", cam, progress=False)
    resumed = optimise(guidance, cond, cfg, tmp_path / "b.pt", cam, progress=False)
    assert resumed.field.geometry is not None
    for key, value in straight.field.state_dict().items():
        assert torch.allclose(value, resumed.field.state_dict()[key], atol=1e-5), key


def test_previews_and_term_gradients_are_logged(tiny_model, tmp_path):
    """Every preview_every steps the renders and the decoded x0 the prior paints are saved; every
    logging step records each loss term and the gradient norm it puts on the field."""
    cfg = tiny_config(
        "sds.steps=4", "sds.preview_every=2", "speed.log_every=2", "material.ambient_only_steps=0",
        "sds.orient_latent_side=32",
    )  # fmt: skip
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    optimise(guidance, cond, cfg, tmp_path / "field.pt", _camera_input(tiny_model), False)
    previews = sorted((tmp_path / "x0").glob("*.png"))
    assert [p.name for p in previews] == ["step_000002.png", "step_000004.png"]
    assert np.asarray(Image.open(previews[0])).shape == (64, 128, 3)  # renders over x0, 4 views
    records = [json.loads(line) for line in (tmp_path / "sds_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["grad_sds"] > 0 and r["grad_orient"] >= 0 for r in records)


def test_sds_cameras_use_the_framing_recorded_with_the_model(tiny_model):
    from evaluation.evaluate import with_model_framing

    cfg = load_config()
    assert with_model_framing(cfg, tiny_model) is cfg  # no record: the configured ranges
    tiny_model.source.update(camera_distance_range=[0.9, 1.1], fov_range=[20.0, 50.0])
    try:
        framed = with_model_framing(cfg, tiny_model)
        assert framed.cameras.relative_radius == [0.9, 1.1]
        assert framed.cameras.fov_deg == [20.0, 50.0]
        assert framed.cameras.elevation_deg == cfg.cameras.elevation_deg == [0.0, 30.0]
        assert cfg.cameras.relative_radius == [0.8, 1.0]  # the config itself is left alone
        plain = load_config(overrides=["cameras.framing=config"])
        assert with_model_framing(plain, tiny_model) is plain
    finally:
        for key in ("camera_distance_range", "fov_range"):
            tiny_model.source.pop(key)


def test_term_gradients_are_logged_through_the_compiled_step(tiny_model, tmp_path):
    """The gradient norms (retain_graph) work when the render step is compiled, as on CUDA by
    default and in the demo (a compiled backward donates its buffers unless told not to)."""
    cfg = tiny_config("sds.steps=2", "speed.log_every=1", "speed.compile=true")
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    optimise(guidance, cond, cfg, tmp_path / "field.pt", _camera_input(tiny_model), False)
    records = (tmp_path / "sds_log.jsonl").read_text().splitlines()
    assert len(records) == 2 and json.loads(records[-1])["grad_sds"] > 0


def test_image_space_target_regresses_the_renders_on_the_decoded_x0(tiny_model):
    """``target_space=image``: the loss is the pixel L2 to the decoded target at the model's
    size, scaled to the latent loss's element count; its gradient skips the VAE encoder."""
    cfg = tiny_config("sds.target_space=image")
    guidance = MultiViewGuidance(tiny_model, cfg.sds, 4, torch.device("cpu"))
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    cond = tiny_model.image_encoder.encode(torch.rand(1, 3, 32, 32))
    out = guidance(rgb, torch.zeros(4, 16), cond, step=0, generator=torch.Generator())
    painted = guidance.decode(out["target"])
    scale = out["latents"][0].numel() / rgb[0].numel()
    expected = 0.5 * ((rgb.detach() - painted) ** 2).sum() / 4 * scale
    assert torch.allclose(out["loss"], expected, rtol=1e-5)
    out["loss"].backward()
    assert torch.allclose(rgb.grad, (rgb.detach() - painted) * scale / 4, atol=1e-6)
    with pytest.raises(ConfigError, match="sds.target_space"):
        tiny_config("sds.target_space=pixels")

"""Config loading (every key documented, bad keys named), resume guards, summary and sheet."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from data_prep.config import (
    ObjaverseOptions,
    RenderConfig,
    add_config_arguments,
    config_from_args,
    load_config,
)
from data_prep.manifest import Manifest, check_folder
from data_prep.render import render, worker_envs
from data_prep.runfiles import lock_partition
from data_prep.summary import contact_sheet, main, summarise

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_render_yaml_documents_every_key_with_the_code_defaults():
    data = yaml.safe_load((CONFIGS / "render.yaml").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(RenderConfig)}
    assert set(data["objaverse"]) == {f.name for f in dataclasses.fields(ObjaverseOptions)}
    loaded, defaults = load_config(CONFIGS / "render.yaml"), RenderConfig()
    loaded.out = defaults.out  # the only key whose value differs on purpose
    assert loaded == defaults
    for line in (CONFIGS / "render.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert "#" in line, f"undocumented key: {line}"
    preview = load_config(CONFIGS / "render-preview.yaml")
    assert preview.source == "samples" and preview.res == 128


def test_bad_keys_and_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: 64\n")
    with pytest.raises(ValueError, match="unknown config key 'resolution'"):
        load_config(bad)
    bad.write_text("objaverse:\n  lvis: [mug]\n")
    with pytest.raises(ValueError, match=r"unknown config key 'objaverse.lvis'"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"config key 'fov_deg': expected \[low, high\]"):
        load_config(fov_deg=(10.0, 20.0, 30.0))
    with pytest.raises(ValueError, match="'res'"):
        load_config(res=2)
    with pytest.raises(ValueError, match="'fov_deg'"):
        load_config(fov_deg=(40.0, 20.0))
    # ranges whose closest, widest view would crop the normalised object are refused
    with pytest.raises(ValueError, match=r"'relative_radius' \[0.7, 1.1\].*crops objects"):
        load_config(relative_radius=(0.7, 1.1))
    assert load_config(relative_radius=(0.8, 1.1), fov_deg=(15.0, 20.0)).fov_deg == (15.0, 20.0)


def test_command_line_flags_override_the_config():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        ["--config", str(CONFIGS / "render-preview.yaml"), "--res", "64", "--no-denoise"]
        + ["--elevation-deg", "5", "10", "--lvis-categories", "mug", "chair", "--count", "3"]
    )
    config = config_from_args(args)
    assert (config.res, config.denoise, config.count) == (64, False, 3)
    assert config.elevation_deg == (5.0, 10.0) and config.num_quads == 1  # from the file
    assert config.objaverse.lvis_categories == ["mug", "chair"]


def test_key_value_overrides_and_flag_help_from_the_documented_yaml(capsys):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert "image width = height, pixels" in parser.format_help()  # --res, from render.yaml
    args = parser.parse_intermixed_args(
        ["--config", str(CONFIGS / "render-preview.yaml"), "seed=5", "--res", "64"]
        + ["objaverse.licenses=[by, cc0]", "res=48"]
    )
    config = config_from_args(args)
    assert (config.seed, config.res, config.objaverse.licenses) == (5, 48, ["by", "cc0"])
    from data_prep.render import main

    assert (
        main(["--config", str(CONFIGS / "render-preview.yaml"), "--res", "40", "--print-config"])
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"^res: 40 +# <- command-line flag$", printed, re.M), printed
    assert re.search(r"^num_quads: 1 +# <- .*configs/render-preview.yaml$", printed, re.M)
    assert re.search(r"^seed: 0 +# <- default", printed, re.M)


def test_resume_refuses_changed_settings(tmp_path):
    Manifest(tmp_path, 0, 1, {"res": 32, "seed": 0}).save()
    Manifest(tmp_path, 0, 1, {"res": 32, "seed": 0})  # same settings: fine
    with pytest.raises(ValueError, match="res=32"):
        Manifest(tmp_path, 0, 1, {"res": 64, "seed": 0})
    # a folder from before the fingerprint (other framing) is never resumed
    (tmp_path / "part-000" / "records.jsonl").unlink()
    old = {"part_index": 0, "part_count": 1, "settings": {"res": 32, "seed": 0}}
    old |= {"done": {}, "failed": {}, "shards": {}}
    (tmp_path / "manifest-000.json").write_text(json.dumps(old))  # the earlier layout
    with pytest.raises(ValueError, match="older renderer"):
        Manifest(tmp_path, 0, 1, {"res": 32, "seed": 0})
    with pytest.raises(ValueError, match="older renderer"):
        check_folder(tmp_path, 1, {"res": 32, "seed": 0})


def test_summary_counts_from_the_manifest_and_the_sheet_samples_objects(
    rendered_shards, tmp_path, capsys, monkeypatch
):
    import data_prep.summary as summary_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("the summary must not open the shards")

    with monkeypatch.context() as patch:
        patch.setattr(summary_module.wds, "WebDataset", no_decoding)
        summary = summarise(rendered_shards)
    assert summary["objects"] == 10 and summary["views"] == 50 and summary["shards"] == 3
    assert summary["views_per_object"] == {5: 10} and summary["failed"] == 0
    sheet = contact_sheet(rendered_shards, tmp_path / "sheet.png", objects=3)
    assert Image.open(sheet).size == (5 * 32, 3 * 32)
    opened = []
    original = summary_module.wds.WebDataset
    monkeypatch.setattr(
        summary_module.wds,
        "WebDataset",
        lambda url, **kw: opened.append(url) or original(url, **kw),
    )
    contact_sheet(rendered_shards, tmp_path / "two.png", objects=2)
    assert len(opened) == 2 and len(set(opened)) == 2  # one object from each of two shards
    monkeypatch.undo()
    assert main(["summary", str(rendered_shards), "--sheet", str(tmp_path / "s.png")]) == 0
    assert '"objects": 10' in capsys.readouterr().out
    assert main(["merge", str(rendered_shards), "--deep"]) == 0


def test_one_gpu_per_worker_and_bounded_cpu_threads(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    config = load_config(workers=3)
    envs = worker_envs(config)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "5", "2"]
    # GPU workers get a bounded share of the cores too (Cycles/OIDN/OpenMP threads)
    assert config.threads == 5 and {env["OMP_NUM_THREADS"] for env in envs} == {"5"}
    assert config.worker_settings()["threads"] == 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = load_config(workers=2, device="cpu")
    envs = worker_envs(config)
    assert all("CUDA_VISIBLE_DEVICES" not in env for env in envs)
    assert config.threads == 8 and envs[0]["OMP_NUM_THREADS"] == "8"


def test_a_partition_cannot_be_rendered_by_two_processes_at_once(tmp_path):
    with lock_partition(tmp_path, 0):
        with pytest.raises(RuntimeError, match="another process"):
            render(load_config(source="samples", out=str(tmp_path), count=0, progress=False))
        with lock_partition(tmp_path, 1):  # other partitions are free
            pass
    render(load_config(source="samples", out=str(tmp_path), count=0, progress=False))


def test_a_run_from_before_new_pixel_keys_still_resumes(tmp_path):
    from data_prep.config import ADDED_SETTINGS
    from data_prep.render import resume_settings

    now = resume_settings(load_config(source="samples", out=str(tmp_path)))
    before = {k: v for k, v in now.items() if k not in ADDED_SETTINGS}
    Manifest(tmp_path, 0, 1, before).save()  # written by the renderer before those keys
    check_folder(tmp_path, 1, now)
    Manifest(tmp_path, 0, 1, now)  # resumes: the new keys' defaults are the old pixels
    with pytest.raises(ValueError, match="albedo=False, this run has albedo=True"):
        Manifest(tmp_path, 0, 1, now | {"albedo": True})

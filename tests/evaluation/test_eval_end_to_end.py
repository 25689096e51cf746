"""`make eval`'s runner on CPU: image folder and held-out shards in, renders, video, mesh, scores
and report out; a rerun skips done objects; partitions are disjoint and cover everything."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import pytest
import trimesh
from eval_helpers import TINY_OVERRIDES
from PIL import Image, ImageDraw

from evaluation import run
from evaluation.config import load_config
from evaluation.inputs import list_objects


def _draw_images(folder):
    folder.mkdir()
    for name, colour in [("duck.v2", (220, 180, 30)), ("tomato", (200, 40, 40))]:
        image = Image.new("RGBA", (80, 64), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.ellipse((20, 10, 60, 58), fill=(*colour, 255))
        draw.rectangle((35, 20, 45, 30), fill=(20, 20, 20, 255))
        image.save(folder / f"{name}.png")
    return folder


def _args(images, out, *extra):
    return ["--config", "configs/eval_tiny.yaml", "--images", str(images), "--out", str(out),
            "--gpus", "none", "--no-progress", *TINY_OVERRIDES, *extra]  # fmt: skip


def test_images_end_to_end_then_rerun_skips(tmp_path, monkeypatch, capsys):
    images, out = _draw_images(tmp_path / "images"), tmp_path / "out"
    run.main(_args(images, out, "report.clip_unit=raw"))
    ids = sorted(p.name for p in (out / "objects").iterdir())
    assert ids == ["duck_v2", "tomato"]  # dots never reach an object id
    for object_id in ids:
        folder = out / "objects" / object_id
        result = json.loads((folder / "result.json").read_text())
        # the tiny tower is random: no CLIP score, the pipeline's number kept apart and labelled
        assert result["steps"] == 2 and result["clip_raw"] is None and result["clip_x100"] is None
        check = result["clip_random_tower"]
        assert -1 <= check["raw"] <= 1 and len(check["per_view"]) == 4
        assert "not meaningful" in check["note"] and any("CLIP tiny" in n for n in result["notes"])
        assert result["psnr"] is None  # pose unknown
        prov = result["provenance"]
        assert prov["model"] == "random:tiny" and prov["clip_meaningful"] is False
        assert set(result["fingerprint"]["groups"]) == {
            "model", "reference", "sds", "steps", "exports", "scorer"
        }  # fmt: skip
        mesh_info = result["mesh"]
        assert mesh_info == json.loads((folder / "mesh" / "mesh.json").read_text())
        assert isinstance(mesh_info["iso_level"], float) and "iso_fallback" in mesh_info
        views = sorted((folder / "views").glob("view_*.png"))
        assert len(views) == 4 and Image.open(views[0]).size == (32, 32)
        for kind in ("normal", "textureless"):
            assert result["files"][kind] == [f"{kind}/view_{i:03d}.png" for i in range(4)]
            assert Image.open(folder / kind / "view_000.png").size == (32, 32)
        assert len(imageio.mimread(folder / "turntable.mp4")) == 4
        mesh = trimesh.load(folder / "mesh" / "mesh.glb", force="mesh")
        assert len(mesh.faces) > 0 and (folder / "mesh" / "mesh.obj").stat().st_size > 0
        assert len(result["files"]["sampled"]) == 4
        assert (folder / "field.pt").is_file() and (folder / "config.yaml").is_file()
    report = json.loads((out / "results.json").read_text())
    assert report["clip_unit"] == "raw" and len(report["objects"]) == 2
    assert report["summary"]["clip"] == {"mean": None, "std": None, "n": 0}
    assert report["summary"]["seconds"]["n"] == 2
    console = capsys.readouterr().out
    assert "clip: not meaningful" in console and "2 done, 0 failed, 0 missing" in console
    for name in ("results.csv", "results.md", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text()
    assert "base64" not in page and "objects/tomato/turntable.mp4" in page
    assert "objects/duck_v2/normal/view_000.png" in page and "random:tiny" in page

    # Rerun: everything is done, so no evaluator (no model) is built and nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "objects").glob("*/result.json")}

    def refuse(*_, **__):
        raise AssertionError("a done object was evaluated again")

    monkeypatch.setattr(run, "Evaluator", refuse)
    run.main(_args(images, out, "report.clip_unit=raw"))
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "objects").glob("*/result.json")}

    # Another setting: refused before anything runs, naming what changed and the way out.
    with pytest.raises(SystemExit, match=r"sds\.guidance_scale: 10\.0 -> 7\.5") as refused:
        run.main(_args(images, out, "sds.guidance_scale=7.5"))
    assert "--recompute" in str(refused.value) and "duck_v2 (done)" in str(refused.value)
    with pytest.raises(SystemExit, match=r"metrics\.clip\.num_views: 4 -> 2 \[--rescore\]"):
        run.main(_args(images, out, "metrics.clip.num_views=2"))
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "objects").glob("*/result.json")}

    # --rescore: exports and scores again from the field checkpoints, without optimising; a
    # changed SDS setting is still refused (the kept field was made with the old one).
    monkeypatch.undo()
    field_file = out / "objects" / "duck_v2" / "field.pt"
    field_stamp = field_file.stat().st_mtime_ns
    with pytest.raises(SystemExit, match="sds.guidance_scale"):
        run.main(_args(images, out, "--rescore", "sds.guidance_scale=7.5", "inputs.limit=1"))
    run.main(_args(images, out, "--rescore", "metrics.clip.num_views=2", "inputs.limit=1"))
    result = json.loads((out / "objects" / "duck_v2" / "result.json").read_text())
    assert len(result["clip_random_tower"]["per_view"]) == 2 and result["steps"] == 2
    assert field_file.stat().st_mtime_ns == field_stamp  # the field was not optimised again
    run.main(_args(images, out, "metrics.clip.num_views=2", "inputs.limit=1"))  # now done

    # --recompute: the object starts again with the new SDS setting.
    run.main(_args(images, out, "--recompute", "sds.guidance_scale=7.5", "inputs.limit=1"))
    result = json.loads((out / "objects" / "duck_v2" / "result.json").read_text())
    assert result["fingerprint"]["settings"]["sds:sds.guidance_scale"] == 7.5
    assert field_file.stat().st_mtime_ns != field_stamp


def test_shards_end_to_end_scores_against_ground_truth(
    rendered_shards, tiny_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    args = _args(rendered_shards, out, "inputs.limit=1", "metrics.multiview.steps=2")
    run.main([*args, "--model", str(tiny_model_dir), "--steps", "1"])
    (result_file,) = list((out / "objects").glob("*/result.json"))
    result = json.loads(result_file.read_text())
    assert result["steps"] == 1 and result["model"] == str(tiny_model_dir)
    for key in ("psnr", "ssim", "mv_psnr", "mv_ssim"):
        assert isinstance(result[key], float), key  # pose known, ground-truth quad present
    assert result["mv_clip_raw"] is None and "raw" in result["mv_clip_random_tower"]
    assert result["mv_psnr"] == pytest.approx(sum(result["mv_psnr_per_view"]) / 4)
    assert result["mv_reference_frame"] is False  # a random-init folder is no stage-2 model
    assert result["lpips"] is None and any("LPIPS skipped" in n for n in result["notes"])
    assert result["source"]["shard"].endswith(".tar")
    assert result["provenance"]["model_source"]["init"] == "random"
    # a rerun with the same model, config and shards evaluates nothing again
    monkeypatch.setattr(run, "Evaluator", lambda *_, **__: pytest.fail("evaluated again"))
    run.main([*args, "--model", str(tiny_model_dir), "--steps", "1"])


def test_partitions_are_disjoint_and_complete(rendered_shards, monkeypatch):
    cfg = load_config(overrides=[f"inputs.path={rendered_shards}"])
    everything = [r.id for r in list_objects(cfg.inputs)]
    assert len(everything) == 10
    shares = [[r.id for r in list_objects(cfg.inputs)[k::3]] for k in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything)
    for key, value in (("ID", "5"), ("MIN", "0"), ("MAX", "7"), ("COUNT", "8")):
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", value)  # task 5 of --array=0-7
    assert run.partition_from_env(None, None) == (5, 8)
    assert run.partition_from_env(2, 4) == (2, 4)
    with pytest.raises(ValueError, match="--rank"):
        run.partition_from_env(4, 4)


def test_a_resubmitted_array_task_keeps_its_share_of_the_original_split(
    rendered_shards, tmp_path, monkeypatch
):
    """``sbatch --array=3`` of an 8-task array: rank 3 of 8 (it took rank 0 of 1 before), with the
    count the folder's expected.json recorded when the array first ran."""
    cfg = load_config(overrides=[f"inputs.path={rendered_shards}"])
    for key, value in (("ID", "3"), ("MIN", "0"), ("MAX", "7"), ("COUNT", "8")):
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", value)
    rank, world = run.partition_from_env(None, None, tmp_path)
    run.write_expected(tmp_path, cfg, world)  # what the original array's tasks record
    assert (rank, world) == (3, 8)
    for key, value in (("ID", "3"), ("MIN", "3"), ("MAX", "3"), ("COUNT", "1")):
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", value)  # the resubmitted task alone
    assert run.partition_from_env(None, None, tmp_path) == (3, 8)
    with pytest.raises(ValueError, match="starts at 0"):  # a fresh folder cannot tell the split
        run.partition_from_env(None, None, tmp_path / "fresh")
    assert run.strip_partition_flags(["--rank", "1", "--gpus=all", "--out", "o"]) == ["--out", "o"]


def test_one_worker_per_gpu_with_global_ranks(tmp_path, monkeypatch):
    """With 2 GPUs on machine 1 of 3, the children are ranks 2 and 3 of 6, one GPU each."""
    launched = []

    class FakeChild:
        def __init__(self, args, env):
            launched.append((args, env["CUDA_VISIBLE_DEVICES"]))

        def wait(self):
            return 0

    monkeypatch.setattr(run.subprocess, "Popen", FakeChild)
    images = _draw_images(tmp_path / "images")
    argv = ["--images", str(images), "--out", str(tmp_path / "out"), "--rank", "1",
            "--world-size", "3", "--gpus", "0,1", "sds.steps=5", "model.size=tiny"]  # fmt: skip
    run.main(argv)
    assert [gpu for _, gpu in launched] == ["0", "1"]
    for index, (args, _) in enumerate(launched):
        rank = args[args.index("--rank") + 1]
        world = args[args.index("--world-size") + 1]
        assert (rank, world) == (str(2 + index), "6")
        assert args.count("--rank") == 1 and "sds.steps=5" in args and "--no-report" in args
        assert args[args.index("--gpus") + 1] == "none"
    assert (tmp_path / "out" / "index.html").is_file()  # the parent reports when all are done

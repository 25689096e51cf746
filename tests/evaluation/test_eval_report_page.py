"""The report of a 120-object folder in a real headless Chromium: the page loads, every image and
the videos resolve (files next to index.html, nothing embedded), sorting by a metric column
works both ways with empty cells last, failed and missing objects are listed with their reason,
and a random CLIP tower's numbers are shown nowhere as a score."""

from __future__ import annotations

import json
import random
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest
from browser import CHECK_MEDIA, Browser, click_header_and_read
from PIL import Image

from evaluation.report import build_report, console_summary

OBJECTS = 120


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def _result(oid: str, rng: random.Random, backbone: str) -> dict:
    meaningful = backbone != "tiny"
    clip = rng.uniform(0.5, 0.9)
    return {
        "id": oid,
        "steps": 10000,
        "seconds": rng.uniform(100, 900),
        "model": "outputs/models/stage2/ema",
        "clip_backbone": backbone,
        "provenance": {"model_source": {"stage": 2, "step": 4000}, "clip_meaningful": meaningful},
        "fingerprint": {"groups": {"sds": "a1b2c3d4e5f6", "exports": "0f0f0f", "scorer": "99aa"}},
        "mesh": {"iso_level": 25.0, "configured_level": 25.0, "iso_fallback": False},
        "clip_raw": clip if meaningful else None,
        "clip_x100": 100 * clip if meaningful else None,
        "clip_random_tower": None if meaningful else {"raw": 0.99},
        # a third of the objects have no known pose: PSNR is empty for them
        "psnr": rng.uniform(12, 30) if rng.random() > 0.33 else None,
        "ssim": rng.uniform(0.5, 0.9),
        "lpips": None,
        "files": {
            "views": ["views/view_000.png", "views/view_001.png"],
            "normal": ["normal/view_000.png"],
            "textureless": ["textureless/view_000.png"],
            "sampled": ["sampled/view_000.png"],
            "video": ["turntable.mp4"],
            "mesh": ["mesh/mesh.glb"],
        },
        "notes": [],
    }


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rng = random.Random(0)
    ids = [f"obj{i:03d}" for i in range(OBJECTS)]
    video = out / "turntable.mp4"  # one real H.264 file, copied into every object
    writer = imageio.get_writer(video, fps=4, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=16)  # fmt: skip
    for k in range(4):
        writer.append_data(np.full((16, 16, 3), 40 * k, np.uint8))
    writer.close()
    for oid in ids[:-2]:  # the last two: one failed, one never evaluated
        folder = out / "objects" / oid
        result = _result(oid, rng, "ViT-L-14/openai")
        for file in ["reference.png", *sum(result["files"].values(), [])]:
            if file.endswith(".png"):
                _png(folder / file, (rng.randrange(256), 80, 160))
        shutil.copyfile(video, folder / "turntable.mp4")
        (folder / "mesh").mkdir(exist_ok=True)
        (folder / "mesh" / "mesh.glb").write_bytes(b"glTF")
        (folder / "result.json").write_text(json.dumps(result))
    failed = out / "objects" / ids[-2]
    failed.mkdir(parents=True)
    reason = "UnidentifiedImageError: cannot identify image file 'obj118.png'"
    (failed / "failed.json").write_text(json.dumps({"id": ids[-2], "error": reason}))
    (out / "expected.json").write_text(json.dumps({"objects": ids}))
    summary = build_report(out, "x100")
    return out, summary


def test_report_page_in_a_headless_browser(report_folder):
    out, summary = report_folder
    page = (out / "index.html").read_text()
    assert "base64" not in page and len(page) < 2_000_000  # files next to the page, not inline
    assert summary["counts"] == {"done": OBJECTS - 2, "failed": 1, "missing": 1}
    rows = json.loads((out / "results.json").read_text())["objects"]
    with Browser() as browser:
        browser.open(out / "index.html")
        assert browser.evaluate("document.querySelectorAll('#objects tbody tr').length") == 118
        media = browser.evaluate(CHECK_MEDIA)
        assert len(media["images"]) >= 118 * 10
        broken = [i["src"] for i in media["images"] if i["width"] == 0]
        assert not broken, broken[:5]
        assert len(media["videos"]) == 118
        assert all(v["ready"] >= 1 and v["width"] == 16 for v in media["videos"]), media["videos"][
            :3
        ]
        links = browser.evaluate(
            "Array.from(document.querySelectorAll('#objects a')).map((a) => a.href)"
        )
        assert any(link.endswith("obj000/mesh/mesh.glb") for link in links)
        assert any(link.endswith("obj000/turntable.mp4") for link in links)

        with_psnr = sorted((r for r in rows if r["psnr"] is not None), key=lambda r: r["psnr"])
        empty = [r["id"] for r in rows if r["psnr"] is None]
        ascending = click_header_and_read(browser, "objects", "psnr")
        assert ascending == [f"row-{r['id']}" for r in with_psnr] + [f"row-{i}" for i in empty]
        descending = click_header_and_read(browser, "objects", "psnr")
        assert descending[: len(with_psnr)] == [f"row-{r['id']}" for r in reversed(with_psnr)]
        assert set(descending[len(with_psnr) :]) == {f"row-{i}" for i in empty}  # empty last
        by_id = click_header_and_read(browser, "objects", "id")
        assert by_id == sorted(by_id)
        by_clip = click_header_and_read(browser, "objects", "clip")
        clips = [next(r["clip"] for r in rows if f"row-{r['id']}" == i) for i in by_clip]
        assert clips == sorted(clips)

        failed = browser.evaluate("document.querySelector('#failed').textContent")
        assert "obj118" in failed and "UnidentifiedImageError" in failed
        assert "obj119" in browser.evaluate("document.querySelector('#missing').textContent")
        runs = browser.evaluate("document.querySelector('#runs').textContent")
        assert "outputs/models/stage2/ema" in runs and "ViT-L-14/openai" in runs
        assert "stage 2" in runs and "10000" in runs and "a1b2c3" in runs


def test_random_tower_numbers_are_never_shown_as_scores(tmp_path):
    rng = random.Random(1)
    for oid in ("a", "b", "c"):
        folder = tmp_path / "objects" / oid
        folder.mkdir(parents=True)
        result = _result(oid, rng, "tiny")
        result["clip_raw"] = 0.9912  # an old result that still carries a random-tower number
        result["steps"] = 5000 if oid == "c" else 10000  # two runs in one folder
        (folder / "result.json").write_text(json.dumps(result))
    summary = build_report(tmp_path, "x100")
    assert summary["clip"]["mean"] is None and summary["clip"]["n"] == 0
    text = console_summary(tmp_path, summary, "x100")
    assert "clip: not meaningful" in text and "99.12" not in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert all(row["clip"] is None for row in data["objects"])
    assert "99.12" not in (tmp_path / "results.md").read_text()
    assert "random: CLIP not meaningful" in (tmp_path / "results.md").read_text()
    assert [r["run"] for r in data["objects"]] == [1, 1, 2] and len(data["runs"]) == 2
    assert "the means mix 2 runs" in (tmp_path / "results.md").read_text()
    csv_text = (tmp_path / "results.csv").read_text()
    assert "99.12" not in csv_text and "0.9912" not in csv_text
    page = (tmp_path / "index.html").read_text()
    assert "99.12" not in page and "no CLIP score" in page
    assert not (tmp_path / "plots" / "clip.png").exists()
    # sample standard deviation over objects, with n
    psnrs = [r["psnr"] for r in data["objects"] if r["psnr"] is not None]
    if len(psnrs) > 1:
        assert summary["psnr"]["std"] == pytest.approx(float(np.std(psnrs, ddof=1)))
        assert summary["psnr"]["n"] == len(psnrs)

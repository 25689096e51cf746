"""Bad input is recorded (or handled) with a reason while the other objects render."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
import trimesh

from data_prep.config import load_config
from data_prep.manifest import read_partition
from data_prep.render import render
from data_prep.samples import sample_glb_bytes, write_samples
from data_prep.summary import iter_samples


def _glb_with_json(glb: bytes, edit) -> bytes:
    """Rewrite a GLB's JSON chunk with ``edit(json_dict)`` (keeps the binary chunk)."""
    length = struct.unpack("<I", glb[12:16])[0]
    data = json.loads(glb[20 : 20 + length])
    edit(data)
    text = json.dumps(data).encode()
    text += b" " * (-len(text) % 4)
    rest = glb[20 + length :]
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def _draco(data: dict) -> None:
    data["extensionsUsed"] = ["KHR_draco_mesh_compression"]
    data["extensionsRequired"] = ["KHR_draco_mesh_compression"]


def _make_bad_folder(folder):
    write_samples(folder, ["front_marker", "mug"])
    (folder / "corrupt.glb").write_bytes(b"glTF" + b"\x02\x00\x00\x00" + bytes(range(256)) * 4)
    (folder / "garbage.obj").write_bytes(b"\x00\xff" * 300)
    empty = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{}]}
    (folder / "no_mesh.gltf").write_text(json.dumps(empty))
    (folder / "draco.glb").write_bytes(_glb_with_json(sample_glb_bytes("car"), _draco))
    far = trimesh.creation.box((3e4, 1e4, 2e4))
    far.apply_translation((5e6, -2e6, 7e5))
    far.export(folder / "far_huge.stl")
    # a glTF whose texture image file is missing (the image points at an absent file)
    files = trimesh.load(_crate(folder.parent)).export(file_type="gltf")
    data = json.loads(files.pop("model.gltf"))
    data["images"] = [{"uri": "missing.png"} for _ in data["images"]]
    (folder / "missing_texture.gltf").write_text(json.dumps(data))
    for name, payload in files.items():
        (folder / name).write_bytes(payload)


def _crate(folder):
    path = folder / "crate.glb"
    path.write_bytes(sample_glb_bytes("textured_crate"))
    return path


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "src").mkdir()
    _make_bad_folder(root / "src")
    config = load_config(
        source=str(root / "src"),
        out=str(root / "out"),
        res=32,
        samples=4,
        denoise=False,
        num_quads=1,
        num_refs=0,
        workers=2,
        progress=False,
    )
    return render(config), root / "out", config


def test_bad_files_fail_with_their_reason_while_the_rest_renders(bad_run):
    summary, out, _ = bad_run
    assert summary.failed == {
        "corrupt": "corrupt_file",
        "garbage": "no_mesh",  # the OBJ importer reads garbage as an empty model
        "no_mesh": "no_mesh",
        "draco": "draco",
    }
    manifest = read_partition(out)
    assert set(manifest["done"]) == {"front_marker", "mug", "far_huge", "missing_texture"}
    assert manifest["failed"]["draco"]["detail"].startswith("Draco-compressed")
    assert all(info["detail"] for info in manifest["failed"].values())
    failures_log = (out / "logs" / "failures.log").read_text()
    assert "=== draco: draco" in failures_log and "=== corrupt: corrupt_file" in failures_log
    # Blender's per-render chatter is not kept for objects that rendered fine
    assert sum(p.stat().st_size for p in (out / "logs").glob("worker-*.log")) < 20_000


def test_far_huge_mesh_is_normalised_into_view(bad_run):
    _, out, _ = bad_run
    sample = next(s for s in iter_samples(out) if s["__key__"] == "far_huge")
    assert sample["meta.json"]["normalisation"]["scale"] < 1e-3
    for i in range(4):
        alpha = sample[f"{i:03d}.png"][..., 3] > 127
        ys, xs = np.nonzero(alpha)
        assert 0.1 < alpha.mean() < 0.95
        assert (
            abs((xs.min() + xs.max() + 1) / 2 - 16) <= 2
            and abs((ys.min() + ys.max() + 1) / 2 - 16) <= 2
        )


def test_missing_texture_is_handled_and_reported(bad_run):
    _, out, _ = bad_run
    sample = next(s for s in iter_samples(out) if s["__key__"] == "missing_texture")
    warnings = sample["meta.json"]["warnings"]
    assert warnings and warnings[0].startswith("missing_texture")
    manifest = read_partition(out)
    assert manifest["warnings"]["missing_texture"] == warnings
    image = sample["000.png"]
    rgb = image[..., :3][image[..., 3] == 255].astype(int)
    magenta = (rgb[:, 0] > 200) & (rgb[:, 1] < 60) & (rgb[:, 2] > 200)
    assert magenta.mean() < 0.01  # not Cycles' missing-texture magenta


def test_rerun_never_retries_failures_that_come_from_the_file(bad_run):
    first, out, config = bad_run
    again = render(config)
    assert (again.skipped, again.rendered, again.failed) == (8, 0, {})
    config.retry_failed = True
    try:
        retried = render(config)  # corrupt, empty, Draco, degenerate: the same answer again
    finally:
        config.retry_failed = False
    assert (retried.skipped, retried.rendered, retried.failed) == (8, 0, {})
    manifest = read_partition(out)
    assert {info["attempts"] for info in manifest["failed"].values()} == {1}
    assert set(manifest["failed"]) == set(first.failed)


def test_an_object_over_the_timeout_is_killed_and_recorded(tmp_path):
    write_samples(tmp_path / "src", ["rainbow_blob"])
    config = load_config(
        source=str(tmp_path / "src"),
        out=str(tmp_path / "out"),
        res=256,
        samples=100000,
        adaptive_threshold=0.0,
        denoise=False,
        num_quads=1,
        num_refs=0,
        timeout_s=2.0,
        threads=1,
        device="cpu",  # keep it slow on a GPU machine too
        progress=False,
    )
    started = time.monotonic()
    summary = render(config)
    assert summary.failed == {"rainbow_blob": "timeout"}
    assert time.monotonic() - started < 25
    manifest = read_partition(tmp_path / "out")
    failure = manifest["failed"]["rainbow_blob"]
    # retried once in the run (timeout_retries: 1), on a fresh worker
    assert failure["reason"] == "timeout" and failure["attempts"] == 2, failure
    assert "2 tries" in failure["detail"]
    config.retry_failed, config.timeout_retries = True, 0
    assert render(config).failed == {"rainbow_blob": "timeout"}  # a timeout is retried...
    manifest = read_partition(tmp_path / "out")
    assert manifest["failed"]["rainbow_blob"]["attempts"] == 3
    again = render(config)  # ...but at most max_attempts (3) times in all
    assert (again.skipped, again.failed) == (1, {})


def test_a_source_that_does_not_exist_is_one_line_and_writes_nothing(tmp_path, capsys):
    from data_prep.render import main

    out = tmp_path / "out"
    assert main(["--source", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: source ") and "nowhere" in error and "\n" not in error, error
    assert not out.exists()  # no output folder (nor partition lock) for a run that cannot start

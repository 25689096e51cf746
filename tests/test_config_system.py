"""One configuration system for every job: the same ``key=value`` syntax, the same unknown-key
error naming the full key, and ``--print-config`` showing resolved values with their sources."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.config import resolve_config as render_config
from evaluation.config import load_config as eval_config
from models.config import ConfigError, comments
from training.config import load_config as train_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_job_names_an_unknown_key_the_same_way():
    errors = []
    for load, override in (
        (lambda o: train_config("stage1-tiny", [o]), "train.lrr=1"),
        (lambda o: eval_config(overrides=[o]), "sds.stepz=1"),
        (_render_override, "objaverse.lvis=1"),
    ):
        with pytest.raises(ConfigError) as info:
            load(override)
        errors.append(str(info.value))
    key = r"unknown config key '(train\.lrr|sds\.stepz|objaverse\.lvis)' \(known here: [a-z_, ]+\)"
    for message in errors:
        assert re.fullmatch(key, message), message


def _render_override(override: str):
    return render_config(None, None, [override])


def test_wrong_types_name_the_key_in_every_job():
    with pytest.raises(ConfigError, match="config key 'train.lr'"):
        train_config("stage1-tiny", ["train.lr=fast"])
    with pytest.raises(ConfigError, match="config key 'sds.guidance_scale'"):
        eval_config(overrides=["sds.guidance_scale=high"])
    with pytest.raises(ConfigError, match="config key 'res'"):
        _render_override("res=big")


def test_documented_yaml_comments_are_read_per_dotted_key():
    docs = comments(ROOT / "configs" / "render.yaml")
    assert docs["res"] == "image width = height, pixels"
    assert docs["objaverse.licenses"].startswith("keep only these licences")
    assert "OBJECT_RADIUS" in docs["relative_radius"]  # a comment continued on the next lines
    lr = comments(ROOT / "configs" / "stage1-tiny.yaml")["train.lr"]
    assert lr.startswith("peak learning rate (AdamW)") and "never rescaled" in lr


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_print_config_of_the_finetune_launcher(tmp_path):
    result = _run(
        "-m", "training.launch", "--stage", "2", "--config", "tiny", "--data", str(tmp_path),
        "train.lr=2e-4", "--print-config",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^  lr: 0\.0002 +# <- command line$", out, re.M), out
    assert re.search(rf"^  train: \[{re.escape(str(tmp_path))}\] +# <- launcher flag$", out, re.M)
    assert re.search(r"^  max_steps: \d+ +# <- configs/stage2-tiny\.yaml$", out, re.M)
    bad = _run("-m", "training.launch", "--print-config", "train.lrr=3")
    assert bad.returncode == 2 and "unknown config key 'train.lrr'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_print_config_of_training_itself():
    result = _run("-m", "training.train", "--config", "stage1-tiny", "--print-config", "seed=1")
    assert result.returncode != 0 and "unknown config key 'seed'" in result.stderr
    result = _run(
        "-m", "training.train", "--config", "stage1-tiny", "--print-config", "train.seed=1"
    )
    assert re.search(r"^  seed: 1 +# <- command line$", result.stdout, re.M), result.stdout


def _make_print_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", "setup", "print-config", *args,
         f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_make_print_config_of_every_job_and_the_same_unknown_key_error(tmp_path):
    out = tmp_path / "out"
    jobs = {
        "finetune": (["STAGE=1", f"DATA={tmp_path}", f"OUT={out}"], "train.lr=0.0002", "train"),
        "eval": ([f"IMAGES={tmp_path}", f"OUT={out}"], "sds.steps=7", "sds"),
        "render": (["SOURCE=samples", f"OUT={out}", "RES=48"], "seed=7", ""),
    }
    for job, (variables, override, section) in jobs.items():
        result = _make_print_config(f"JOB={job}", *variables, f"ARGS={override}")
        assert result.returncode == 0, (job, result.stderr[-2000:])
        name, value = override.split("=")
        key = name.rsplit(".", 1)[-1]
        indent = "  " if section else ""
        line = rf"^{indent}{key}: {re.escape(value)} +# <- command line$"
        assert re.search(line, result.stdout, re.M), (job, result.stdout[-3000:])
        assert re.search(r"# <- configs/\S+\.yaml$|# <- default", result.stdout, re.M), job
        unknown = f"{section or 'objaverse'}.nokey"
        bad = _make_print_config(f"JOB={job}", *variables, f"ARGS={unknown}=1")
        assert bad.returncode != 0, job
        error = f"error: unknown config key '{unknown}' (known here: "
        ours = [line for line in bad.stderr.splitlines() if not line.startswith("make")]
        assert len(ours) == 1 and ours[0].startswith(error), (job, bad.stderr)
        assert not out.exists(), job  # printing the config runs nothing


def test_the_readme_printout_is_what_make_print_config_prints():
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```console\n\$ (make print-config .*?)\n(.*?)```", text, re.S)
    command, shown = block
    words = shlex.split(command)
    result = subprocess.run(
        [*words[:1], "-s", "--no-print-directory", "-o", "setup", *words[1:],
         f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.splitlines()
    position = 0
    for line in shown.splitlines():
        if line.strip() == "...":
            continue
        assert line in printed[position:], (line, result.stdout)  # shown lines, in their order
        position = printed.index(line, position) + 1

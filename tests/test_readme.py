"""The README's commands are the ones that exist: every `make` target and variable it names is in
the Makefile, and every `python -m module --flag` it shows is accepted by that module's CLI."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _code_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    fenced = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    blocks = [body for language, body in fenced if language in ("", "bash", "sh", "console")]
    lines: list[str] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        lines += [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


@functools.cache
def _make_database() -> str:
    out = subprocess.run(
        ["make", "-pRrq", "-f", "Makefile", ".DEFAULT"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return out.stdout


def _make_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for line in _code_lines():
        words_all = shlex.split(line)  # quoted ARGS="..." stay one word
        starts = [i for i, w in enumerate(words_all) if w == "make"]
        for begin in starts:
            if begin and words_all[begin - 1] not in ("&&", ";", "|", "||"):
                continue  # "make" as an argument of another command
            words = words_all[begin:]
            for i, word in enumerate(words):
                if word in ("&&", ";", "|", "||"):
                    words = words[:i]
                    break
            targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            variables = [w.split("=", 1)[0] for w in words[1:] if "=" in w]
            commands += [(t, variables) for t in targets]
    return commands


def test_readme_shows_the_two_commands():
    targets = {t for t, _ in _make_commands()}
    assert {"demo", "test"} <= targets


@pytest.mark.parametrize("target,variables", _make_commands())
def test_readme_make_targets_and_variables_exist(target: str, variables: list[str]):
    database = _make_database()
    assert re.search(rf"^{re.escape(target)}:", database, flags=re.M), f"no make target {target}"
    for variable in variables:
        assert re.search(rf"^{re.escape(variable)} [:?]?=", database, flags=re.M) or (
            f"$({variable})" in database
        ), f"make {target}: variable {variable} is not used by the Makefile"


def _module_commands() -> list[tuple[str, list[str]]]:
    found = []
    for line in _code_lines():
        match = re.search(r"python -m ([\w.]+)(.*)", line)
        if match:
            flags = re.findall(r"(?<!\S)(--[\w-]+)", match.group(2))
            found.append((match.group(1), flags))
    return found


@pytest.mark.parametrize("module,flags", _module_commands())
def test_readme_module_flags_exist(module: str, flags: list[str]):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in flags:
        assert flag in out.stdout, f"python -m {module}: README flag {flag} not in --help"


def test_make_help_lists_every_job_and_variable():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    database = _make_database()
    internal = {"browser", "draco-deps", "render-check-setup"}  # prerequisites, not jobs
    phony = set()
    for line in re.findall(r"^\.PHONY: (.*)$", database, flags=re.M):
        phony |= set(line.split()) - internal
    for target in sorted(phony):
        assert re.search(rf"make {re.escape(target)}\b", out.stdout), f"make help lacks {target}"
    makefiles = [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))]
    variables = {v for f in makefiles for v in re.findall(r"^(\w+) \?=", f.read_text(), re.M)}
    for variable in sorted(variables):
        assert re.search(rf"\b{variable}=", out.stdout), f"make help lacks variable {variable}"

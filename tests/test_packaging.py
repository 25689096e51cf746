"""Rendering's dependencies (Blender's bpy, objaverse) are an extra: training and evaluation
install and import without them, on any Python the project supports; `make setup` still installs
everything this repository's targets use."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
RENDER_ONLY = {"bpy", "objaverse"}


def test_render_dependencies_are_an_extra_that_make_setup_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {Requirement(r).name for r in project["dependencies"]}
    assert not required & RENDER_ONLY, required & RENDER_ONLY
    assert {Requirement(r).name for r in project["optional-dependencies"]["render"]} >= RENDER_ONLY
    supported = SpecifierSet(project["requires-python"])
    assert "3.11" in supported and "3.12" in supported and "3.13" in supported
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -e '.[dev,render]'" in makefile


def test_training_evaluation_and_models_import_without_render_dependencies():
    script = f"""
import importlib, pkgutil, sys
for name in {sorted(RENDER_ONLY)!r}:
    sys.modules[name] = None  # any import of it now fails
for package in ("models", "training", "evaluation"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

"""The snippets that load an exported model folder without this repository (README.md and
docs/model.md) run as printed, in an isolated Python outside the repository, on a real model
folder, and what they load computes what our own loader's model computes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bundle import load_model

ROOT = Path(__file__).resolve().parents[1]


def _load_snippet(document: str) -> str:
    text = (ROOT / document).read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "from_pretrained" in c]
    return code


def _imported(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


# Appended to a snippet: its components run on the test's inputs, their outputs are saved.
CHECK = """
import torch as _torch
_inputs = _torch.load({inputs!r}, weights_only=True)
with _torch.no_grad():
    _context = clip.encode_image(_inputs["pixels"])[:, None]
    _out = {{
        "context": _context,
        "unet": unet(_inputs["x"], _inputs["t"], encoder_hidden_states=_context,
                     class_labels=_inputs["camera"]).sample,
        "latent": vae.encode(_inputs["image"]).latent_dist.mean,
        "decoded": vae.decode(_inputs["z"]).sample,
        "alphas_cumprod": scheduler.alphas_cumprod,
    }}
_torch.save(_out, {outputs!r})
"""


@pytest.mark.parametrize("document", ["README.md", "docs/model.md"])
def test_the_load_snippet_runs_on_an_exported_folder(document, tiny_model_dir, tmp_path):
    code = _load_snippet(document)
    assert _imported(code) <= {"open_clip", "diffusers", "torch"}, _imported(code)  # none of ours
    # The folder the snippet names, as a link to a real model folder: the snippet runs verbatim.
    (folder,) = set(re.findall(r"\"(outputs/[\w/]+/ema)(?:/\w*)?\"", code))
    (tmp_path / folder).parent.mkdir(parents=True)
    (tmp_path / folder).symlink_to(tiny_model_dir)
    model = load_model(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    images01 = torch.rand(2, 3, 32, 32, generator=generator)
    inputs = {
        "pixels": model.image_encoder.preprocess(images01),
        "x": torch.randn(2, model.latent_channels, 8, 8, generator=generator),
        "t": torch.tensor([10, 900]),
        "camera": torch.randn(2, 16, generator=generator),
        "image": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
        "z": torch.randn(2, model.latent_channels, 8, 8, generator=generator),
    }
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "snippet.py"
    check = CHECK.format(inputs=str(tmp_path / "inputs.pt"), outputs=str(tmp_path / "out.pt"))
    script.write_text(code + check)
    # -I: isolated (no PYTHONPATH, no current folder on the path), run outside the repository
    done = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        context = model.image_encoder.encode(images01)
        expected = {
            "context": context,
            "unet": model.unet(inputs["x"], inputs["t"], context, inputs["camera"], num_views=1),
            "latent": model.vae.model.encode(inputs["image"]).latent_dist.mean,
            "decoded": model.vae.model.decode(inputs["z"]).sample,
            "alphas_cumprod": model.noise_scheduler.alphas_cumprod,
        }
    for key, value in expected.items():
        assert got[key].shape == value.shape, key
        assert torch.allclose(got[key], value, atol=1e-5), (key, (got[key] - value).abs().max())
    assert not torch.allclose(got["unet"], torch.zeros_like(got["unet"]), atol=1e-3)


def test_the_readme_names_the_multiview_loader_that_exists():
    code = _load_snippet("README.md")
    (call,) = re.findall(r"# the joint multi-view attention: ([\w.]+)\(", code)
    module, name, method = call.rsplit(".", 2)
    loader = getattr(getattr(__import__(module, fromlist=[name]), name), method)
    model = loader.__self__ if hasattr(loader, "__self__") else None
    assert model is not None and model.__name__ == "MultiViewUNet"

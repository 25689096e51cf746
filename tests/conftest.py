"""Shared pytest fixtures."""

import pytest


# --- models: a saved random-init tiny model folder in our format (models/bundle.py) ---
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a random-init ``tiny`` model (seed 0) saved with ``models.bundle.save_model``."""
    from models.bundle import build_model, save_model

    return save_model(build_model("tiny", seed=0), tmp_path_factory.mktemp("tiny_model") / "model")


# --- render: real Blender renders of the built-in samples as shards (data_prep/render.py) ---
@pytest.fixture(scope="session")
def rendered_shards(tmp_path_factory):
    """Folder (pathlib.Path) of WebDataset shards rendered once per session from the 10 built-in
    samples: ``part-000/shard-000-*.tar`` (4 objects each) in the format of docs/shards.md, 5 views
    per object (1 orthogonal quadruple + 1 reference view), 32 x 32 RGBA, with
    ``part-000/records.jsonl`` beside them (all in ``part-000/``). About 5-10 s on 2 CPU cores."""
    from data_prep.config import load_config
    from data_prep.render import render

    out = tmp_path_factory.mktemp("rendered_shards")
    config = load_config(
        source="samples",
        out=str(out),
        res=32,
        samples=8,
        denoise=False,
        num_quads=1,
        num_refs=1,
        workers=2,
        shard_size=4,
        progress=False,
    )
    summary = render(config)
    assert not summary.failed, f"sample renders failed: {summary.failed}"
    return out

"""Shared pytest fixtures."""

import pytest


# --- models: a saved random-init tiny model folder in our format (models/bundle.py) ---
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a random-init ``tiny`` model (seed 0) saved with ``models.bundle.save_model``."""
    from models.bundle import build_model, save_model

    return save_model(build_model("tiny", seed=0), tmp_path_factory.mktemp("tiny_model") / "model")

"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny-model kernels are too small to gain from threads, and on a busy shared CPU OpenMP
    barriers make them up to 100x slower; run single-threaded and restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared test set-up: one torch thread (CI has 2 cores), real data only through an env var."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


def _shared_data_root() -> Path | None:
    env = os.environ.get("NEUROREG_DATA_ROOT")
    if env:
        return Path(env)
    # The checkout's neighbour ../shared/data holds offline copies of MNIST and CIFAR-10.
    guess = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """Root with MNIST/raw and cifar10-jpg.tar.gz; skips when not present."""
    root = _shared_data_root()
    if root is None or not (root / "MNIST" / "raw").is_dir():
        pytest.skip("real data not found: set NEUROREG_DATA_ROOT to a folder holding MNIST/raw")
    return root

"""Shared test set-up: one torch thread (CI has 2 cores), numba unoptimized, real data only through an env var."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# Brendel-Bethge's numba jitclasses cannot be cached and compile once per process: at LLVM's
# default -O3 that took 72 s on a 2-core AVX2 machine, at -O0 42 s (same tests side by side, all
# passing). The tests' attacks run a few steps on a handful of images, so compile time is all
# that optimization would buy; inherited by the subprocesses and Ray workers tests start.
os.environ.setdefault("NUMBA_OPT", "0")


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

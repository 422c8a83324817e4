"""train.deterministic (issue 25, item 7), tested on a CPU.

The flags are process-wide and a Ray worker runs several trials, so they must be set for a
run and put back after it, also when the run fails.
"""

from __future__ import annotations

import os

import pytest
import torch

from neuroreg.config import RunConfig, TrainConfig
from neuroreg.precision import CUBLAS_WORKSPACE, determinism
from neuroreg.train import train


def _flags() -> tuple[bool, bool, bool, bool]:
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)


@pytest.fixture
def clean_flags(monkeypatch):
    """Known starting flags (not torch's defaults, so a restore to defaults would show) and no
    CUBLAS_WORKSPACE_CONFIG; everything put back after the test."""
    saved = _flags()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_default_is_off_and_documented():
    import inspect

    assert TrainConfig().deterministic is False
    src = inspect.getsource(TrainConfig)  # the field's docstring states the cost and the default's autotuning
    assert "deterministic: bool = False" in src and "slower" in src and "cudnn.benchmark" in src


def test_deterministic_sets_every_flag_and_restores_them(clean_flags):
    before = _flags()
    with determinism(True, torch.device("cpu")):
        assert _flags() == (True, False, True, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert _flags() == before


def test_a_user_cublas_setting_is_kept(clean_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with determinism(True, torch.device("cpu")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_default_autotunes_on_cuda_only(clean_flags):
    with determinism(False, torch.device("cuda")):  # the context only reads the device's type
        assert _flags() == (False, False, False, True)
    assert _flags() == (False, False, False, False)
    with determinism(False, torch.device("cpu")):
        assert _flags() == (False, False, False, False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_flags_come_back_when_the_run_fails(clean_flags):
    torch.use_deterministic_algorithms(True, warn_only=True)  # a user's own setting survives too
    before = _flags()
    with pytest.raises(ZeroDivisionError), determinism(False, torch.device("cuda")):
        1 / 0  # noqa: B018
    assert _flags() == before


def test_a_deterministic_run_trains_inside_the_flags_and_restores_them(clean_flags, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.15},
        "model": {"width": 8},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 40, "layers": ["conv1", "conv5"], "n_pairs": 8},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "max_steps_per_epoch": 3, "deterministic": True},
    })
    seen = []
    train(cfg, tmp_path / "det", callback=lambda m: seen.append(_flags()))
    assert seen == [(True, False, True, False)]
    assert _flags() == (False, False, False, False)

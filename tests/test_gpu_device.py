"""Never a silent CPU (issue 25, item 2): a trial that Ray gave a GPU share either trains on
CUDA, or says why it is on the CPU (train.device: cpu), or fails at once naming the cause.

The failure paths are exercised on this CPU machine by monkeypatching torch.cuda."""

from __future__ import annotations

import pytest
import torch

import sweep.trainable as tr
from sweep.trainable import CudaUnusable, arch_supported, trial_device

ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130


def test_no_gpu_share_means_cpu():
    assert trial_device("auto", []) == ("cpu", None)
    assert trial_device("cpu", []) == ("cpu", None)


def test_cpu_with_a_gpu_share_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, why = trial_device("cpu", [0])
    assert device == "cpu" and "train.device is cpu" in why and "GPU 0" in why


@pytest.fixture
def no_cuda(monkeypatch):
    """A CUDA wheel on a node where torch cannot reach the GPU."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ARCHES)
    return monkeypatch


def test_gpu_share_without_driver_fails_at_once(no_cuda):
    no_cuda.setattr(tr, "nvidia_driver_version", lambda: None)
    no_cuda.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError("Found no NVIDIA driver on your system.")))
    with pytest.raises(CudaUnusable) as e:
        trial_device("auto", [0])
    msg = str(e.value)
    assert "Ray assigned GPU 0" in msg and "no NVIDIA driver is loaded" in msg
    assert "driver >= 580 (CUDA 13.0)" in msg and "sm_75 .. sm_120" in msg and "install" in msg


def test_gpu_share_with_an_old_driver_fails_naming_it(no_cuda):
    no_cuda.setattr(tr, "nvidia_driver_version", lambda: "535.104.05")
    no_cuda.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(
        RuntimeError("The NVIDIA driver on your system is too old (found version 12020).")))
    with pytest.raises(CudaUnusable, match=r"driver 535\.104\.05 is too old for this torch's CUDA 13\.0"):
        trial_device("auto", [1])
    # an explicit cuda fails the same way (validation keeps it out of sweeps; a direct call may not)
    with pytest.raises(CudaUnusable, match="too old"):
        trial_device("cuda", [1])


def test_gpu_share_with_a_cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(CudaUnusable, match="CPU-only build.*whl/cu130"):
        trial_device("auto", [0])


def test_gpu_architecture_missing_from_the_wheel(monkeypatch):
    """A V100 (sm_70) is visible to torch but the cu130 wheel has no kernels for it."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ARCHES)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-16GB")
    with pytest.raises(CudaUnusable, match=r"V100.*compute capability 7\.0.*sm_70"):
        trial_device("auto", [0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))  # an A10G
    assert trial_device("auto", [0]) == ("auto", None)


@pytest.mark.parametrize("cap, arches, ok", [
    ((8, 6), ARCHES, True),
    ((8, 9), ARCHES, True),          # L4: sm_86 cubins run on 8.9
    ((7, 0), ARCHES, False),         # V100
    ((6, 0), ARCHES, False),         # P100
    ((12, 1), ARCHES, True),
    ((9, 0), ["sm_80", "compute_80"], True),  # PTX JIT-compiles forward
    ((9, 0), ["sm_80"], False),
])
def test_arch_supported(cap, arches, ok):
    assert arch_supported(cap, arches) is ok


def test_driver_version_is_read_from_proc(monkeypatch, tmp_path):
    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
                 "GCC version:  gcc version 12.3.0\n")
    real = tr.Path
    monkeypatch.setattr(tr, "Path", lambda p: f if p == "/proc/driver/nvidia/version" else real(p))
    assert tr.nvidia_driver_version() == "580.65.06"

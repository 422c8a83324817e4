"""Provenance: what the record says about the CPU, the lock and the code, from real inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from neuroreg import provenance

ROOT = Path(__file__).resolve().parents[1]

AVX2_ONLY = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma
"""
AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_flags_from_cpuinfo():
    a, b = provenance.cpu_info(AVX2_ONLY), provenance.cpu_info(AMX)
    assert a["cpu_model"] == "AMD EPYC 7B13" and a["cpu_avx2"] and not a["cpu_avx512f"]
    assert not a["cpu_avx512_bf16"] and not a["cpu_amx_tile"]
    assert b["cpu_avx512_bf16"] and b["cpu_amx_tile"] and b["cpu_avx512f"]
    assert provenance.cpu_info("")["cpu_avx2"] is None  # unknown, not False


def test_lock_drift_names_each_difference(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# comment\nnumpy=={version('numpy')}\n    # via x\nPyYAML==0.0.1\n"
                    f"no-such-package-xyz==1.0\ntorch=={version('torch')}\n")
    drift = provenance.lock_drift(lock)
    assert drift == ["no-such-package-xyz: not installed (lock 1.0)", f"pyyaml: {version('pyyaml')} installed, lock 0.0.1"]


def test_project_lock_matches_this_environment():
    """The suite runs on what requirements.lock pins (make installs it); a hand install shows."""
    if os.environ.get("NEUROREG_TEST_LATEST"):
        pytest.skip("make test-latest runs newer releases than the lock on purpose (it lists them first)")
    lock = ROOT / provenance.LOCK_FILE
    pins = provenance.read_lock(lock)
    for name in ("optuna", "ray", "torch", "numpy", "pandas", "pyarrow", "torchvision"):
        assert name in pins, name
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    p = subprocess.run([sys.executable, "-m", "neuroreg.provenance", "--check-lock"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0, reason="no git")
def test_git_state_commit_dirty_and_diff_hash(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = provenance.git_state(repo)
    assert clean == {"git_commit": _git(repo, "rev-parse", "HEAD").strip(), "git_dirty": False, "git_diff_sha256": None}
    (repo / "a.py").write_text("x = 2\n")
    d1 = provenance.git_state(repo)
    (repo / "a.py").write_text("x = 3\n")
    d2 = provenance.git_state(repo)
    assert d1["git_dirty"] and d2["git_dirty"] and d1["git_diff_sha256"] != d2["git_diff_sha256"]
    (repo / "a.py").write_text("x = 1\n")
    (repo / "new.py").write_text("")  # an untracked module is a change too
    assert provenance.git_state(repo)["git_dirty"]
    assert provenance.git_state(tmp_path)["git_commit"] is None  # not a repository


def test_differences_name_fields_that_move_numbers():
    a = {"torch": "2.14.1", "precision": "bf16", "device_kind": "cpu", "git_commit": "abc", "hostname": "x"}
    b = {**a, "precision": "fp32", "hostname": "y"}
    assert provenance.differences(a, b) == ["precision: bf16 vs fp32"]
    assert provenance.differences(a, a) == []


def test_collect_is_flat_and_complete():
    rec = provenance.collect(threads_per_trial=1)
    for key in ("python", *provenance.PACKAGES, "git_commit", "git_dirty", "git_diff_sha256", "lock_sha256",
                "cpu_model", *(f"cpu_{f}" for f in provenance.CPU_FLAGS), "gpu_model", "gpu_driver", "torch_cuda",
                "hostname", "threads_per_trial"):
        assert key in rec, key
    assert all(isinstance(v, (str, int, float, bool)) or v is None for v in rec.values())
    assert rec["torch"] == version("torch") and rec["threads_per_trial"] == 1

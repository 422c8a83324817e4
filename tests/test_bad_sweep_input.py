"""sweep.run refuses bad names, flags and storage with exit 2 before Ray starts or anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.run", *args], capture_output=True, text=True,
                          cwd=PROJECT, timeout=120)


@pytest.mark.parametrize(("args", "culprit"), [
    (["--space", "alpha_th.yaml", "--name", "a\nb"], "--name"),
    (["--space", "alpha_th.yaml", "--name", "a\x01b"], "--name"),
    (["--space", "alpha_th.yaml", "--name", "../escape"], "--name"),
    (["--space", "alpha_th.yaml", "--name", "ünï"], "--name"),
    (["--resume", "--name", "../outside/x"], "--name"),
    (["--space", "alpha_th.yaml", "--num-cpus", "-3"], "--num-cpus"),
    (["--resume", "--name", "x", "--num-samples", "9"], "--num-samples"),
    (["--resume", "--name", "x", "--gpus-per-trial", "1"], "--gpus-per-trial"),
])
def test_refused_with_exit_2(args, culprit, tmp_path):
    storage = tmp_path / "res"
    p = run(tmp_path, *args, "--storage", str(storage))
    assert p.returncode == 2, p.stdout[-1000:] + p.stderr[-1000:]
    assert culprit in p.stderr and "Traceback" not in p.stderr
    assert "Ray ready" not in p.stdout  # refused before Ray started
    assert not storage.exists() or not any(storage.iterdir())  # nothing written
    assert not (tmp_path / "outside").exists()


def test_storage_that_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    p = run(tmp_path, "--space", "alpha_th.yaml", "--storage", str(f))
    assert p.returncode == 2 and "--storage" in p.stderr and "Traceback" not in p.stderr
    assert f.read_text() == "keep me"

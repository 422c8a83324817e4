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
    (["--resume", "--name", "x", "--max-concurrent", "2"], "--max-concurrent"),  # --num-samples extends a study
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


@pytest.mark.parametrize(("space", "culprit"), [
    ("name: s\nbase: {}\nnum_samples: 100000000\n", "num_samples"),
    ("name: s\nbase: {}\nspace:\n  model.width: {int: [1, 100000000000000000000000]}\nsearch: {algorithm: random}\n",
     "model.width"),
    ("name: s\nbase: {}\nspace: [unclosed\n", "not a valid sweep file"),
    ("name: s\nname: t\nbase: {}\n", "appears twice"),
])
def test_bad_space_files_refused_at_once(space, culprit, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(space)
    p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(f), "--dry-run"], capture_output=True,
                       text=True, cwd=PROJECT, timeout=60)  # never the minutes a huge enumeration took
    assert p.returncode == 2 and culprit in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_resume_with_broken_space_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: [broken\n")
    p = run(tmp_path, "--resume", "--space", str(f), "--storage", str(tmp_path / "res"))
    assert p.returncode == 2 and "--space" in p.stderr and "Traceback" not in p.stderr


def test_query_out_and_gather_of_nothing(tmp_path):
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    g = subprocess.run([sys.executable, "-m", "analysis.gather", str(empty), "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert g.returncode == 2 and "no trial folders" in g.stderr and "Traceback" not in g.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_address_fails_fast(tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.time()
    p = run(tmp_path, "--space", "alpha_th.yaml", "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "r"))
    assert p.returncode == 2 and f"127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr
    assert time.time() - t0 < 60


def test_when_that_can_never_hold():
    from neuroreg.config import ConfigError
    from sweep.spec import parse_spec

    raw = {"name": "w", "base": {"data": {"name": "digits"}, "regularizer": {"target": "pixel", "alpha": 1.0}},
           "space": {"regularizer.target": {"choice": ["pixel", "shuffle"]},
                     "regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": "pixel_th"}}},
           "search": {"algorithm": "random"}}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw)
    assert e.value.field == "space.regularizer.th.when" and "never" in str(e.value)
    raw["space"]["regularizer.target"]["choice"].append("pixel_th")
    assert parse_spec(raw).space[1].when == {"regularizer.target": ["pixel_th"]}

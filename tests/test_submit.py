"""sweep/cluster/submit.sh against a real local Ray head (issue 23, item 6).

The head is started the way that used to fail: the venv's `ray` binary with the venv not
on PATH, so the job's `python` is not the project's. The job must still run the tiny sweep
(job_entry.sh finds the interpreter Ray itself runs in), and a python lacking the project
must fail at once with a message naming it and what it lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.test_sweep_run import TINY_BASE

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "sweep" / "cluster" / "submit.sh"
ENTRY = ROOT / "sweep" / "cluster" / "job_entry.sh"
VENV_PY = Path(sys.executable)
RAY = str(VENV_PY.with_name("ray"))
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A python without the project's requirements: a fresh venv of the base interpreter."""
    d = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(d)],
                   check=True, capture_output=True, timeout=120)
    py = d / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the base interpreter has torch: no python lacking the project here")
    return py


def _entry(args: list[str], env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_entry_names_the_python_and_what_it_lacks(bare_python):
    """No Ray ancestor here: the candidates are NEUROREG_PYTHON, then python3 / python on PATH."""
    bare_bin = bare_python.parent
    env = {"PATH": f"{bare_bin}:{BARE_PATH}", "HOME": os.environ.get("HOME", "/tmp")}
    p = _entry(["--dry-run"], {**env, "NEUROREG_PYTHON": str(bare_python)})
    assert p.returncode == 2, p.stdout + p.stderr
    err = p.stderr.strip()
    assert err.startswith(f"error: the job's python {bare_python} (NEUROREG_PYTHON) cannot import: torch")
    assert "Traceback" not in err and "ModuleNotFoundError" not in err

    p = _entry(["--dry-run"], env)  # python3 on PATH is the bare one
    assert p.returncode == 2
    assert f"{bare_bin}/python3 (python3 on the head's PATH) cannot import: torch" in p.stderr
    assert "NEUROREG_PYTHON=/path/to/.venv/bin/python" in p.stderr and "ray start --head" in p.stderr

    p = _entry(["--dry-run", "--space", "alpha_th.yaml"], {**env, "NEUROREG_PYTHON": str(VENV_PY)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith(f"job python: {VENV_PY} (NEUROREG_PYTHON)") and "would write to:" in p.stdout


def _free_ports(n: int) -> list[int]:
    from tests.test_cluster import _free_ports as free

    return free(n)


@pytest.fixture(scope="module")
def head():
    """A Ray head with its dashboard (the job API), started by the venv's ray binary with a
    PATH that lacks the venv; (dashboard URL, head env); killed afterwards."""
    from tests.test_cluster import _kill_tree

    temp = tempfile.mkdtemp(prefix="nr_job_", dir="/tmp")
    gcs, dash, nm, om, client, agent, agent_grpc, rt_agent, metrics = _free_ports(9)
    env = {"PATH": BARE_PATH, "HOME": os.environ.get("HOME", "/tmp"), "RAY_AUTH_MODE": "token",
           "LANG": "C.UTF-8"}
    try:
        p = subprocess.run([RAY, "start", "--head", "--port", str(gcs), "--temp-dir", temp, "--include-dashboard",
                            "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                            "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
                            "--node-manager-port", str(nm), "--object-manager-port", str(om),
                            "--ray-client-server-port", str(client), "--num-cpus", "2", "--node-ip-address",
                            "127.0.0.1", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, f"ray start --head failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        yield f"http://127.0.0.1:{dash}"
    finally:
        _kill_tree(lambda c: temp in c)
        shutil.rmtree(temp, ignore_errors=True)


def _submit(address: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NEUROREG_PYTHON", "RAY_ADDRESS")}
    env.update(RAY=RAY, **extra_env)
    return subprocess.run(["bash", str(SUBMIT), "--wait", address, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=420)


@pytest.mark.slow
def test_submit_runs_a_sweep_with_the_heads_python_and_fails_fast_without_one(head, bare_python, tmp_path):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1, "max_steps_per_epoch": 1}}
    space = tmp_path / "j.yaml"
    space.write_text(yaml.safe_dump({"name": "j", "base": base, "baseline": False, "search": {"algorithm": "grid"},
                                     "space": {"regularizer.alpha": {"grid": [1.0]}},
                                     "resources": {"cpus_per_trial": 1}}))
    storage = tmp_path / "res"
    t0 = time.time()
    p = _submit(head, "--space", str(space), "--storage", str(storage), "--name", "job")
    took = time.time() - t0
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    # Not the head's PATH python (/usr/bin/python3 has no torch here): the environment Ray runs in.
    assert f"job python: {VENV_PY} (Ray's own environment on the head)" in out, out[-4000:]
    trials = sorted(storage.glob("job/trial_*"))
    assert len(trials) == 1
    assert all((t / "run" / "config.yaml").is_file() for t in trials)
    assert (tmp_path / "tables" / "trials" / "job.parquet").is_file()

    t1 = time.time()
    p = _submit(head, "--space", str(space), "--storage", str(storage), "--name", "nope",
                NEUROREG_PYTHON=str(bare_python))
    failed_in = time.time() - t1
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert f"error: the job's python {bare_python} (NEUROREG_PYTHON) cannot import: torch" in out, out[-4000:]
    assert "ModuleNotFoundError" not in out and not (storage / "nope").exists()
    print(f"\nsubmit.sh: tiny sweep job {took:.0f} s; the failing job ended in {failed_in:.0f} s")

"""A real 2-node Ray cluster on this machine: two `ray start` processes with token
authentication, 1 CPU and 2 logical GPUs each (no physical GPU needed). One sweep joins it
with --address: 4 trials at --gpus-per-trial 0.5 run at once on both nodes (on the CPU,
as CUDA is absent), then the second node is killed in the middle of its trials, and the
sweep still finishes every trial, retried from its last checkpoint on the head node."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.test_sweep_run import TINY_BASE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line), from /proc (no psutil in the environment)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, [a.decode(errors="replace") for a in args if a])
    return out


def _kill_tree(match) -> None:
    """SIGKILL the processes whose command line satisfies ``match``, with their descendants
    (only this test's own Ray processes: never `ray stop`, which stops every cluster)."""
    procs = _processes()
    doomed = {pid for pid, (_, args) in procs.items() if match(" ".join(args))}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= kids
        grew = bool(kids)
    for pid in doomed - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def two_nodes():
    """(GCS address, head temp dir, worker node-manager port); everything killed afterwards."""
    temp = tempfile.mkdtemp(prefix="nr_2n_", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, head_nm, head_om, client, wk_nm, wk_om, *_ = _free_ports(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # The nodes, not the driver, are told to use tokens: the driver must find out by itself.
    # Quick node-death detection so the test does not wait Ray's default ~30 s.
    env.update(RAY_AUTH_MODE="token", RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    common = ["--num-cpus", "1", "--num-gpus", "2", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(gcs), "--temp-dir", temp, "--include-dashboard",
                        "false", "--node-manager-port", str(head_nm), "--object-manager-port", str(head_om),
                        "--ray-client-server-port", str(client), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{gcs}", "--node-manager-port", str(wk_nm),
                        "--object-manager-port", str(wk_om), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{gcs}", temp, wk_nm
    finally:
        _kill_tree(lambda c: temp in c)
        shutil.rmtree(temp, ignore_errors=True)


def _results(trial: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in (trial / "result.json").read_text().splitlines() if x.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_two_nodes_pack_gpus_and_survive_node_loss(two_nodes, tmp_path):
    address, temp, worker_port = two_nodes
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 8, "max_steps_per_epoch": 12}}
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "name": "mn", "base": base, "baseline": False,
        "space": {"regularizer.alpha": {"grid": [0.5, 1.0, 2.0, 4.0]}}, "search": {"algorithm": "grid"},
        "failure": {"max_failures": 2},
    }))
    storage = tmp_path / "res"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # no hand-set token variables
    cmd = [sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", str(storage), "--name", "mn",
           "--address", address, "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.5", "--quiet"]
    log = open(tmp_path / "sweep.log", "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=log)

    # The second node's id: the node-id every trial reports that is not the head's. Kill
    # it once two of its trials have checkpointed at least two epochs.
    exp = storage / "mn"
    killed, concurrent = None, 0
    while time.time() - t0 < 240 and proc.poll() is None and killed is None:
        trials = {t.name: _results(t) for t in exp.glob("trial_*")}
        running = [r for r in trials.values() if r and "evaluated" not in r[-1]]
        concurrent = max(concurrent, len(running))
        by_node: dict[str, list] = {}
        for r in running:
            by_node.setdefault(r[-1]["node_id"], []).append(r)
        if len(by_node) == 2 and concurrent == 4:
            worker_id = _worker_node_id(worker_port)
            if all(r[-1]["training_iteration"] >= 2 for r in by_node.get(worker_id, [])):
                _kill_tree(lambda c: f"--node_manager_port={worker_port}" in c)
                killed = {t: r[-1]["training_iteration"] for t, r in trials.items()
                          if r and r[-1]["node_id"] == worker_id and "evaluated" not in r[-1]}
        time.sleep(0.2)
    rc = proc.wait(timeout=300)
    log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert killed, f"never saw 4 trials at once on both nodes (max {concurrent})\n{out[-3000:]}"
    assert rc == 0, out[-3000:]
    assert "Token authentication: RAY_AUTH_MODE=token" in out

    import pandas as pd

    trials = pd.read_parquet(tmp_path / "tables" / "trials" / "mn.parquet").set_index("trial_dir")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all() and (trials["iterations"] == 9).all()
    assert (trials["device"] == "cpu").all()  # logical GPUs only: `auto` still chose the CPU
    for name, iteration in killed.items():
        row = trials.loc[str(exp / name)]
        # Retried on the surviving node, from its checkpoint (not from epoch 1).
        first, second = row["node_ids"].split(",")
        assert first != second and row["node_id"] == second
        last = _results(exp / name)[-1]
        assert last["training_iteration"] == 9 and last["iterations_since_restore"] <= 9 - iteration
        assert len((exp / name / "run" / "metrics.jsonl").read_text().splitlines()) >= 8
    # The per-node file check that sweep.run makes on a joined cluster (the head is left).
    probe = ("import ray; from neuroreg.config import ConfigError; from sweep.ray_session import check_node_paths\n"
             f"ray.init(address='{address}', log_to_driver=False)\n"
             f"check_node_paths({{'data.root': '{tmp_path}'}})\n"
             "try:\n    check_node_paths({'data.root': '/no/such/root'})\nexcept ConfigError as e:\n    print(e)")
    p = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, "RAY_AUTH_MODE": "token"},
                       capture_output=True, text=True, timeout=120)
    assert "--data-root: node " in p.stdout and "has no /no/such/root" in p.stdout, p.stderr[-2000:]
    short = trials.assign(node_id=trials["node_id"].str[:8],
                          node_ids=trials["node_ids"].map(lambda s: ",".join(i[:8] for i in s.split(","))))
    cols = ["trial_id", "regularizer.alpha", "node_host", "node_id", "node_ids", "device", "iterations"]
    print(f"\n{short[cols].to_string(index=False)}\n"
          f"killed the second node with {killed}; sweep done in {time.time() - t0:.0f} s")


def _worker_node_id(node_manager_port: int) -> str:
    """The second node's id, from its raylet's command line."""
    for _, args in _processes().values():
        if f"--node_manager_port={node_manager_port}" in args:
            return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
    raise AssertionError("the second node's raylet is not running")


def test_concurrency_on_an_autoscaling_cluster_with_no_gpu_yet():
    from sweep.ray_session import default_concurrency

    empty = {"CPU": 2.0, "GPU": 0.0}  # a head without GPUs; GPU workers come on demand
    assert default_concurrency(empty, 4, 0.5) == 1  # what the present nodes allow
    assert default_concurrency(empty, 4, 0.5, autoscaling_trials=14) == 14  # --no-resource-check
    assert default_concurrency({"CPU": 2.0, "GPU": 2.0}, 0.5, 0.5) == 4

"""sweep.run without --address: reuse a live `ray start` cluster, never a dead one's file."""

from __future__ import annotations

import socket

import pytest

from sweep.ray_session import running_local_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_cluster_address_is_reused(tmp_path):
    with socket.socket() as srv:  # stands in for the GCS of a `ray start` head
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        assert running_local_cluster(str(tmp_path)) == f"127.0.0.1:{port}"


def test_stale_cluster_file_is_ignored(tmp_path):
    # A cluster that died without `ray stop` leaves its address behind; nothing listens there.
    (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}\n")
    assert running_local_cluster(str(tmp_path), timeout_s=0.5) is None


def test_no_cluster_file(tmp_path):
    assert running_local_cluster(str(tmp_path)) is None
    (tmp_path / "ray_current_cluster").write_text("garbage")
    assert running_local_cluster(str(tmp_path)) is None


_AGENT_PROBE = """
import glob, json, sys, ray, ray._private.utils as u
from sweep.ray_session import start_ray
before = u.get_dashboard_dependency_error
start_ray(None, 1, dashboard=sys.argv[1] == "on")
session = ray._private.worker._global_node.get_session_dir_path()
agents = []
for f in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        args = open(f, "rb").read().decode(errors="replace").split("\\0")
    except OSError:
        continue
    # The agent renames its process; the raylet's arguments hold the command that started it.
    if args[0].endswith("/raylet") and any(session in a for a in args):
        agents += [a for a in args if a.startswith("--dashboard_agent_command=")]
ray.shutdown()
print(json.dumps({"minimal": ["--minimal" in a for a in agents], "restored": u.get_dashboard_dependency_error is before}))
"""


def test_no_dashboard_starts_the_minimal_agent(tmp_path):
    """--no-dashboard: Ray's per-node agent starts without the dashboard's modules (the raylet
    waits for it; bench/sweep_overhead.py), and Ray's own check is left as it was."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    out = {}
    try:
        for mode in ("off", "on"):
            p = subprocess.run([sys.executable, "-c", _AGENT_PROBE, mode], cwd=root, env=env, capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            out[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out["off"] == {"minimal": [True], "restored": True}
    assert out["on"] == {"minimal": [False], "restored": True}  # the dashboard keeps the full agent


@pytest.mark.slow
def test_sweep_joins_a_live_ray_start_with_token_authentication(tmp_path):
    """A `ray start --head` on this machine (Ray >= 2.59: token authentication on) is joined by
    a plain `sweep.run`, no --address and no hand-set variables. The driver used to reach it
    without its token and was refused (InvalidAuthToken, exit 2): the token mode was set
    only for an explicit --address. Ray's files, token and ports are this test's own."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml

    from tests.test_cluster import RAY, _free_ports, _kill_tree

    temp = tempfile.mkdtemp(prefix="nr_rj_", dir="/tmp")  # short: Ray's socket paths have a length limit
    home = tmp_path / "home"
    home.mkdir()
    gcs, nm, om, client = _free_ports(4)
    # RAY_TMPDIR: the current-cluster file a driver looks for; HOME: the token `ray start` writes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_TMPDIR=temp, HOME=str(home))
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "name": "rj", "baseline": False, "search": {"algorithm": "grid"},
        "base": {"data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1}, "model": {"width": 4},
                 "regularizer": {"target": "none"}, "optim": {"lr": 0.05, "schedule": "constant"},
                 "train": {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 16}, "evaluation": {"suites": []}},
        "space": {"train.seed": {"grid": [0]}},
    }))
    try:
        # With a token at hand `ray start` turns authentication on (without one, Ray 2.60 leaves it off)
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
        head = subprocess.run([RAY, "start", "--head", "--port", str(gcs), "--node-manager-port", str(nm),
                               "--object-manager-port", str(om), "--ray-client-server-port", str(client),
                               "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                              env=env, check=True, capture_output=True, text=True, timeout=180)
        assert "Token authentication is enabled" in head.stdout + head.stderr
        assert (home / ".ray" / "auth_token").is_file()
        p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", str(tmp_path / "st"),
                            "--results", str(tmp_path / "res"), "--quiet", "--no-dashboard"],
                           cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-3000:]
        assert "Connecting to existing Ray cluster at address: " in out and f":{gcs}" in out
        assert "Started a local Ray instance" not in out
    finally:
        _kill_tree(lambda c: temp in c)
        shutil.rmtree(temp, ignore_errors=True)

"""sweep.run without --address: reuse a live `ray start` cluster, never a dead one's file."""

from __future__ import annotations

import socket

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

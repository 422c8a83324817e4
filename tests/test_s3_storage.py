"""--storage s3://... against a real S3 API: moto's server on 127.0.0.1, a `ray start` node
that has the AWS variables (its workers upload checkpoints), a driver killed with SIGKILL
and resumed from the bucket, and the Parquet tables built from the bucket's copy."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.test_multinode import RAY, _free_ports, _kill_tree
from tests.test_sweep_run import TINY_BASE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "nr-sweeps"


@pytest.fixture
def s3_env():
    """Standard AWS variables pointing at moto's server; the bucket exists."""
    moto_server = pytest.importorskip("moto.server")
    (port,) = _free_ports(1)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_AUTH"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true")
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield env, s3
    finally:
        server.stop()


@pytest.fixture
def node(s3_env):
    """One `ray start` node with the AWS variables, so that its workers reach the bucket."""
    env, _ = s3_env
    temp = tempfile.mkdtemp(prefix="nr_s3_", dir="/tmp")
    gcs, nm, om, client = _free_ports(4)
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(gcs), "--temp-dir", temp, "--include-dashboard",
                        "false", "--node-manager-port", str(nm), "--object-manager-port", str(om),
                        "--ray-client-server-port", str(client), "--num-cpus", "2", "--node-ip-address",
                        "127.0.0.1", "--disable-usage-stats"],
                       env={**env, "RAY_AUTH_MODE": "token"}, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{gcs}"
    finally:
        _kill_tree(lambda c: temp in c)
        shutil.rmtree(temp, ignore_errors=True)


def _saved_progress(s3) -> tuple[str, ...]:
    """Statuses in the newest experiment state in the bucket, a RUNNING trial counted only
    once it has reported two epochs (so its checkpoint is in that state)."""
    states = sorted(k for k in _keys(s3, "sweeps/s3/experiment_state-") if k.endswith(".json"))
    if not states:
        return ()
    data = json.loads(s3.get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())
    out = []
    for item in data.get("trial_data", []):
        status = json.loads(item[0]).get("status")
        last = json.loads(item[1]).get("last_result") or {}
        if status != "RUNNING" or int(last.get("training_iteration", 0)) >= 2:
            out.append(status)
    return tuple(sorted(out, key=lambda s: s != "TERMINATED"))


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_s3_storage_resume_after_driver_kill_and_tables(s3_env, node, tmp_path):
    env, s3 = s3_env
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 6, "max_steps_per_epoch": 12}}
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "name": "s3", "base": base, "baseline": False, "search": {"algorithm": "grid"},
        "space": {"regularizer.alpha": {"grid": [0.5, 2.0]}}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
    }))
    storage = f"s3://{BUCKET}/sweeps"
    cmd = [sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", storage, "--name", "s3",
           "--address", node, "--results", str(tmp_path / "results"), "--quiet"]
    env = {**env, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    # Kill the driver once the experiment state in the bucket (what --resume reads) shows one
    # trial finished and the other two epochs in (one trial at a time).
    deadline, killed = time.time() + 240, False
    while time.time() < deadline and proc.poll() is None:
        if _saved_progress(s3) == ("TERMINATED", "RUNNING"):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.3)
    proc.wait()
    log.close()
    assert killed, (tmp_path / "first.log").read_text()[-3000:]
    keys = _keys(s3, "sweeps/s3/")
    assert "sweeps/s3/sweep.yaml" in keys and any(k.endswith("checkpoint_last.pt") for k in keys)

    t0 = time.time()
    p = subprocess.run([*cmd[:-1], "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = tmp_path / "results" / "tables" / "trials" / "s3.parquet"
    assert f"table trials: {table}" in p.stdout  # the local path is printed

    import pandas as pd

    trials = pd.read_parquet(table)
    assert len(trials) == 2 and (trials["iterations"] == 7).all() and (trials["n_epochs"] == 6).all()
    assert sorted(trials["regularizer.alpha"]) == [0.5, 2.0]
    restored = []
    for tid in trials["trial_id"]:
        last = json.loads(s3.get_object(Bucket=BUCKET, Key=f"sweeps/s3/trial_{tid}/result.json")["Body"]
                          .read().decode().splitlines()[-1])
        restored.append(last["iterations_since_restore"] < last["training_iteration"] == 7)
    assert restored.count(True) == 1  # the interrupted trial continued from its checkpoint
    # The gather CLI reads the bucket too.
    g = subprocess.run([sys.executable, "-m", "analysis.gather", f"{storage}/s3", "--results", str(tmp_path / "again")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert g.returncode == 0 and (tmp_path / "again" / "tables" / "trials" / "s3.parquet").is_file(), g.stderr[-2000:]
    assert not list((tmp_path / "again" / "remote" / "s3").rglob("*.pt"))  # no checkpoints copied
    keys = _keys(s3, "sweeps/s3/")
    n_ckpt = sum(k.endswith("checkpoint_last.pt") for k in keys)
    print(f"\nS3: {len(keys)} objects under s3://{BUCKET}/sweeps/s3/, {n_ckpt} epoch checkpoints; "
          f"resume took {time.time() - t0:.0f} s")


def test_missing_bucket_refused_before_ray(s3_env, tmp_path):
    env, _ = s3_env
    p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", "alpha_th.yaml", "--storage",
                        "s3://no-such-bucket/x", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "--storage" in p.stderr and "no-such-bucket" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr

"""Beyond one machine, tested on this one (issue 13).

- Multi-node: a real 2-node Ray cluster, two `ray start` processes with token
  authentication, 1 CPU and 2 logical GPUs each (no physical GPU needed). One sweep joins
  it with --address: 4 trials at --gpus-per-trial 0.5 run at once on both nodes (on the
  CPU, as the sweep says with train.device: cpu; `auto` would fail at once without CUDA); then the second node is killed in the middle of its trials and
  the sweep still finishes every trial, retried from its last checkpoint on the head node.
- S3: --storage s3://... against a real S3 API, moto's server on 127.0.0.1, a `ray start`
  node that has the AWS variables (its workers upload checkpoints), a driver killed with
  SIGKILL and resumed from the bucket, and the Parquet tables built from the bucket's copy.
- The Optuna study in a database: created in the sweep folder, extended by --resume
  --num-samples.
"""

from __future__ import annotations

import json
import logging
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

from tests.test_sweep_run import (  # noqa: F401 -- ray_cluster: the shared Ray fixture
    TINY_BASE,
    ray_cluster,
    run_main,
    trial_dirs,
    write_space,
)

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
    # Logical GPUs only pack the trials: the CPU is asked for explicitly (issue 25).
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 8, "max_steps_per_epoch": 12, "device": "cpu"}}
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
    # RAY_DEDUP_LOGS=0: each trial's line is counted below, and Ray folds repeats into one.
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"},
                            stdout=log, stderr=log)

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
    assert (trials["device"] == "cpu").all()  # train.device: cpu, with a GPU share for packing
    # ... and each trial said why it runs on the CPU (Ray forwards the trials' output)
    assert out.count("train.device is cpu (the GPU share only packs trials)") >= 4, out[-3000:]
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


# --- S3 storage ------------------------------------------------------------

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


def _searcher_keys(s3) -> list[str]:
    """Tune's search algorithm state files in the sweep folder (the grid's BasicVariantGenerator)."""
    return [k for k in _keys(s3, "sweeps/s3/basic-variant-state-")]


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
    # trial finished and the other two epochs in (one trial at a time). Keep the searcher state
    # the bucket held while the first trial ran.
    deadline, killed, stale = time.time() + 240, False, {}
    while time.time() < deadline and proc.poll() is None:
        progress = _saved_progress(s3)
        if progress == ("RUNNING",) and not stale:
            stale = {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in _searcher_keys(s3)}
        if progress == ("TERMINATED", "RUNNING"):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.3)
    proc.wait()
    log.close()
    assert killed, (tmp_path / "first.log").read_text()[-3000:]
    keys = _keys(s3, "sweeps/s3/")
    assert "sweeps/s3/sweep.yaml" in keys and any(k.endswith("checkpoint_last.pt") for k in keys)
    # What a kill between Tune's two uploads leaves (and what made this test hang now and then):
    # trial states after the first trial finished, the searcher state from while it ran, which
    # still counts it as live (sweep/reconcile.py). Put there on purpose, so every run checks it.
    assert stale, "the searcher state was never seen while the first trial ran"
    for key, body in stale.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    t0 = time.time()
    p = subprocess.run([*cmd[:-1], "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
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


# --- the persistent study -------------------------------------------------------

BASE = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1}}


def _optuna_space(path: Path) -> Path:
    return write_space(path, base=BASE, space={"regularizer.alpha": {"loguniform": [0.1, 10]}},
                       search={"algorithm": "optuna", "seed": 0}, num_samples=2)


def _study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _searched(url: str, name: str) -> list:
    """The study's own trials, without the baseline's fixed one (user attribute "fixed")."""
    return [t for t in _study(url, name).trials if "fixed" not in t.user_attrs]


@pytest.mark.usefixtures("ray_cluster")
def test_study_persists_and_resume_extends_it(tmp_path, capsys):
    space = _optuna_space(tmp_path / "o.yaml")
    res = tmp_path / "res"
    assert run_main("--space", str(space), "--storage", str(res), "--name", "st") == 0
    url = f"sqlite:///{res / 'st' / 'study.db'}"
    first = [t for t in _study(url, "st").trials if "fixed" not in t.user_attrs]
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]
    # The baseline is in the study only as its fixed trial (the sampler never sees it).
    assert sum("fixed" in t.user_attrs for t in _study(url, "st").trials) == 1
    assert f"optuna-dashboard {url}" in capsys.readouterr().out

    assert run_main("--resume", "--name", "st", "--storage", str(res), "--num-samples", "4") == 0
    study = _study(url, "st")
    searched = [t for t in study.trials if "fixed" not in t.user_attrs]
    assert len(searched) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(study.trials) == 4 + 1  # the baseline's fixed trial, not added again on --resume
    # The first two configurations are kept, not drawn again.
    assert [t.params for t in searched[:2]] == [t.params for t in first]
    assert len(trial_dirs(res / "st")) == 4 + 1
    assert yaml.safe_load((res / "st" / "sweep.yaml").read_text())["num_samples"] == 4


@pytest.mark.usefixtures("ray_cluster")
def test_study_storage_url(tmp_path):
    space = _optuna_space(tmp_path / "o.yaml")
    db = tmp_path / "elsewhere" / "my.db"
    assert run_main("--space", str(space), "--storage", str(tmp_path / "res"), "--name", "u",
                    "--study-storage", f"sqlite:///{db}", "--num-samples", "1") == 0
    assert len(_searched(f"sqlite:///{db}", "u")) == 1
    assert not (tmp_path / "res" / "u" / "study.db").exists()
    # A new sweep of the same name in the same database would be seeded with that study's trials.
    assert run_main("--space", str(space), "--storage", str(tmp_path / "res2"), "--name", "u",
                    "--study-storage", f"sqlite:///{db}", "--num-samples", "1") == 2
    assert not (tmp_path / "res2").exists() and len(_searched(f"sqlite:///{db}", "u")) == 1


def test_flags_resume_cannot_honour(tmp_path, capsys):
    """Refused with exit 2 before Ray starts, the flag named."""
    res = tmp_path / "res"
    (res / "o").mkdir(parents=True)
    opt = yaml.safe_load(_optuna_space(tmp_path / "o.yaml").read_text())
    (res / "o" / "sweep.yaml").write_text(yaml.safe_dump(opt))
    grid = write_space(tmp_path / "g.yaml", base=BASE, space={"regularizer.alpha": {"grid": [1.0, 2.0]}},
                       search={"algorithm": "grid"})
    (res / "g").mkdir()
    (res / "g" / "sweep.yaml").write_text(grid.read_text())
    cases = [
        (["--resume", "--name", "o", "--num-samples", "1"], "--num-samples", "already has 2"),
        (["--resume", "--name", "g", "--num-samples", "5"], "--num-samples", "only an Optuna study"),
        (["--resume", "--name", "o", "--max-concurrent", "2"], "--max-concurrent", "keeps the settings"),
        (["--resume", "--name", "o", "--study-storage", "sqlite:///x.db"], "--study-storage", "keeps the settings"),
        (["--space", str(grid), "--study-storage", "sqlite:///x.db"], "--study-storage", "only an Optuna sweep"),
        (["--space", str(tmp_path / "o.yaml"), "--study-storage", "nosuchdb://x"], "--study-storage",
         "no usable SQLAlchemy URL"),
    ]
    for argv, flag, why in cases:
        assert run_main(*argv, "--storage", str(res), "--dry-run") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and why in err[0], (argv, err)

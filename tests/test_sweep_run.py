"""Sweeps through Ray Tune: tiny runs on one shared Ray instance (2 CPUs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY_BASE = {
    "data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1},
    "model": {"width": 4},
    "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1", "conv5"], "n_pairs": 4},
    "optim": {"lr": 0.05, "schedule": "constant"},
    "train": {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 64},
    "evaluation": {"suites": []},
}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for all sweep tests; subprocess drivers join it by address."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # "local": a new instance even where a `ray start` left its address file behind (a cluster
        # stopped without `ray stop`), which a bare ray.init would try to join and refuse num_cpus
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write_space(path: Path, **top) -> Path:
    raw = {"name": "t", "base": TINY_BASE, "resources": {"cpus_per_trial": 1}, **top}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.glob("trial_*") if p.is_dir())


def final_result(trial: Path) -> dict:
    lines = (trial / "result.json").read_text().splitlines()
    return json.loads(lines[-1])


def run_main(*args: str) -> int:
    from sweep.run import main

    return main([*args, "--quiet"])


def test_three_trial_sweep_reports_metrics(ray_cluster, tmp_path, capsys):
    base = {**TINY_BASE, "evaluation": {
        "suites": ["clean", "noise"], "noise_types": ["gaussian"],
        "noise_levels": {"gaussian": [0.0, 0.2]}, "noise_n_images": 16, "progress": False,
    }}
    space = write_space(
        tmp_path / "s.yaml", base=base,
        space={"regularizer.alpha": {"loguniform": [0.1, 10]}, "regularizer.th": {"uniform": [0.1, 0.9]}},
        search={"algorithm": "optuna", "seed": 1}, num_samples=3,
    )
    assert run_main("--space", str(space), "--storage", str(tmp_path / "res"), "--name", "three") == 0
    exp = tmp_path / "res" / "three"
    trials = trial_dirs(exp)
    assert len(trials) == 3 + 1 and (exp / "sweep.yaml").is_file()  # + the baseline, beside the study
    alphas, targets = set(), []
    for t in trials:
        r = final_result(t)
        targets.append(yaml.safe_load((t / "run" / "config.yaml").read_text())["regularizer"]["target"])
        if targets[-1] == "none":
            assert r["config"]["params"] == {"regularizer.target": "none"}
            continue
        assert r["training_iteration"] == 3  # 2 epochs + the evaluation report
        assert 0.0 <= r["best_val_acc"] <= 1.0 and r["evaluated"] is True
        assert 0.0 <= r["clean_acc"] <= 1.0 and "noise_acc_mean" in r
        assert (t / "evaluation" / "summary.json").is_file()
        assert len((t / "run" / "metrics.jsonl").read_text().splitlines()) == 2
        cfg = yaml.safe_load((t / "run" / "config.yaml").read_text())
        assert cfg["regularizer"]["alpha"] == pytest.approx(r["config"]["params"]["regularizer.alpha"])
        alphas.add(cfg["regularizer"]["alpha"])
        assert cfg["train"]["num_threads"] == 1  # torch threads = the trial's 1 CPU
    assert len(alphas) == 3 and sorted(targets).count("none") == 1
    out = capsys.readouterr().out
    assert "Best trial by best_val_acc" in out and "clean_acc" in out and str(exp) in out
    assert "Against the baseline (none)" in out


def test_grid_times_seeds_runs_exactly_those_trials(ray_cluster, tmp_path):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1}}
    space = write_space(
        tmp_path / "g.yaml", base=base,
        space={"regularizer.target": {"grid": ["none", "pixel_th"]}},
        search={"algorithm": "grid"}, seeds=[3, 5],
    )
    assert run_main("--space", str(space), "--storage", str(tmp_path), "--name", "grid") == 0
    seen = []
    for t in trial_dirs(tmp_path / "grid"):
        cfg = yaml.safe_load((t / "run" / "config.yaml").read_text())
        seen.append((cfg["regularizer"]["target"], cfg["train"]["seed"]))
    assert sorted(seen) == [("none", 3), ("none", 5), ("pixel_th", 3), ("pixel_th", 5)]


def test_oversized_request_fails_fast(ray_cluster, tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml")
    t0 = time.perf_counter()
    assert run_main("--space", str(space), "--storage", str(tmp_path), "--name", "big", "--cpus-per-trial", "3") == 2
    assert run_main("--space", str(space), "--storage", str(tmp_path), "--name", "gpu", "--gpus-per-trial", "0.5") == 2
    assert time.perf_counter() - t0 < 60
    err = capsys.readouterr().err
    assert "--cpus-per-trial" in err and "largest node has 2 CPU" in err
    assert "--gpus-per-trial" in err and "no GPU" in err
    assert not trial_dirs(tmp_path / "big") and not trial_dirs(tmp_path / "gpu")


def _sweep_cmd(space: Path, storage: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", str(storage),
            "--name", "killed", "--address", address, "--quiet", *extra]


def test_resume_after_kill_finishes_without_rerunning(ray_cluster, tmp_path):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 6, "max_steps_per_epoch": 12}}
    space = write_space(
        tmp_path / "r.yaml", base=base,
        space={"regularizer.alpha": {"grid": [0.5, 1.0, 2.0]}},
        search={"algorithm": "grid"}, resources={"cpus_per_trial": 1, "max_concurrent": 1},
    )
    exp = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_sweep_cmd(space, tmp_path, ray_cluster), cwd=ROOT, env=env, stdout=log, stderr=log)

    def finished(t: Path) -> bool:
        try:
            return final_result(t).get("evaluated") is not None
        except (FileNotFoundError, json.JSONDecodeError, IndexError):
            return False

    # Kill the driver once one trial is complete and another has checkpointed an epoch.
    deadline = time.time() + 240
    killed_state = None
    while time.time() < deadline and proc.poll() is None:
        trials = trial_dirs(exp)
        done = [t for t in trials if finished(t)]
        # A second epoch's checkpoint means the first is in the experiment state for sure.
        running = [t for t in trials if not finished(t) and list(t.glob("checkpoint_00000[1-9]"))]
        if done and running:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_state = {
                "done": {t.name: (t / "run" / "checkpoint_last.pt").stat().st_mtime_ns for t in done},
                "running": {t.name: (t / "run" / "metrics.jsonl").read_text().splitlines()[0] for t in running},
            }
            break
        time.sleep(0.1)
    log.close()
    assert killed_state is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert len(killed_state["done"]) < 4

    p = subprocess.run(_sweep_cmd(space, tmp_path, ray_cluster, "--resume"), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    trials = trial_dirs(exp)
    assert len(trials) == 3 + 1 and all(finished(t) for t in trials)  # + the added baseline
    for name, mtime in killed_state["done"].items():
        # Finished trials were not trained again.
        assert (exp / name / "run" / "checkpoint_last.pt").stat().st_mtime_ns == mtime
    for name, first_epoch in killed_state["running"].items():
        r = final_result(exp / name)
        # Continued from its checkpoint: the first epoch is the one trained before the kill.
        assert (exp / name / "run" / "metrics.jsonl").read_text().splitlines()[0] == first_epoch
        assert r["iterations_since_restore"] < r["training_iteration"] == 7
    regs = [yaml.safe_load((t / "run" / "config.yaml").read_text())["regularizer"] for t in trials]
    assert sorted(r["alpha"] for r in regs if r["target"] != "none") == [0.5, 1.0, 2.0]
    assert sum(r["target"] == "none" for r in regs) == 1


def test_console_is_compact(ray_cluster, tmp_path, capfd):
    """One line per trial start and end, no result boxes or per-epoch checkpoint lines."""
    from sweep.run import main

    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 2}}
    space = write_space(tmp_path / "c.yaml", base=base, space={"regularizer.alpha": {"grid": [0.5, 1.0]}},
                        search={"algorithm": "grid"})
    assert main(["--space", str(space), "--storage", str(tmp_path), "--name", "compact"]) == 0
    out = capfd.readouterr()
    lines = (out.out + out.err).splitlines()
    assert sum("] start " in x for x in lines) == 3 and sum("] done " in x for x in lines) == 3  # + the baseline
    assert not any("Checkpoint successfully created" in x for x in lines)
    assert not any(x.startswith("│ params/") or "Trial status" in x for x in lines)  # no per-trial boxes
    # Nor Tune's configuration box and its TensorBoard hint into Ray's session folder.
    assert not any("Configuration for experiment" in x or "To visualize your results" in x for x in lines)
    assert len(lines) < 80, "\n".join(lines)


# --- provenance, rerun and a failed start (issue 20) --------------------------------

# Columns a rerun on the same machine must reproduce bit for bit: everything a trial
# computes, not how long it took (epoch_s, images_per_s, pairs_per_s, train_wall_s, Ray's times).
DETERMINISTIC = ("best_val_acc", "val_acc", "train_acc", "train_loss", "sim_loss", "val_sim_loss",
                 "clean_acc", "noise_acc_mean", "noise_acc_gaussian_0.2", "evaluated_epoch", "precision",
                 "channels_last", "device")


def _by_seed_and_alpha(exp: Path) -> dict:
    out = {}
    for t in trial_dirs(exp):
        cfg = yaml.safe_load((t / "run" / "config.yaml").read_text())
        r = final_result(t)
        key = (cfg["regularizer"]["target"], cfg["regularizer"]["alpha"], cfg["train"]["seed"])
        out[key] = {k: r.get(k) for k in DETERMINISTIC}
    return out


def test_provenance_and_rerun_is_bit_identical(ray_cluster, tmp_path, capsys):
    import duckdb

    from analysis.sql import connect

    base = {**TINY_BASE, "evaluation": {
        "suites": ["clean", "noise"], "noise_types": ["gaussian"],
        "noise_levels": {"gaussian": [0.0, 0.2]}, "noise_n_images": 16, "progress": False,
    }}
    space = write_space(tmp_path / "p.yaml", base=base, space={"regularizer.alpha": {"grid": [0.5, 2.0]}},
                        search={"algorithm": "grid"}, seeds=[0, 1])
    res = tmp_path / "res"
    assert run_main("--space", str(space), "--storage", str(res), "--name", "orig") == 0
    rec = json.loads((res / "orig" / "provenance.json").read_text())
    from importlib.metadata import version

    assert rec["torch"] == version("torch") and rec["optuna"] == version("optuna") and rec["ray"] == version("ray")
    assert rec["git_commit"] and len(rec["git_commit"]) == 40 and isinstance(rec["git_dirty"], bool)
    assert rec["lock_sha256"] and rec["threads_per_trial"] == 1 and rec["rerun_of"] is None
    assert {"cpu_model", "cpu_avx2", "cpu_avx512f", "cpu_avx512_bf16", "cpu_amx_tile", "gpu_model",
            "hostname"} <= set(rec)

    assert run_main("--rerun", "orig", "--storage", str(res), "--name", "again") == 0
    assert "(a rerun of orig)" in capsys.readouterr().out
    assert json.loads((res / "again" / "provenance.json").read_text())["rerun_of"] == "orig"
    assert (res / "again" / "sweep.yaml").read_text() == (res / "orig" / "sweep.yaml").read_text()
    first, second = _by_seed_and_alpha(res / "orig"), _by_seed_and_alpha(res / "again")
    assert len(first) == 6 and first == second  # 2 alphas + baseline, x 2 seeds; every value equal

    con = connect(tmp_path)  # sweep.run gathered both into res/../tables
    rows = con.execute("SELECT sweep, torch, git_commit, cpu_avx2, precision, device_kind, n_trials, rerun_of "
                       "FROM provenance ORDER BY sweep").fetchall()
    assert [r[0] for r in rows] == ["again", "orig"] and rows[0][7] == "orig"
    assert all(r[1] == version("torch") and r[2] == rec["git_commit"] and r[5] == "cpu" and r[6] == 6 for r in rows)
    assert rows[0][4] in ("fp32", "bf16")
    # Joinable on sweep alone.
    n = con.execute("SELECT count(*) FROM trials JOIN provenance USING (sweep)").fetchone()[0]
    assert n == 12
    assert isinstance(con, duckdb.DuckDBPyConnection)

    # The reports show it; the same code and machine give no warning, a forged torch does.
    from analysis.report import main as report

    assert report(["orig", "again", "--results", str(tmp_path), "--out", str(tmp_path / "cmp"), "--html"]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Provenance" in md and "| torch |" in md and "differ in" not in md
    assert "<h2>Provenance</h2>" in (tmp_path / "cmp" / "report.html").read_text()
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "tables" / "provenance" / "again.parquet"
    t = pq.read_table(f)
    pq.write_table(t.set_column(t.schema.get_field_index("torch"), "torch", pa.array(["9.9.9"])), f)
    capsys.readouterr()
    assert report(["orig", "again", "--results", str(tmp_path), "--out", str(tmp_path / "cmp2")]) == 0
    err = capsys.readouterr().err
    assert "differ in torch" in err and "9.9.9" in err
    assert "differ in torch" in (tmp_path / "cmp2" / "comparison.md").read_text()


def test_rerun_flags_refused(tmp_path, capsys):
    (tmp_path / "orig").mkdir()
    cases = [(["--rerun", "orig", "--set", "train.epochs=2"], "--set"),
             (["--rerun", "orig", "--space", "alpha_th.yaml"], "--space"),
             (["--rerun", "../x"], "--rerun"),
             (["--rerun", "nosuch"], "--rerun")]
    for argv, flag in cases:
        assert run_main(*argv, "--storage", str(tmp_path), "--dry-run") == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], (argv, err)


# Any sampler that cannot be pickled, as optuna 5.1's NSGA-II could not, in a fresh process
# (the user's view: what it prints, its exit status, what it leaves).
_UNPICKLABLE = """
import sys, threading, optuna, sweep.tuner
def unpicklable(multi, seed, **kw):
    s = optuna.samplers.TPESampler(seed=seed)
    s._lock = threading.Lock()
    return s
sweep.tuner.make_sampler = unpicklable
from sweep.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_failed_start_leaves_nothing(ray_cluster, tmp_path):
    space = write_space(tmp_path / "o.yaml", base=BASE_ONE_EPOCH, space={"regularizer.alpha": {"loguniform": [0.1, 10]}},
                        search={"algorithm": "optuna", "seed": 0}, num_samples=2)
    argv = [sys.executable, "-c", _UNPICKLABLE, "--space", str(space), "--storage", str(tmp_path / "res"),
            "--name", "broken", "--address", ray_cluster, "--quiet"]
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    err = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "TPE sampler" in err[0] and "could not be saved" in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "res" / "broken").exists()  # nothing half-made for --resume to trip on

    p = subprocess.run([*argv, "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" in p.stderr and "cannot pickle" in p.stderr


BASE_ONE_EPOCH = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1}}


def test_baseline_only_digits_sweep_never_loads_the_regularization_set(ray_cluster, tmp_path):
    """digits has fewer training images than the default regularizer.n (5,000): a sweep
    without a regularized trial must neither load nor need that set (it died after Ray
    started, and on --resume)."""
    from neuroreg.config import RunConfig
    from neuroreg.errors import ConfigError
    from sweep.trainable import prepare_shared_data

    base = {"data": {"name": "digits", "image_size": 16}, "model": {"width": 4},
            "regularizer": {"target": "none"}, "train": {"epochs": 1, "max_steps_per_epoch": 2},
            "evaluation": {"suites": []}}
    cfg = RunConfig.from_dict(base)
    assert prepare_shared_data(cfg, needs_reg=False).reg is None
    with pytest.raises((ConfigError, ValueError)):
        prepare_shared_data(cfg, needs_reg=True)  # the set the old code loaded regardless
    space = write_space(tmp_path / "b.yaml", base=base, space={"model.width": {"grid": [4, 8]}},
                        search={"algorithm": "grid"})
    assert run_main("--space", str(space), "--storage", str(tmp_path / "res"), "--name", "b") == 0
    assert len(trial_dirs(tmp_path / "res" / "b")) == 2

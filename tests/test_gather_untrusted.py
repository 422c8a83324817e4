"""Issue 22, item 4: a gather cannot be forged or half-done.

A trial folder is untrusted: the keys gather sets (sweep, trial_id, status, arm, ...) win
over any record, config or result file, and each file that tries is reported; a malformed
trial (config with top-level sweep / status, training_iteration 1e400) never aborts the
gather; and a gather killed (SIGKILL) midway leaves one whole generation of tables readable,
never a mix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import store
from analysis.gather import gather_report
from analysis.query import load

PROJECT = Path(__file__).resolve().parents[1]


def _trial(exp: Path, tid: str, alpha: float, acc: float, *, config_extra: dict | None = None,
           result_extra: dict | None = None, record_extra: dict | None = None, iteration=2) -> Path:
    d = exp / f"trial_{tid}"
    (d / "run").mkdir(parents=True)
    (d / "evaluation").mkdir()
    params = {"params": {"regularizer.alpha": alpha}}
    (d / "params.json").write_text(json.dumps(params))
    lines = [{"trial_id": tid, "training_iteration": 1, "epoch": 1, "val_acc": acc, "time_total_s": 1.0},
             {"trial_id": tid, "training_iteration": iteration, "epoch": 1, "val_acc": acc, "evaluated": True,
              "clean_acc": acc, "time_total_s": 2.0, **(result_extra or {})}]
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = {"data": {"name": "digits"}, "regularizer": {"target": "pixel_th" if alpha else "none", "alpha": alpha},
           "train": {"seed": 0}, **(config_extra or {})}
    (d / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    recs = [{"noise": "gaussian", "level": lvl, "accuracy": acc - lvl, "n": 10, **(record_extra or {})}
            for lvl in (0.0, 0.1)]
    (d / "evaluation" / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "evaluation" / "clean.jsonl").write_text(json.dumps({"suite": "clean", "accuracy": acc, "n": 10}) + "\n")
    (d / "evaluation" / "summary.json").write_text(json.dumps({"clean_acc": acc}))
    return d


def _sweep(tmp: Path, name: str = "sw") -> Path:
    exp = tmp / "sweeps" / name
    exp.mkdir(parents=True)
    _trial(exp, "aaaaa_00000", 0.0, 0.9)
    _trial(exp, "aaaaa_00001", 1.0, 0.8)
    return exp


def _problems(problems, trial: str) -> list[str]:
    return [str(p) for p in problems if p.where == f"trial_{trial}"]


def test_forged_record_keys_are_overridden_and_reported(tmp_path):
    exp = _sweep(tmp_path)
    _trial(exp, "aaaaa_00002", 2.0, 0.7,
           record_extra={"sweep": "other", "trial_id": "zzz", "arm": "none", "baseline": True,
                         "regularizer.alpha": 99.0})
    root = tmp_path / "results"
    written, problems = gather_report(exp, root)
    noise = load("noise", root)
    assert set(noise["sweep"]) == {"sw"}  # no row of another sweep
    forged = noise[noise["trial_id"] == "aaaaa_00002"]
    assert len(forged) == 2 and set(noise["trial_id"]) == {"aaaaa_00000", "aaaaa_00001", "aaaaa_00002"}
    # The joined trial columns are the gathered ones, not the record's.
    assert (forged["regularizer.alpha"] == 2.0).all() and not forged["baseline"].any()
    assert set(forged["arm"]) != {"none"}
    said = _problems(problems, "aaaaa_00002")
    assert any("evaluation/noise.jsonl" in p and "'sweep'" in p and "'trial_id'" in p and "'arm'" in p
               for p in said), problems
    assert not _problems(problems, "aaaaa_00000")  # honest trials: nothing reported


def test_forged_result_and_summary_keys_are_reported(tmp_path):
    exp = _sweep(tmp_path)
    _trial(exp, "aaaaa_00002", 2.0, 0.7, result_extra={"sweep": "other", "round": 7, "status": "TERMINATED"})
    (exp / "trial_aaaaa_00002" / "evaluation" / "summary.json").write_text(json.dumps({"clean_acc": 0.7,
                                                                                        "arm_key": "f" * 12}))
    root = tmp_path / "results"
    _, problems = gather_report(exp, root)
    trials = load("trials", root).set_index("trial_id")
    assert set(trials["sweep"]) == {"sw"}
    assert "round" not in trials.columns or pd.isna(trials.loc["aaaaa_00002", "round"])
    assert trials.loc["aaaaa_00002", "arm_key"] != "f" * 12
    epochs = load("epochs", root)
    assert set(epochs["sweep"]) == {"sw"}
    said = _problems(problems, "aaaaa_00002")
    assert any("result.json" in p and "'round'" in p and "'sweep'" in p for p in said), problems
    assert any("evaluation/summary.json" in p and "'arm_key'" in p for p in said), problems


def test_config_with_sweep_and_status_keys_does_not_abort(tmp_path):
    exp = _sweep(tmp_path)
    _trial(exp, "aaaaa_00002", 2.0, 0.7, config_extra={"sweep": "forged", "status": "TERMINATED", "arm": "x"})
    root = tmp_path / "results"
    written, problems = gather_report(exp, root)
    assert "trials" in written
    trials = load("trials", root)
    assert not trials.columns.duplicated().any()
    assert len(trials) == 3 and set(trials["sweep"]) == {"sw"}
    row = trials.set_index("trial_id").loc["aaaaa_00002"]
    assert row["status"] == "UNKNOWN" and row["arm"].startswith("pixel_th")
    assert any("run/config.yaml" in p and "'status'" in p and "'sweep'" in p
               for p in _problems(problems, "aaaaa_00002")), problems


def test_training_iteration_1e400_does_not_abort(tmp_path):
    exp = _sweep(tmp_path)
    d = _trial(exp, "aaaaa_00002", 2.0, 0.7)
    text = (d / "result.json").read_text().replace('"training_iteration": 2', '"training_iteration": 1e400')
    (d / "result.json").write_text(text)
    root = tmp_path / "results"
    written, problems = gather_report(exp, root)
    trials = load("trials", root).set_index("trial_id")
    assert len(trials) == 3 and trials.loc["aaaaa_00001", "iterations"] == 2
    assert trials.loc["aaaaa_00002", "iterations"] == 0
    assert any("training_iteration" in p for p in _problems(problems, "aaaaa_00002")), problems


def test_cli_gathers_a_malformed_sweep_with_warnings(tmp_path):
    exp = _sweep(tmp_path)
    _trial(exp, "aaaaa_00002", 2.0, 0.7, config_extra={"sweep": "x"}, record_extra={"trial_id": "zzz"})
    p = subprocess.run([sys.executable, "-m", "analysis.gather", str(exp), "--results", str(tmp_path / "r")],
                       cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "trial_aaaaa_00002: run/config.yaml" in p.stderr and "evaluation/noise.jsonl" in p.stderr


# --- one generation --------------------------------------------------------------------


def _all_tables(root: Path) -> dict[str, pd.DataFrame]:
    return {t: load(t, root, join_trials=False).sort_values(["trial_id"] + (["level"] if t == "noise" else []))
            .reset_index(drop=True) for t in ("trials", "epochs", "clean", "noise")}


def _gather_killed(exp: Path, root: Path, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEUROREG_TEST_GATHER_KILL": point}
    return subprocess.run([sys.executable, "-m", "analysis.gather", str(exp), "--results", str(root)],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)


def _second_generation(exp: Path) -> None:
    """Every table changes: new accuracies, and a third trial."""
    for d in exp.iterdir():
        for f in [d / "result.json", d / "evaluation" / "noise.jsonl", d / "evaluation" / "clean.jsonl"]:
            f.write_text(f.read_text().replace('"accuracy": 0.', '"accuracy": 0.0').replace('"val_acc": 0.',
                                                                                           '"val_acc": 0.0'))
    _trial(exp, "aaaaa_00002", 2.0, 0.5)


@pytest.mark.parametrize("point", ["staged", "committed", "switched"])
def test_killed_gather_leaves_one_generation(tmp_path, point):
    exp = _sweep(tmp_path)
    root = tmp_path / "results"
    gather_report(exp, root)
    old = _all_tables(root)
    _second_generation(exp)
    p = _gather_killed(exp, root, point)
    assert p.returncode == -9, (p.returncode, p.stderr[-2000:])  # SIGKILL, at the chosen point
    now = _all_tables(root)
    if point == "staged":  # killed before the commit: the old generation, untouched
        assert store.sweeps(root) == ["sw"]
        for t in old:
            pd.testing.assert_frame_equal(now[t], old[t])
        assert list((root / "tables").rglob("*.next"))  # the staged files exist, and are ignored
    else:  # committed: every table reads as the new generation, none as the old
        for t in old:
            assert len(now[t]) > len(old[t]), t
            assert "aaaaa_00002" in set(now[t]["trial_id"]), t
        assert list((root / "tables" / ".pending").glob("*.json"))
    # The next gather finishes (or redoes) the switch and leaves nothing behind.
    gather_report(exp, root)
    final = _all_tables(root)
    assert all(len(final[t]) > len(old[t]) for t in old)
    assert not list((root / "tables").rglob("*.next")) and not list((root / "tables").rglob(".pending/*.json"))
    if point != "staged":
        for t in old:
            pd.testing.assert_frame_equal(final[t], now[t])


def test_a_removed_table_goes_with_the_switch(tmp_path):
    exp = _sweep(tmp_path)
    root = tmp_path / "results"
    gather_report(exp, root)
    assert store.files(root, "clean", ["sw"])
    for d in exp.iterdir():
        (d / "evaluation" / "clean.jsonl").unlink()
    p = _gather_killed(exp, root, "committed")
    assert p.returncode == -9
    assert store.files(root, "clean", ["sw"]) == [] and len(load("clean", root)) == 0  # new generation: no clean
    assert store.sweep_file(root, "clean", "sw").exists()  # the old file is still on disk, not read
    gather_report(exp, root)
    assert not store.sweep_file(root, "clean", "sw").exists()


def test_per_sweep_tables_load_without_trial_id(tmp_path):
    exp = _sweep(tmp_path)
    root = tmp_path / "results"
    gather_report(exp, root)
    prov = load("provenance", root)
    assert list(prov["sweep"]) == ["sw"] and "arm" not in prov.columns
    decisions = load("decisions", root)  # no sequential design here: no rows, and no error
    assert "trial_id" not in decisions.columns


def test_unknown_metric_names_are_refused_with_the_known_ones(tmp_path):
    from analysis.metric_names import known_metrics, metric_problem

    exp = _sweep(tmp_path)
    root = tmp_path / "results"
    gather_report(exp, root)
    known = known_metrics(root, ["sw"])
    assert {"clean_acc", "val_acc", "wall_time_s"} <= set(known)
    assert not {"regularizer.alpha", "train.seed", "trial_id", "arm"} & set(known)  # config fields, labels
    assert metric_problem(root, ["sw"], "clean_acc", {"val_acc": "max"}) is None
    bad = metric_problem(root, ["sw"], "no_such_metric")
    assert bad.startswith("--metric: 'no_such_metric'") and "clean_acc" in bad
    bad = metric_problem(root, ["sw"], None, {"clean_acc": "max", "nope": "max"})
    assert bad.startswith("--pareto: 'nope'") and "val_acc" in bad


@pytest.mark.parametrize("extra", [
    {"result_extra": {"epoch": 10**400}},                 # an int beyond float: that trial skipped
    {"result_extra": {"time_total_s": "abc", "epoch": "x"}},
    {"config_extra": {"train": {"seed": 10**30}}},       # beyond int64: stored as text
    {"config_extra": {"data": 5, "regularizer": {"target": ["a"], "alpha": "x"}}},
    {"record_extra": {"level": "high", "accuracy": None}},
], ids=["epoch-10e400", "strings", "seed-10e30", "config-shapes", "record-types"])
def test_malformed_values_never_abort_the_gather(tmp_path, extra):
    exp = _sweep(tmp_path)
    _trial(exp, "aaaaa_00002", 2.0, 0.7, **extra)
    written, problems = gather_report(exp, tmp_path / "r")
    trials = load("trials", tmp_path / "r")
    assert {"aaaaa_00000", "aaaaa_00001"} <= set(trials["trial_id"])  # the rest is gathered
    if "aaaaa_00002" not in set(trials["trial_id"]):
        assert any(p.skipped for p in problems if p.where == "trial_aaaaa_00002"), problems

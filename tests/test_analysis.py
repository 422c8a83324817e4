"""Tests of analysis/: gather, query, plots, statistics, importance, report.

The sweep folder is a fake written here in the exact layout Ray Tune 2.60 writes (checked
against a real ``tune.Tuner`` run: experiment_state-*.json with JSON-encoded trial states,
params.json, result.json JSON lines with Ray's bookkeeping keys, progress.csv,
checkpoint_00000N/, error.txt) plus what ``sweep.trainable`` adds (params nested as
``{"params": {dotted: value}, "__trial_index__": i}``, run/, evaluation/, sweep.yaml).
Its numbers are drawn at random; every expectation below is recomputed from the records
the fake wrote, independently of the code under test.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats as sps

from analysis import plots, store
from analysis.gather import collect, gather, gather_report
from analysis.importance import param_importances, pareto_front
from analysis.query import load, select, summarize
from analysis.query import main as query_main
from analysis.report import correct_median_distances
from analysis.report import main as report_main
from analysis.schema import REQUIRED, SCHEMA_VERSION
from analysis.stats import compare_to_baseline
from neuroreg.config import RunConfig

PROJECT = Path(__file__).resolve().parents[1]
NOISE = {"gaussian": [0.0, 0.04, 0.08], "uniform": [0.0, 0.1]}
EPSILONS = [0.0, 0.01, 0.02]
N_IMAGES = 4
EPOCHS = 3
LAYERS = ["conv1", "conv5"]


def _arms():
    """(target, alpha, th) of the fake sweep: a baseline and a 2 x 2 alpha x Th grid."""
    return [("none", 0.0, 0.8)] + [("pixel_th", a, th) for a in (2.0, 8.0) for th in (0.2, 0.8)]


def write_fake_sweep(storage: Path, name: str = "fake", seeds=(0, 1, 2), error_trial: bool = True,
                     rng_seed: int = 0) -> Path:
    """A finished sweep folder in Ray's layout; returns STORAGE/NAME."""
    rng = np.random.default_rng(rng_seed)
    exp = storage / name
    exp.mkdir(parents=True)
    spec = {
        "name": name, "description": "fake sweep for the analysis tests",
        "base": {"data": {"name": "digits"}, "model": {"name": "resnet18", "width": 8},
                 "regularizer": {"layers": LAYERS}, "train": {"epochs": EPOCHS}},
        "space": {"regularizer.target": {"grid": ["none", "pixel_th"]},
                  "regularizer.alpha": {"grid": [2.0, 8.0]}, "regularizer.th": {"grid": [0.2, 0.8]}},
        "search": {"algorithm": "grid", "metrics": ["clean_acc", "median_l2"], "modes": ["max", "max"]},
        "seeds": list(seeds), "metric": "best_val_acc", "mode": "max",
    }
    (exp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trial_data = []
    configs = [(arm, i) for arm in _arms() for i in range(len(seeds))]
    if error_trial:
        configs.append((("pixel_th", 8.0, 0.5), 0))
    for k, ((target, alpha, th), seed_index) in enumerate(configs):
        trial_id = f"a1b2c_{k:05d}"
        tag = f"{k}_alpha={alpha},th={th}"
        dirname = f"run_trial_{trial_id}_{tag}_2026-11-22_01-00-00"
        tdir = exp / dirname
        tdir.mkdir()
        params = {"params": {"regularizer.target": target, "regularizer.alpha": alpha, "regularizer.th": th},
                  "__trial_index__": seed_index}
        (tdir / "params.json").write_text(json.dumps(params, indent=2))
        cfg = RunConfig.from_dict({**spec["base"], "regularizer": {**spec["base"]["regularizer"], "target": target,
                                   "alpha": alpha, "th": th}, "train": {"epochs": EPOCHS, "seed": seeds[seed_index]}},
                                  validate=False).to_dict()
        failed = error_trial and k == len(configs) - 1
        # Robustness grows with alpha and with Th for the regularized arms.
        gain = 0.0 if target == "none" else 0.02 * alpha * th
        results, run_metrics, t_total = [], [], 0.0
        n_epochs = 1 if failed else EPOCHS
        weights = rng.dirichlet(np.ones(len(LAYERS)))
        for epoch in range(1, n_epochs + 1):
            m = {"epoch": epoch, "lr": 0.1, "train_loss": float(2.0 / epoch + rng.normal(0, 0.01)),
                 "sim_loss": 0.0 if target == "none" else float(rng.uniform(0.1, 1.0)),
                 "train_acc": float(0.5 + 0.1 * epoch), "val_acc": float(0.5 + 0.1 * epoch + rng.normal(0, 0.02)),
                 "images_per_s": 100.0, "pairs_per_s": 10.0, "epoch_s": 1.5}
            m["best_val_acc"] = max([r["val_acc"] for r in run_metrics] + [m["val_acc"]])
            for name_, w in zip(LAYERS, weights):
                m[f"layer_weight_{name_}"] = float(w)
            run_metrics.append({**m, "checkpoint": str(tdir / "run" / "checkpoint_last.pt")})
            t_total += 1.5
            results.append(_ray_result(m, trial_id, epoch, t_total, params))
        (tdir / "run").mkdir()
        (tdir / "run" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (tdir / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run_metrics))
        (tdir / "run" / "checkpoint_best.pt").write_bytes(b"\0" * 16)
        (tdir / f"checkpoint_{n_epochs - 1:06d}").mkdir()
        if failed:
            (tdir / "error.txt").write_text(
                "Failure # 1 (occurred at 2026-11-22_01-00-05)\n\x1b[36mray::ImplicitFunc.train()\x1b[39m "
                "(pid=1, ip=127.0.0.1)\n  File \"x.py\", line 1, in f\nRuntimeError: CUDA out of memory (fake)\n")
            status = "ERROR"
        else:
            ev = tdir / "evaluation"
            ev.mkdir()
            clean = float(np.clip(0.9 - 0.01 * alpha + rng.normal(0, 0.01), 0, 1))
            noise = [{"noise": kind, "level": lv, "accuracy": float(np.clip(clean - lv * (3 - 10 * gain)
                      + rng.normal(0, 0.01), 0, 1)), "n": 100} for kind, lvls in NOISE.items() for lv in lvls]
            adv = []
            for norm, scale in (("l2", 0.3), ("linf", 0.01)):
                for img in range(N_IMAGES):
                    d = 0.0 if img == 0 else float(rng.gamma(2.0, scale * (1 + gain)))
                    attack = "misclassified" if img == 0 else "ddn+bb" if norm == "l2" else "fmn+bb"
                    adv.append({"norm": norm, "image": img, "label": img % 3, "distance": d, "attack": attack})
            adv[N_IMAGES - 1]["distance"] = math.inf  # one unbroken l2 image
            adv_summary = []
            for norm in ("l2", "linf"):
                ds = np.array([a["distance"] for a in adv if a["norm"] == norm])
                adv_summary.append({"norm": norm, "median": float(np.median(ds)), "q25": float(np.quantile(ds, 0.25)),
                                    "q75": float(np.quantile(ds, 0.75)), "success_rate": float(np.isfinite(ds).mean()),
                                    "n": N_IMAGES, "n_unbroken": int((~np.isfinite(ds)).sum()), "seconds": 1.0})
            transfer = [{"epsilon": e, "accuracy": float(clean - e * (10 - 50 * gain) + rng.normal(0, 0.005)),
                         "surrogate": "baseline.pt"} for e in EPSILONS]
            corruptions = [{"corruption": c, "severity": s, "frequency": f, "accuracy": float(rng.uniform(0.3, 0.9))}
                           for c, f in (("gaussian_noise", "high"), ("contrast", "low")) for s in (1, 2)]
            frequency = [{"kind": "spectrum", "norm": "l2", "bin": b, "f": 0.01 + 0.02 * b, "f_upper": 0.02 * (b + 1),
                          "power": float(rng.uniform()), "cumulative": (b + 1) / 3} for b in range(3)]
            frequency += [{"kind": "hybrid", "c": c, "p_low": float(rng.uniform()), "p_high": float(rng.uniform()),
                           "n": 10} for c in (0.2, 0.5)]
            frequency.append({"kind": "summary", "metric": "f_rev", "f_rev": 0.3, "value": 0.3})
            f05 = float(rng.uniform(0.05, 0.2))
            frequency.append({"kind": "summary", "metric": "f05", "norm": "l2", "f05": f05, "value": f05, "n": 4})
            for fname, recs in (("clean", [{"suite": "clean", "accuracy": clean, "n": 100}]), ("noise", noise),
                                ("adversarial", adv), ("adversarial_summary", adv_summary), ("transfer", transfer),
                                ("corruptions", corruptions), ("frequency", frequency)):
                (ev / f"{fname}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            summary = {"clean_acc": clean, "noise_acc_mean": float(np.mean([r["accuracy"] for r in noise
                                                                            if r["level"] > 0])),
                       "median_l2": adv_summary[0]["median"], "median_linf": adv_summary[1]["median"]}
            for r in noise:
                summary[f"noise_acc_{r['noise']}_{r['level']:g}"] = r["accuracy"]
            (ev / "summary.json").write_text(json.dumps(summary))
            final = {**{k: v for k, v in run_metrics[-1].items() if k != "checkpoint"},
                     "train_wall_s": t_total, **summary, "evaluated": True}
            t_total += 2.0
            results.append(_ray_result(final, trial_id, EPOCHS + 1, t_total, params))
            status = "TERMINATED"
        (tdir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
        _progress_csv(tdir / "progress.csv", results)
        state = {"stub": False, "trainable_name": "run_trial", "trial_id": trial_id,
                 "storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": "8005"}, "config": params,
                 "experiment_tag": tag, "status": status, "relative_logdir": dirname, "results": "80054e2e"}
        runtime = {"start_time": "1795309858.0", "num_failures": str(int(failed)),
                   "error_filename": "error.txt" if failed else "None"}
        trial_data.append([json.dumps(state, indent=2), json.dumps(runtime)])
    (exp / "experiment_state-2026-11-22_01-00-00.json").write_text(
        json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {"start_time": 0}}))
    return exp


def _ray_result(metrics, trial_id, iteration, t_total, params):
    return {**metrics, "timestamp": 1795309858, "checkpoint_dir_name": f"checkpoint_{iteration - 1:06d}",
            "should_checkpoint": True, "done": False, "training_iteration": iteration, "trial_id": trial_id,
            "date": "2026-11-22_01-00-00", "time_this_iter_s": 1.5, "time_total_s": t_total, "pid": 1,
            "hostname": "vm", "node_ip": "127.0.0.1", "config": params, "time_since_restore": t_total,
            "iterations_since_restore": iteration}


def _progress_csv(path, results):
    keys = list(dict.fromkeys(k for r in results for k in r if k != "config"))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in results:
            w.writerow({k: r.get(k) for k in keys})


def raw_records(exp: Path, name: str) -> pd.DataFrame:
    """Records of one evaluation file over all trial folders, read with plain json + params.json."""
    rows = []
    for tdir in sorted(p for p in exp.iterdir() if (p / "params.json").exists()):
        f = tdir / "evaluation" / f"{name}.jsonl"
        if not f.exists():
            continue
        params = json.loads((tdir / "params.json").read_text())["params"]
        cfg = yaml.safe_load((tdir / "run" / "config.yaml").read_text())
        for line in f.read_text().splitlines():
            rows.append({**json.loads(line), **params, "seed": cfg["train"]["seed"], "dir": tdir.name})
    return pd.DataFrame(rows)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="module")
def root(sweep_dir, tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("results")
    gather(sweep_dir, r)
    return r


N_OK = 15  # 5 arms x 3 seeds
N_TRIALS = N_OK + 1  # + the errored trial


# --- gather ----------------------------------------------------------------------------


def test_gather_tables_have_documented_schema_and_row_counts(root, sweep_dir):
    expected_rows = {
        "trials": N_TRIALS,
        "epochs": N_OK * EPOCHS + 1,
        "clean": N_OK,
        "noise": N_OK * sum(len(v) for v in NOISE.values()),
        "adversarial": N_OK * 2 * N_IMAGES,
        "adversarial_summary": N_OK * 2,
        "transfer": N_OK * len(EPSILONS),
        "corruptions": N_OK * 4,
        "frequency": N_OK * 7,
    }
    for table, n in expected_rows.items():
        path = store.sweep_file(root, table, "fake")
        assert path.exists(), table
        meta = pq.read_schema(path).metadata
        assert int(meta[b"neuroreg.schema_version"]) == SCHEMA_VERSION
        assert meta[b"neuroreg.table"].decode() == table
        df = pq.read_table(path).to_pandas()
        assert len(df) == n, table
        assert list(df.columns[: len(REQUIRED[table])]) == list(REQUIRED[table]), table
        assert set(df["sweep"]) == {"fake"}
    assert not store.sweep_file(root, "boundary", "fake").exists()  # suite did not run: no table

    trials = pq.read_table(store.sweep_file(root, "trials", "fake")).to_pandas()
    # Config columns use the dotted RunConfig names; the trainer's config.yaml is complete.
    for col in ("regularizer.alpha", "regularizer.th", "regularizer.target", "train.seed", "model.width",
                "data.name", "regularizer.layers", "optim.lr"):
        assert col in trials.columns, col
    assert set(trials["regularizer.layers"]) == {"conv1,conv5"}
    assert sorted(trials["train.seed"].unique()) == [0, 1, 2]
    err = trials[trials["status"] == "ERROR"]
    assert len(err) == 1 and err["error"].iloc[0] == "RuntimeError: CUDA out of memory (fake)"
    assert (trials["status"] == "TERMINATED").sum() == N_OK
    # Arms: th collapses for the baseline; the errored alpha=8, th=0.5 trial is an arm of its own.
    assert set(trials["arm"]) == {"none", "pixel_th alpha=2 th=0.2", "pixel_th alpha=2 th=0.8",
                                  "pixel_th alpha=8 th=0.2", "pixel_th alpha=8 th=0.8", "pixel_th alpha=8 th=0.5"}
    assert trials.groupby("arm").size()["none"] == 3
    # Final metrics and layer weights from the last report / summary.json, wall time from Ray.
    raw = raw_records(sweep_dir, "clean")
    t = trials.set_index("trial_id")
    for _, r in raw.iterrows():
        tid = json.loads((sweep_dir / r["dir"] / "result.json").read_text().splitlines()[0])["trial_id"]
        assert t.at[tid, "clean_acc"] == pytest.approx(r["accuracy"])
        assert t.at[tid, "wall_time_s"] == pytest.approx(EPOCHS * 1.5 + 2.0)
        assert t.at[tid, "n_epochs"] == EPOCHS
        assert t.at[tid, "checkpoint"].endswith("run/checkpoint_best.pt")
    lw = trials[["layer_weight_conv1", "layer_weight_conv5"]].sum(axis=1)
    assert np.allclose(lw, 1.0)
    epochs = pq.read_table(store.sweep_file(root, "epochs", "fake")).to_pandas()
    assert "clean_acc" not in epochs.columns  # evaluation metrics stay in trials
    assert epochs.groupby("trial_id")["epoch"].apply(list).map(len).max() == EPOCHS
    assert {"val_acc", "train_loss", "layer_weight_conv1", "time_total_s"} <= set(epochs.columns)


def test_gather_is_idempotent_and_accumulates_sweeps(sweep_dir, tmp_path):
    r = tmp_path / "results"
    first = gather(sweep_dir, r)
    snap = {t: p.read_bytes() for t, p in first.items()}
    second = gather(sweep_dir, r)
    assert set(first) == set(second)
    for t, p in second.items():
        assert p.read_bytes() == snap[t], t  # byte-identical files
    # A second sweep accumulates next to the first.
    other = write_fake_sweep(tmp_path / "storage2", name="other", seeds=(5,), error_trial=False, rng_seed=1)
    gather(other, r)
    trials = load("trials", r)
    assert sorted(store.sweeps(r)) == ["fake", "other"]
    assert trials.groupby("sweep").size().to_dict() == {"fake": N_TRIALS, "other": 5}
    # Re-gathering a changed sweep replaces its rows only.
    shutil.rmtree(next(p for p in other.iterdir() if p.name.startswith("run_trial_a1b2c_00000")))
    gather(other, r)
    trials = load("trials", r)
    assert trials.groupby("sweep").size().to_dict() == {"fake": N_TRIALS, "other": 4}
    assert len(load("noise", r, ["other"])) == 4 * 5
    assert not list((r / "tables").rglob("*.tmp"))  # no temporary files left behind


def test_corrupt_and_half_written_trials_are_reported_and_skipped(sweep_dir, tmp_path):
    exp = tmp_path / "storage" / "broken"
    shutil.copytree(sweep_dir, exp)
    dirs = sorted(p for p in exp.iterdir() if p.is_dir())
    (dirs[0] / "params.json").write_text('{"params": {"regularizer.alpha": 2')  # truncated
    with open(dirs[1] / "result.json", "a") as f:
        f.write('{"epoch": 4, "val_acc": 0.')  # half-written last line of a running trial
    shutil.rmtree(dirs[2])  # listed in the experiment state, folder gone
    (dirs[3] / "evaluation" / "noise.jsonl").write_text("not json\n")
    written, problems = gather_report(exp, tmp_path / "res")
    text = "\n".join(map(str, problems))
    assert f"{dirs[0].name}: params.json unreadable" in text
    assert any(p.where == dirs[0].name and p.skipped for p in problems)
    assert any(p.where == dirs[1].name and not p.skipped and "1 unreadable line" in p.message for p in problems)
    assert any(p.where == dirs[2].name and p.skipped for p in problems)
    assert any(p.where == dirs[3].name and "noise.jsonl" in p.message for p in problems)
    trials = load("trials", tmp_path / "res")
    assert len(trials) == N_TRIALS - 2
    assert dirs[1].name in set(Path(d).name for d in trials["trial_dir"])  # kept, bad line dropped
    noise = load("noise", tmp_path / "res")
    assert len(noise) == (N_OK - 3) * 5  # 2 trials skipped, one noise file unreadable
    # The CLI reports the problems on stderr and still succeeds.
    proc = subprocess.run([sys.executable, "-m", "analysis.gather", str(exp), "--results", str(tmp_path / "res2")],
                          capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "params.json unreadable" in proc.stderr and "trials" in proc.stdout


def test_gather_reads_a_real_ray_folder_without_unpickling(sweep_dir, tmp_path):
    """Statuses come from the JSON experiment state; without it, from the files."""
    exp = tmp_path / "nostate"
    shutil.copytree(sweep_dir, exp)
    for f in exp.glob("experiment_state-*.json"):
        f.unlink()
    g = collect(exp)
    st = g.tables["trials"]["status"].value_counts().to_dict()
    assert st == {"UNKNOWN": N_OK, "ERROR": 1}
    assert g.spec["metric"] == "best_val_acc"


# --- query -----------------------------------------------------------------------------


def test_query_matches_hand_computed_pandas(root, sweep_dir):
    raw = raw_records(sweep_dir, "noise")
    sel = raw[(raw["noise"] == "gaussian") & np.isclose(raw["level"], 0.08)
              & (raw["regularizer.target"] == "pixel_th")]
    want = sel.groupby(["regularizer.alpha", "regularizer.th"])["accuracy"].agg(["mean", "sem", "count"])

    df = select(load("noise", root), ["noise=gaussian", "level=0.08", "regularizer.target == 'pixel_th'"])
    got = summarize(df, "accuracy", by=["alpha", "th"], aggs=["mean", "sem", "count"])
    got = got.set_index(["regularizer.alpha", "regularizer.th"])
    assert list(got.columns) == ["mean", "sem", "count"]
    assert got.index.tolist() == want.index.tolist()
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["sem"], want["sem"], rtol=1e-12)
    assert got["count"].tolist() == [3, 3, 3, 3]

    # key=a,b; aliases in expressions; several value columns; no group.
    d2 = select(load("adversarial_summary", root), ["norm=l2", "alpha > 1 and th == 0.8"])
    raw_a = raw_records(sweep_dir, "adversarial_summary")
    ra = raw_a[(raw_a["norm"] == "l2") & (raw_a["regularizer.alpha"] > 1) & (raw_a["regularizer.th"] == 0.8)]
    s = summarize(d2, ["median", "success_rate"], aggs=["median", "std"])
    assert s["median_median"].iloc[0] == pytest.approx(ra["median"].median())
    assert s["success_rate_std"].iloc[0] == pytest.approx(ra["success_rate"].std())
    both = select(load("trials", root), ["target=none,pixel_th", "status=TERMINATED"])
    assert len(both) == N_OK

    with pytest.raises(KeyError, match="not found"):
        select(load("noise", root), ["nosuchcolumn=1"])


def test_query_cli_prints_and_writes(root, tmp_path, capsys):
    out = tmp_path / "q.csv"
    rc = query_main(["noise", "--results", str(root), "--noise", "gaussian", "--level", "0.08",
                     "--by", "arm", "--value", "accuracy", "--agg", "mean,sem,count", "--out", str(out)])
    assert rc == 0
    csv_df = pd.read_csv(out)
    api = summarize(select(load("noise", root), ["noise=gaussian", "level=0.08"]), "accuracy", ["arm"])
    np.testing.assert_allclose(csv_df["mean"], api["mean"])
    assert csv_df["arm"].tolist() == api["arm"].tolist()
    out_pq = tmp_path / "q.parquet"
    assert query_main(["trials", "--results", str(root), "--status", "ERROR", "--columns",
                       "trial_id,error", "--out", str(out_pq)]) == 0
    assert pd.read_parquet(out_pq)["error"].str.contains("CUDA").all()
    capsys.readouterr()
    assert query_main(["adversarial_summary", "--results", str(root), "--by", "arm,norm", "--value", "median"]) == 0
    printed = capsys.readouterr().out
    assert "pixel_th alpha=8 th=0.8" in printed and "linf" in printed
    assert query_main(["noise", "--results", str(root), "--by", "nosuch", "--value", "accuracy"]) == 2
    assert query_main(["noise", "--results", str(root), "--sweep", "nope"]) == 2


def test_load_unifies_sweeps_with_different_columns_and_types(tmp_path):
    a = pd.DataFrame({"sweep": ["a", "a"], "trial_id": ["1", "2"], "accuracy": [1, 0], "only_a": [1.0, 2.0]})
    b = pd.DataFrame({"sweep": ["b"], "trial_id": ["1"], "accuracy": [0.5], "only_b": ["x"]})
    for name, df in (("a", a), ("b", b)):
        store.write_atomic(store.to_arrow(df, "clean", name), store.sweep_file(tmp_path, "clean", name))
    df = load("clean", tmp_path, join_trials=False)
    assert df["accuracy"].tolist() == [1.0, 0.0, 0.5]  # int64 in one sweep, double in the other
    assert df["only_a"].isna().tolist() == [False, False, True] and df["only_b"].tolist()[2] == "x"
    assert load("clean", tmp_path, ["b"], join_trials=False)["trial_id"].tolist() == ["1"]
    # A file of another schema version is refused with the fix in the message.
    old = store.to_arrow(a, "clean", "old")
    old = old.replace_schema_metadata({**old.schema.metadata, b"neuroreg.schema_version": b"0"})
    store.write_atomic(old, store.sweep_file(tmp_path, "clean", "old"))
    with pytest.raises(ValueError, match="re-gather"):
        load("clean", tmp_path, join_trials=False)


# --- statistics, importance, Pareto -------------------------------------------------------


def test_baseline_comparison_is_welch_over_seeds(root):
    trials = load("trials", root)
    done = trials[trials["status"] == "TERMINATED"]
    comp = compare_to_baseline(done, ["noise_acc_mean"])
    assert sorted(comp["arm"]) == sorted(a for a in done["arm"].unique() if a != "none")
    row = comp[comp["arm"] == "pixel_th alpha=8 th=0.8"].iloc[0]
    a = done.loc[done["arm"] == "pixel_th alpha=8 th=0.8", "noise_acc_mean"].to_numpy()
    b = done.loc[done["arm"] == "none", "noise_acc_mean"].to_numpy()
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert row["diff"] == pytest.approx(a.mean() - b.mean())
    assert row["sem_diff"] == pytest.approx(math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3))
    assert row["t"] == pytest.approx(ref.statistic) and row["p"] == pytest.approx(ref.pvalue)
    assert row["t"] == pytest.approx(row["diff"] / row["sem_diff"])
    assert row["diff"] > 0  # the fake makes alpha * Th robust


def test_param_importance_finds_the_driving_parameter():
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"x": rng.uniform(0, 1, n), "y": rng.uniform(0, 1, n),
                       "kind": rng.choice(["a", "b"], n)})
    df["score"] = 5 * df["x"] + 0.01 * df["y"] + rng.normal(0, 0.01, n)
    imp = param_importances(df, ["x", "y", "kind"], "score")
    assert imp.index[0] == "x" and imp["x"] > 0.8
    assert imp.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need >= 2 trials"):
        param_importances(df.iloc[:1], ["x"], "score")


def test_pareto_front_is_the_non_dominated_set():
    rng = np.random.default_rng(1)
    pts = pd.DataFrame({"acc": rng.uniform(size=40), "dist": rng.uniform(size=40), "name": range(40)})
    front = pareto_front(pts, {"acc": "max", "dist": "min"})
    brute = [i for i in range(40) if not any(
        (pts.acc[j] >= pts.acc[i]) and (pts.dist[j] <= pts.dist[i])
        and (pts.acc[j] > pts.acc[i] or pts.dist[j] < pts.dist[i]) for j in range(40))]
    assert sorted(front["name"]) == brute
    assert len(brute) >= 2


# --- plots and report -------------------------------------------------------------------------


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.std() > 0.01  # something was drawn


def test_plots_are_written(root, tmp_path):
    trials = load("trials", root)
    done = trials[trials["status"] == "TERMINATED"]
    active = done[~done["baseline"]]
    made = [
        plots.noise_accuracy(load("noise", root), tmp_path / "noise"),
        plots.median_distance(load("adversarial_summary", root), tmp_path / "dist"),
        plots.heatmap(active, "noise_acc_mean", tmp_path / "heat"),
        plots.parallel_coordinates(done, ["regularizer.target", "regularizer.alpha", "regularizer.th"],
                                   "best_val_acc", tmp_path / "pc"),
        plots.layer_weights(active, tmp_path / "lw"),
        plots.transfer_accuracy(load("transfer", root), tmp_path / "transfer"),
    ]
    for paths in made:
        assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
        _png_ok(paths[0])
        assert paths[1].read_text().lstrip().startswith("<?xml") and "<svg" in paths[1].read_text()
        assert paths[2].read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="lacks columns"):
        plots.heatmap(done, "nosuchmetric", tmp_path / "x")


def test_report_cli_gathers_a_sweep_folder_prints_tables_and_writes_markdown(sweep_dir, tmp_path, capsys):
    exp = tmp_path / "sweeps" / "fake"
    shutil.copytree(sweep_dir, exp)
    assert report_main([str(exp)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "tables" / "trials" / "fake.parquet").exists()  # gathered into the results root
    out = tmp_path / "reports" / "fake"
    assert f"report: {out / 'report.md'}" in printed
    # The printed tables are the Parquet numbers: mean over seeds of gaussian 0.08 for the baseline.
    assert "Noise accuracy (mean ± SEM over seeds)" in printed and "median linf" in printed
    raw = raw_records(sweep_dir, "noise")
    base = raw[(raw["regularizer.target"] == "none") & (raw["noise"] == "gaussian") & np.isclose(raw["level"], 0.08)]
    assert any(line.strip().startswith("none") and f"{base['accuracy'].mean():.3g} ± {base['accuracy'].sem():.2g}" in line
               for line in printed.splitlines())

    text = (out / "report.md").read_text()
    for heading in ("## Trials", "## Best configuration", "## Against the baseline", "## Random noise",
                    "## Minimal adversarial perturbations", "## Transferred FGSM", "## Parameter importance",
                    "## Pareto front", "### Errored trials", "## Frequency analysis"):
        assert heading in text, heading
    assert "RuntimeError: CUDA out of memory (fake)" in text
    trials = load("trials", tmp_path)
    done = trials[trials["status"] == "TERMINATED"]
    best_arm = done.groupby("arm")["best_val_acc"].mean().idxmax()
    assert f"**{best_arm}**" in text
    for link in ("plots/noise_accuracy.png", "plots/median_distance.png", "plots/heatmap_alpha_th.png",
                 "plots/parallel_coordinates.png", "plots/layer_weights.png", "plots/transfer.png",
                 "plots/pareto.png", "plots/radial_l2.png", "plots/hybrid.png", "plots/distance_f05_l2.png"):
        assert f"]({link})" in text, link
        _png_ok(out / link)
    assert "not drawn" not in text, [ln for ln in text.splitlines() if "not drawn" in ln]
    # fANOVA over the 4 regularized configurations (the baseline's alpha and Th do not apply): too few.
    assert ("_Not computed: 4 configurations × 3 seeds, fewer than 8 distinct configurations (fANOVA's "
            in text)
    best = text.split("## Best configuration")[1].split("## ")[0]
    if best_arm == "none":  # the baseline uses neither alpha nor Th
        assert "| regularizer.alpha | – |" in best and "| regularizer.th | – |" in best
    else:
        assert "| regularizer.th | – |" not in best
    assert "| median_l2_correct |" in text and "| median_linf_correct |" in text


def test_correct_median_leaves_out_clean_errors_and_keeps_unbroken_images():
    rows = [("a", "l2", 0.0, "misclassified"), ("a", "l2", 0.0, "misclassified"), ("a", "l2", 1.0, "ddn"),
            ("a", "l2", 2.0, "bb_l2"), ("a", "l2", 3.0, "ddn"),
            ("b", "l2", 0.0, "misclassified"), ("b", "l2", 1.0, "ddn"), ("b", "l2", 2.0, "ddn"),
            ("b", "l2", math.inf, "none"), ("b", "linf", 0.5, "fmn_linf")]
    adv = pd.DataFrame(rows, columns=["trial_id", "norm", "distance", "attack"]).assign(sweep="s")
    out = correct_median_distances(adv).set_index("trial_id")
    # The all-image median of trial a is 1.0 (two zeros); over its correct images it is 2.0.
    assert float(np.median(adv[(adv.trial_id == "a")].distance)) == 1.0
    assert out.loc["a", "median_l2_correct"] == 2.0
    assert out.loc["b", "median_l2_correct"] == 2.0  # the unbroken image counts as +inf, not dropped
    assert out.loc["b", "median_linf_correct"] == 0.5 and math.isnan(out.loc["a", "median_linf_correct"])


# --- a real sweep ------------------------------------------------------------------------------

REAL_SPACE = {
    "name": "real",
    "base": {
        "data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1},
        "model": {"width": 4},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1", "conv5"], "n_pairs": 4},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 64},
        "evaluation": {"suites": ["clean", "noise"], "noise_types": ["gaussian"],
                       "noise_levels": {"gaussian": [0.0, 0.2]}, "noise_n_images": 16, "progress": False},
    },
    "space": {"regularizer.target": {"grid": ["none", "pixel_th"]}},
    "search": {"algorithm": "grid"},
    "resources": {"cpus_per_trial": 1},
}


@pytest.mark.slow
def test_gathers_a_real_tiny_sweep(tmp_path, capsys):
    """sweep.run (Ray Tune) -> its closing gather -> tables, idempotent re-gather, query, report."""
    space = tmp_path / "real.yaml"
    space.write_text(yaml.safe_dump(REAL_SPACE, sort_keys=False))
    storage = tmp_path / "sweeps"
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", str(storage), "--name", "real",
         "--num-cpus", "1", "--no-dashboard", "--quiet"],
        capture_output=True, text=True, cwd=PROJECT, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = storage / "real"
    first = {t: store.sweep_file(tmp_path, t, "real") for t in ("trials", "epochs", "clean", "noise")}
    for t, p in first.items():
        assert p.exists(), f"sweep.run did not gather {t} into {tmp_path}/tables"
    snap = {t: p.read_bytes() for t, p in first.items()}

    written = gather(exp, tmp_path)  # the same root sweep.run used: results replaced in place
    for t, p in first.items():
        assert written[t] == p and p.read_bytes() == snap[t], t

    trials = load("trials", tmp_path)
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"}
    assert set(trials["arm"]) == {"none", "pixel_th"}
    assert set(trials["regularizer.target"]) == {"none", "pixel_th"}
    assert (trials["n_epochs"] == 2).all() and (trials["iterations"] == 3).all()
    assert trials["checkpoint"].map(lambda p: Path(p).is_file()).all()
    # issue 11: sweep-independent keys, the evaluated checkpoint's layer weights and collapse
    assert trials["arm_key"].nunique() == 2 and trials["condition_key"].nunique() == 1
    reg = trials[trials["arm"] == "pixel_th"].iloc[0]
    assert reg["evaluated_checkpoint"] == "best" and reg["dominant_layer"] in ("conv1", "conv5")
    weights = [reg[f"layer_weight_{n}"] for n in ("conv1", "conv5")]
    assert sum(weights) == pytest.approx(1.0) and reg["dominant_weight"] == pytest.approx(max(weights))
    assert reg["collapsed"] == (max(weights) >= 0.99)
    # ...and sweep.run's closing summary compares the arm with the baseline
    assert "Against the baseline (none)" in proc.stdout
    assert any(line.split()[:3] == ["pixel_th", "1", "clean_acc"] for line in proc.stdout.splitlines())
    # Trial metrics equal the trial's own evaluation summary and last Ray report.
    for _, row in trials.iterrows():
        summary = json.loads((Path(row["trial_dir"]) / "evaluation" / "summary.json").read_text())
        assert row["clean_acc"] == pytest.approx(summary["clean_acc"])
        last = json.loads((Path(row["trial_dir"]) / "result.json").read_text().splitlines()[-1])
        assert row["wall_time_s"] == pytest.approx(last["time_total_s"])
        assert row["trial_id"] == last["trial_id"]
    epochs = load("epochs", tmp_path)
    assert len(epochs) == 4 and sorted(epochs["epoch"].unique()) == [1, 2]
    assert epochs.loc[epochs["regularizer.target"] == "pixel_th", "layer_weight_conv1"].notna().all()
    noise = load("noise", tmp_path)
    assert len(noise) == 2 * 2
    got = summarize(select(noise, ["level=0.2"]), "accuracy", ["arm"], ["mean"]).set_index("arm")["mean"]
    for _, row in trials.iterrows():
        assert got[row["arm"]] == pytest.approx(row["noise_acc_gaussian_0.2"])

    assert report_main(["real", "--results", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "Noise accuracy" in printed and "gaussian 0.2" in printed
    text = (tmp_path / "rep" / "report.md").read_text()
    # per noise level, never a pooled mean (issue 11)
    assert "## Against the baseline" in text and "| noise_acc_gaussian_0.2 | pixel_th |" in text
    assert "| noise_acc_mean | pixel_th |" not in text
    _png_ok(tmp_path / "rep" / "plots" / "noise_accuracy.png")


def test_cross_sweep_comparison_keys_arms_by_configuration(tmp_path, capsys):
    """analysis.report A B: the same configuration in two sweeps is one arm; its statistics
    pool the seeds of both sweeps (paired with the baseline by seed, like within a sweep), and a
    configuration and seed trained in both sweeps counts once (its repeats averaged)."""
    from analysis.report import load_frames

    a = write_fake_sweep(tmp_path / "sweeps", "a", seeds=(0, 1), error_trial=False, rng_seed=0)
    b = write_fake_sweep(tmp_path / "sweeps", "b", seeds=(1, 2, 3), error_trial=False, rng_seed=1)
    gather(a, tmp_path)
    gather(b, tmp_path)
    assert report_main(["a", "b", "--results", str(tmp_path)]) == 0
    assert "comparison.md" in capsys.readouterr().out
    text = (tmp_path / "reports" / "compare-a+b" / "comparison.md").read_text()

    # Expected from the trial folders alone: one arm per (target, alpha, th), seeds 0-3, seed 1 averaged.
    rows = []
    for exp in (a, b):
        for tdir in sorted(p for p in exp.iterdir() if (p / "params.json").exists()):
            params = json.loads((tdir / "params.json").read_text())["params"]
            seed = yaml.safe_load((tdir / "run" / "config.yaml").read_text())["train"]["seed"]
            clean = json.loads((tdir / "evaluation" / "summary.json").read_text())["clean_acc"]
            arm = "none" if params["regularizer.target"] == "none" else (
                params["regularizer.alpha"], params["regularizer.th"])
            rows.append({"arm": arm, "seed": seed, "clean_acc": clean})
    raw = pd.DataFrame(rows).groupby(["arm", "seed"])["clean_acc"].mean()
    base = raw.loc["none"]
    arm = raw.loc[(8.0, 0.2)]
    assert list(arm.index) == list(base.index) == [0, 1, 2, 3]
    t = sps.ttest_rel(arm.to_numpy(), base.to_numpy())
    diff = (arm - base).mean()
    line = next(ln for ln in text.splitlines() if ln.startswith("| clean_acc | pixel_th alpha=8 th=0.2 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:4] == ["paired t", "4"]
    assert float(cells[6]) == pytest.approx(diff, rel=1e-3)
    assert float(cells[8]) == pytest.approx(t.pvalue, rel=1e-3)

    frames = load_frames(["a", "b"], tmp_path, by_config=True)
    assert frames.repeats == 5  # seed 1 of each of the 5 configurations
    assert frames.done["arm"].nunique() == 5 and frames.done.groupby("arm")["arm_key"].nunique().max() == 1
    assert "## Arms and where they were trained" in text and "| a, b |" in text
    assert str(tmp_path) not in text


def test_report_cli_refuses_unknown_sweep_among_several(root, capsys):
    assert report_main(["fake", "nosuch", "--results", str(root)]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "Traceback" not in err


def test_robust_accuracy_counts_images_beyond_epsilon():
    """Accuracy at epsilon = share of images whose minimal distance exceeds it: clean errors
    (0) never count, unbroken images (inf) always do."""
    adv = pd.DataFrame({"arm": "x", "trial_id": "t", "norm": "l2", "distance": [0.0, 0.5, math.inf, 1.0],
                        "attack": ["misclassified", "ddn", "ddn", "ddn"]})
    curve = plots.robust_accuracy(adv, n_eps=52)
    eps, acc = curve["epsilon"].to_numpy(), curve["accuracy"].to_numpy()
    assert eps[0] == 0 and eps[-1] == pytest.approx(1.02)
    want = np.array([(np.array([0.0, 0.5, np.inf, 1.0]) > e).mean() for e in eps])
    np.testing.assert_array_equal(acc, want)
    assert acc[0] == 0.75 and acc[-1] == 0.25


def _texts_overlap(fig, texts) -> list[tuple[str, str]]:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def test_paper_figures_have_no_overlapping_text_and_no_one_model_titles(monkeypatch, tmp_path):
    """Long arm labels: spectrum panel titles and bar labels must not run into each other."""
    from analysis import frequency_plots

    figs = []
    monkeypatch.setattr(frequency_plots, "save", lambda fig, out: figs.append(fig) or [])
    monkeypatch.setattr(plots, "save", lambda fig, out: figs.append(fig) or [])
    arms = ["pixel_th alpha=1.60519 th=0.535907 | model.blur_sigma=1.5", "none | model.blur_sigma=1.5",
            "pixel_th alpha=0.703574 th=0.616715 | model.blur_sigma=0"]
    spec = pd.DataFrame([{"kind": "spectrum2d", "norm": "l2", "arm": a, "trial_id": a, "fy": fy, "fx": fx,
                          "power": 1.0 + fx + fy} for a in arms for fy in (0.0, 0.25) for fx in (0.0, 0.25)])
    frequency_plots.plot_spectrum_heatmaps(spec, "arm", tmp_path / "s")
    titles = [ax.title for ax in figs[-1].axes if ax.get_title()]
    assert len(titles) == 3 and not any("1 models" in t.get_text() for t in titles)
    assert _texts_overlap(figs[-1], titles) == []
    summary = pd.DataFrame([{"arm": a, "norm": n, "median": 0.5 + i, "trial_id": f"{a}{s}"}
                            for i, a in enumerate(arms) for n in ("l2", "linf") for s in range(2)])
    plots.median_distance(summary, tmp_path / "m")
    fig = figs[-1]
    labels = [t for ax in fig.axes for t in ax.get_xticklabels()]
    assert len(labels) == 6 and _texts_overlap(fig, labels) == []
    assert min(t.get_fontsize() for t in labels) >= 8


def test_continuous_search_gets_optuna_contour_and_slice(root, tmp_path):
    from analysis.report import continuous_params

    trials = load("trials", root)
    active = trials[(trials["status"] == "TERMINATED") & ~trials["baseline"]]
    spec = {"space": {"regularizer.alpha": {"loguniform": [1.0, 10.0]}, "regularizer.th": {"uniform": [0.1, 0.9]},
                      "regularizer.target": {"grid": ["none", "pixel_th"]}}}
    params = continuous_params(spec, active)
    assert params == ["regularizer.alpha", "regularizer.th"]
    assert continuous_params({"space": {"regularizer.alpha": {"grid": [2.0, 8.0]}}}, active) == []
    import matplotlib.pyplot as plt

    # 4 configurations x 3 seeds: too few for a contour (it would interpolate a surface), which
    # says so; drawn once the minimum is lowered to what the fake has.
    with pytest.raises(ValueError, match=r"4 configurations × 3 seeds, fewer than 8 distinct configurations"):
        plots.optuna_contour(active, params, "clean_acc", tmp_path / "c", "max", spec["space"])
    assert not (tmp_path / "c.png").exists()
    for draw, extra in ((plots.optuna_contour, {"min_configs": 4}), (plots.optuna_slice, {})):
        paths = draw(active, params, "clean_acc", tmp_path / draw.__name__, "max", spec["space"], **extra)
        assert plt.rcParams["axes.facecolor"] == "white"  # Optuna's ggplot style does not leak
        assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
        _png_ok(paths[0])


def test_config_columns_of_a_malformed_base_do_not_stop_gather():
    """A trial without run/config.yaml gets base + params; a base where a parameter's path
    crosses a plain value still yields columns (merged flat) instead of an exception."""
    from types import SimpleNamespace

    from analysis.gather import _config_columns

    t = SimpleNamespace(config=None, params={"params": {"regularizer.alpha": 2.0}, "__trial_index__": 1})
    good = _config_columns(t, {"base": {"train": {"epochs": 3}}, "seeds": [5, 7]})
    assert good["regularizer.alpha"] == 2.0 and good["train.seed"] == 7 and good["train.epochs"] == 3
    bad = _config_columns(t, {"base": {"train": 5}, "seeds": [5, 7]})
    assert bad["regularizer.alpha"] == 2.0 and bad["train.seed"] == 7


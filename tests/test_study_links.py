"""The sweep's study read as optuna-dashboard reads it, and its TensorBoard runs (issue 23).

One tiny real Optuna sweep (synthetic data, 2 epochs, seeds [2, 3], 2 configurations + the
baseline, 6 trials) with its study in SQLite; then only optuna's own API
(get_all_study_summaries, load_study) and the raw event files, no platform code, check what
a dashboard user would see: named objectives and parameters, trials linked to their Ray
trials, seeds and folders, per-epoch curves without the evaluation step, the baseline.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.test_sweep_run import (  # noqa: F401
    TINY_BASE,
    final_result,
    ray_cluster,
    run_main,
    trial_dirs,
    write_space,
)

pytestmark = pytest.mark.slow

BASE = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 2}}


def _results(trial: Path) -> list[dict]:
    return [json.loads(x) for x in (trial / "result.json").read_text().splitlines() if x.strip()]


def _epoch_curve(trial: Path) -> dict[int, float]:
    return {r["epoch"]: r["val_acc"] for r in _results(trial) if "evaluated" not in r}


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a run folder's event files (TFRecord framing: length,
    its CRC, the Event proto, its CRC), read with tensorboardX's protobufs only."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(run.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):  # noqa: F811
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("links")
    space = write_space(tmp / "o.yaml", base=BASE, space={"regularizer.alpha": {"loguniform": [0.1, 10]}},
                        search={"algorithm": "optuna", "seed": 0}, num_samples=2, seeds=[2, 3],
                        metric="val_acc", mode="max")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_main("--space", str(space), "--storage", str(tmp / "res"), "--name", "lk")
    assert rc == 0, out.getvalue()[-3000:]
    return tmp, tmp / "res" / "lk", out.getvalue()


def test_dashboard_sees_named_linked_trials_with_curves_and_the_baseline(sweep):
    import optuna
    import pandas as pd

    tmp, exp, _ = sweep
    url = f"sqlite:///{exp / 'study.db'}"
    summaries = optuna.get_all_study_summaries(storage=url)
    assert [s.study_name for s in summaries] == ["lk"]
    study = optuna.load_study(study_name="lk", storage=url)
    assert study.metric_names == ["val_acc"]  # not "Objective 0"
    assert "links" in study.user_attrs

    trials_table = pd.read_parquet(tmp / "tables" / "trials" / "lk.parquet").set_index("trial_id")
    searched = [t for t in study.trials if "fixed" not in t.user_attrs]
    fixed = [t for t in study.trials if "fixed" in t.user_attrs]
    assert len(searched) == 2 and len(fixed) == 1
    for t in searched:
        assert t.state.name == "COMPLETE"
        assert list(t.params) == ["regularizer.alpha"]  # the config key itself, no "params/" prefix
        a = t.user_attrs
        assert len(a["ray_trial_ids"]) == 2 and a["seeds"] == [2, 3]
        assert a["run_folders"] == [f"trial_{i}" for i in a["ray_trial_ids"]]
        curves = []
        for tid, folder, seed in zip(a["ray_trial_ids"], a["run_folders"], a["seeds"]):
            assert not Path(folder).is_absolute()
            cfg = yaml.safe_load((exp / folder / "run" / "config.yaml").read_text())
            assert cfg["train"]["seed"] == seed
            assert cfg["regularizer"]["alpha"] == pytest.approx(t.params["regularizer.alpha"])
            assert trials_table.loc[tid, "arm_key"] == a["arm_key"]  # the trials table's key
            curves.append(_epoch_curve(exp / folder))
        # Mean over the seeds per epoch; epochs 1 and 2 only (the evaluation report is no step 3).
        assert sorted(t.intermediate_values) == [1, 2]
        for step, v in t.intermediate_values.items():
            assert v == pytest.approx(sum(c[step] for c in curves) / 2)
        assert t.value == pytest.approx(sum(final_result(exp / f)["val_acc"] for f in a["run_folders"]) / 2)

    base = fixed[0]
    assert base.state.name == "COMPLETE" and base.params == {}
    ids = base.user_attrs["ray_trial_ids"]
    assert base.user_attrs["seeds"] == [2, 3] and len(ids) == 2
    for tid in ids:
        assert yaml.safe_load((exp / f"trial_{tid}" / "run" / "config.yaml").read_text())["regularizer"]["target"] == \
            "none"
        assert trials_table.loc[tid, "arm_key"] == base.user_attrs["arm_key"]
    assert base.value == pytest.approx(sum(final_result(exp / f"trial_{i}")["val_acc"] for i in ids) / 2)
    assert sorted(base.intermediate_values) == [1, 2]
    assert study.user_attrs["baseline"]["metrics"]["val_acc"] == pytest.approx(base.value)


def test_tensorboard_runs_are_arm_and_seed_with_epoch_steps(sweep):
    _, exp, _ = sweep
    tb = exp / "tensorboard"
    runs = sorted(str(p.parent.relative_to(tb)) for p in tb.rglob("events.out.tfevents.*"))
    runs = sorted(set(runs))
    assert "none/seed2" in runs and "none/seed3" in runs
    regularized = [r for r in runs if not r.startswith("none/")]
    assert len(regularized) == 4 and all(r.startswith("pixel_th,alpha=") for r in regularized)
    assert sorted(r.rsplit("/", 1)[1] for r in regularized) == ["seed2", "seed2", "seed3", "seed3"]
    assert not list(exp.glob("trial_*/events.out.tfevents.*"))  # Ray's own per-trial writer is replaced
    for run in runs:
        scalars = read_scalars(tb / run)
        assert [s for s, _ in scalars["val_acc"]] == [1, 2], run  # epochs, no evaluation step
        assert [s for s, _ in scalars["evaluation/train_wall_s"]] == [2], run
        trial_id = (tb / run / ".trial_id").read_text()
        curve = _epoch_curve(exp / f"trial_{trial_id}")
        assert [v for _, v in scalars["val_acc"]] == pytest.approx([curve[1], curve[2]])


def test_closing_table_shows_seeds_epochs_and_a_legend(sweep):
    _, _, out = sweep
    lines = out.splitlines()
    head = next(i for i, x in enumerate(lines) if x.lstrip().startswith("trial") and "status" in x)
    header = lines[head].split()
    assert "seed" in header and "epochs" in header and "iters" not in header and "seed#" not in header
    rows = [x.split() for x in lines[head + 1:head + 7]]
    seed_at, epochs_at, alpha_at = header.index("seed"), header.index("epochs"), header.index("alpha")
    assert sorted(r[seed_at] for r in rows) == ["2", "2", "2", "3", "3", "3"]
    assert {r[epochs_at] for r in rows} == {"2"}
    baseline = [r for r in rows if r[header.index("target")] == "none"]
    assert len(baseline) == 2 and all(r[alpha_at] == "–" for r in baseline)
    legend = "\n".join(lines[head + 7:head + 20])
    assert "epochs" in legend and "training_iteration" in legend and "train.seed" in legend
    assert "best_val_acc" in legend and "–" in legend

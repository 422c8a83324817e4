"""The console says what its columns are (issue 23): train.seed values, epochs, a legend,
"–" for parameters an arm does not use; Tune's own boxes only with --verbose."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from sweep.labels import LEGEND, applies, arm_label, trial_seed
from sweep.progress import CompactProgress
from sweep.report import format_table, trial_rows
from tests.test_sweep_run import TINY_BASE, ray_cluster  # noqa: F401 -- the shared Ray fixture


@dataclass
class FakeResult:
    """What trial_rows reads of a ray.tune.Result."""

    config: dict
    metrics: dict
    path: str
    error: Exception | None = None


@dataclass
class FakeTrial:
    trial_id: str
    config: dict
    last_result: dict = field(default_factory=dict)
    path: str = "/x"


def _final(epochs: int, **m) -> dict:
    # Tune's training_iteration counts the evaluation report: one more than the epochs.
    return {"epoch": epochs, "training_iteration": epochs + 1, "evaluated": True, "best_val_acc": 0.5, **m}


def _optuna_results() -> list[FakeResult]:
    """An Optuna sweep with seeds [2, 3]: baselines first, then one configuration x 2 seeds."""
    out = []
    for i in range(2):
        out.append(FakeResult({"params": {"regularizer.target": "none"}, "__trial_index__": i},
                              {**_final(5), "trial_id": f"b{i}", "noise_acc_mean": 0.4}, f"/s/trial_b{i}"))
    for i in range(2):
        out.append(FakeResult({"params": {"regularizer.alpha": 2.5, "regularizer.th": 0.3}, "__trial_index__": i},
                              {**_final(5), "trial_id": f"r{i}", "noise_acc_mean": 0.6}, f"/s/trial_r{i}"))
    return out


def test_closing_table_shows_train_seed_epochs_and_dashes():
    df = trial_rows(_optuna_results(), fill={"regularizer.target": "pixel_th"}, seeds=[2, 3])
    assert list(df["seed"]) == [2, 3, 2, 3]  # train.seed, not the position 0 / 1
    assert list(df["epochs"]) == [5, 5, 5, 5]  # not Tune's 6 iterations
    assert "iters" not in df and "seed#" not in df
    assert list(df["target"]) == ["none", "none", "pixel_th", "pixel_th"]
    base = df[df["target"] == "none"]
    assert base["alpha"].isna().all() and base["th"].isna().all()  # not applicable: printed "–"
    text = format_table(df)
    header = text.splitlines()[0].split()
    assert header.index("th") < header.index("seed") < header.index("epochs")  # parameters, seed, metrics
    first = text.splitlines()[1].split()
    assert first[header.index("alpha")] == "–" and first[header.index("seed")] == "2"


def test_legend_explains_every_derived_column_shown():
    text = format_table(trial_rows(_optuna_results(), fill={"regularizer.target": "pixel_th"}, seeds=[2, 3]))
    table, legend = text.split("\n\n", 1)
    shown = table.splitlines()[0].split()
    for col in ("status", "seed", "epochs", "best_val_acc", "noise_acc_mean"):
        assert col in shown
        line = next(x for x in legend.splitlines() if x.split()[0] == col)
        assert LEGEND[col] in line
    assert "every noise level above 0" in legend and "training_iteration" in legend
    assert "median_l2" not in legend  # only the columns the table has
    assert legend.splitlines()[-1].split()[0] == "–"


def test_th_does_not_apply_to_pixel_and_nothing_to_a_baseline():
    assert not applies("regularizer.th", {"regularizer.target": "none"})
    assert not applies("regularizer.alpha", {"regularizer.target": "none"})
    assert not applies("regularizer.th", {"regularizer.target": "pixel", "regularizer.th": 0.8})
    assert applies("regularizer.th", {"regularizer.target": "pixel_th"})
    assert not applies("regularizer.th", {"regularizer.alpha": 0.0}, {"regularizer": {"target": "pixel_th"}})
    assert applies("regularizer.alpha", {}, {"regularizer": {"target": "pixel"}})
    assert applies("model.width", {"regularizer.target": "none"})
    assert arm_label({"regularizer.target": "none", "model.width": 8}) == "none,width=8"
    assert arm_label({"regularizer.alpha": 2.5, "regularizer.th": 0.3}, {"regularizer": {"target": "pixel_th"}}) \
        == "pixel_th,alpha=2.5,th=0.3"
    assert arm_label({"regularizer.target": "pixel", "regularizer.th": 0.3}) == "pixel"


def test_grid_seed_column_and_trial_seed():
    grid = [FakeResult({"params": {"regularizer.alpha": a, "train.seed": s}}, {**_final(3), "trial_id": f"g{s}{a}"},
                       "/g") for a in (1.0, 2.0) for s in (7, 9)]
    df = trial_rows(grid, seeds=[7, 9])
    assert list(df["seed"]) == [7, 9, 7, 9] and list(df["epochs"]) == [3] * 4
    assert trial_seed({"params": {}, "__trial_index__": 1}, [2, 3]) == 3
    assert trial_seed({"params": {"train.seed": 5}}, None) == 5
    assert trial_seed({"params": {}}, None, {"train": {"seed": 11}}) == 11


def test_without_a_seed_list_the_seed_is_the_bases_not_a_position():
    """An Optuna sweep without ``seeds``: the baseline carries index 0, which is no seed."""
    res = [FakeResult({"params": {"regularizer.target": "none"}, "__trial_index__": 0}, _final(1), "/s/trial_a"),
           FakeResult({"params": {"regularizer.alpha": 1.5}}, _final(1), "/s/trial_b")]
    assert "seed" not in trial_rows(res) and "seed#" not in trial_rows(res)
    df = trial_rows(res, base={"train": {"seed": 4}, "regularizer": {"target": "pixel_th"}})
    assert list(df["seed"]) == [4, 4]


def test_progress_lines_name_seed_and_leave_out_unused_parameters(capsys):
    cb = CompactProgress(["val_acc"], 4, seeds=[2, 3], base={"regularizer": {"target": "pixel_th", "th": 0.8}})
    cb.on_trial_start(0, [], FakeTrial("b1", {"params": {"regularizer.target": "none"}, "__trial_index__": 1}))
    cb.on_trial_complete(0, [], FakeTrial("r0", {"params": {"regularizer.alpha": 2.5, "regularizer.th": 0.3},
                                                 "__trial_index__": 0}, {"epoch": 5, "val_acc": 0.5}))
    start, done = capsys.readouterr().out.splitlines()
    assert start.endswith("start  b1 target=none seed=3")
    assert "r0 alpha=2.5 th=0.3 seed=2  epochs 5  val_acc 0.5" in done


@pytest.mark.slow
def test_tune_boxes_only_with_verbose(ray_cluster, tmp_path, capfd):  # noqa: F811
    """Tune's own progress output (its trial status table): hidden by default
    (test_sweep_run.test_console_is_compact), back with --verbose."""
    from sweep.run import main

    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 1, "max_steps_per_epoch": 1}}
    space = tmp_path / "v.yaml"
    space.write_text(yaml.safe_dump({"name": "v", "base": base, "baseline": False, "search": {"algorithm": "grid"},
                                     "space": {"regularizer.alpha": {"grid": [1.0]}},
                                     "resources": {"cpus_per_trial": 1}}))
    assert main(["--space", str(space), "--storage", str(tmp_path / "r"), "--name", "v", "--verbose"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Trial status" in text or "Configuration for experiment" in text, text[-3000:]

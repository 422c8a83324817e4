"""The report's cost section: each arm's wall time, training and evaluation, against the baseline."""

from __future__ import annotations

import pandas as pd

from analysis.report_sections import Doc, cost_section


def test_cost_per_arm_splits_training_and_evaluation_and_compares_with_the_baseline(tmp_path):
    done = pd.DataFrame({
        "sweep": "s", "trial_id": ["a", "b", "c", "d"], "condition": "c1",
        "arm": ["none", "none", "shared", "shared"],
        "baseline": [True, True, False, False],
        "wall_time_s": [600.0, 720.0, 660.0, 780.0],
        "train_wall_s": [300.0, 420.0, 360.0, 60.0],  # d resumed: its train_wall_s restarted
    })
    # The epochs' own times (d: 432 s in all, 372 of them before the resume).
    epochs = pd.DataFrame({"sweep": "s", "trial_id": ["a", "a", "b", "c", "d", "d"],
                           "epoch_s": [150.0, 150.0, 420.0, 360.0, 372.0, 60.0]})
    doc = Doc(tmp_path)
    cost_section(doc, done, epochs)
    text = "\n".join(doc.lines)
    assert "## Cost per arm (wall time)" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| none") or line.startswith("| shared")}
    # none: wall 11.0 min (10.0-12.0), training 6.0 min, evaluation 5.0 min, 0.367 h in all
    assert rows["none"][:2] == ["2", "11.0 (10.0-12.0)"]
    assert [float(x) for x in rows["none"][2:]] == [6.0, 5.0, 0.3667, 1.0]
    # shared: training 6.6 min = 1.1 x the baseline's 6.0 (from the epochs, not train_wall_s)
    assert [float(x) for x in rows["shared"][2:]] == [6.6, 5.4, 0.4, 1.1]


def test_each_arm_is_priced_against_the_baseline_of_its_condition(tmp_path):
    done = pd.DataFrame({
        "sweep": "s", "trial_id": list("abcd"), "condition": ["c1", "c1", "c2", "c2"],
        "arm": ["none@c1", "pixel@c1", "none@c2", "pixel@c2"], "baseline": [True, False, True, False],
        "wall_time_s": 1000.0, "train_wall_s": [100.0, 150.0, 400.0, 440.0],
    })
    doc = Doc(tmp_path)
    cost_section(doc, done)
    ratio = {line.split("|")[1].strip(): float(line.split("|")[-2]) for line in doc.lines[-1].splitlines()[2:]}
    assert ratio == {"none@c1": 1.0, "pixel@c1": 1.5, "none@c2": 1.0, "pixel@c2": 1.1}


def test_no_time_columns_no_section(tmp_path):
    doc = Doc(tmp_path)
    cost_section(doc, pd.DataFrame({"arm": ["a"], "baseline": [False]}))
    assert doc.lines == []

"""The report's cost section: each arm's wall time, training and evaluation, against the baseline."""

from __future__ import annotations

import pandas as pd

from analysis.report_sections import Doc, cost_section


def test_cost_per_arm_splits_training_and_evaluation_and_compares_with_the_baseline(tmp_path):
    done = pd.DataFrame({
        "arm": ["none", "none", "shared", "shared"],
        "baseline": [True, True, False, False],
        "wall_time_s": [600.0, 720.0, 660.0, 780.0],
        "train_wall_s": [300.0, 420.0, 360.0, 432.0],
    })
    doc = Doc(tmp_path)
    cost_section(doc, done)
    text = "\n".join(doc.lines)
    assert "## Cost per arm (wall time)" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| none") or line.startswith("| shared")}
    # none: wall 11.0 min (10.0-12.0), training 6.0 min, evaluation 5.0 min, 0.367 h in all
    assert rows["none"][:2] == ["2", "11.0 (10.0-12.0)"]
    assert [float(x) for x in rows["none"][2:]] == [6.0, 5.0, 0.3667, 1.0]
    # shared: training 6.6 min = 1.1 x the baseline's 6.0
    assert [float(x) for x in rows["shared"][2:]] == [6.6, 5.4, 0.4, 1.1]


def test_no_time_columns_no_section(tmp_path):
    doc = Doc(tmp_path)
    cost_section(doc, pd.DataFrame({"arm": ["a"], "baseline": [False]}))
    assert doc.lines == []

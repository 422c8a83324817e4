"""Every sweep has its baseline and its seeds; arms get sweep-independent keys (issue 11)."""

from __future__ import annotations

import pandas as pd

from analysis.gather import _config_keys, arm_labels
from sweep.spec import BASELINE_PARAMS, enumerate_trials, parse_spec
from sweep.tuner import BaselineFirst, build_search

BASE = {
    "data": {"name": "digits", "image_size": 16},
    "model": {"width": 8},
    "regularizer": {"target": "pixel_th", "n": 300},
    "train": {"epochs": 1},
}


def spec(**top):
    raw = {"name": "t", "base": BASE, "space": {"regularizer.alpha": {"grid": [1.0, 4.0]}},
           "search": {"algorithm": "grid"}, "seeds": 2, **top}
    return parse_spec(raw)


def test_grid_without_baseline_gets_one_per_seed():
    trials = enumerate_trials(spec())
    base = [t for t in trials if t.get("regularizer.target") == "none"]
    assert [t["train.seed"] for t in base] == [0, 1]
    assert len(trials) == 2 * 3  # (baseline + 2 alphas) x 2 seeds


def test_baseline_false_and_existing_baseline_add_nothing():
    assert len(enumerate_trials(spec(baseline=False))) == 4
    s = spec(space={"regularizer.target": {"grid": ["none", "pixel_th"]}, "regularizer.alpha": {"grid": [1.0]}})
    trials = enumerate_trials(s)
    assert len(trials) == 4 and sum(t["regularizer.target"] == "none" for t in trials) == 2


def test_optuna_runs_baselines_beside_the_study():
    s = parse_spec({"name": "o", "base": BASE, "space": {"regularizer.alpha": {"loguniform": [0.1, 10]}},
                    "search": {"algorithm": "optuna", "seed": 0}, "seeds": 2, "num_samples": 3})
    assert s.num_trials() == 3 * 2 + 2
    searcher, _, n = build_search(s)
    assert isinstance(searcher, BaselineFirst) and n == 8
    searcher.set_search_properties(s.metric, s.mode, {})
    first = [searcher.suggest(f"t{i}") for i in range(2)]
    assert [c["params"] for c in first] == [BASELINE_PARAMS, BASELINE_PARAMS]
    assert [c["__trial_index__"] for c in first] == [0, 1]  # one per seed
    third = searcher.suggest("t2")
    assert "regularizer.alpha" in third["params"]  # then the study's own suggestions
    # a baseline's result never reaches Optuna
    searcher.on_trial_complete("t0", {s.metric: 0.5})
    assert len(searcher.searcher.searcher._ot_study.trials) == 1


def test_arm_key_is_the_same_across_sweeps():
    cols = ["regularizer.target", "regularizer.alpha", "regularizer.th", "model.width", "train.seed",
            "train.num_threads", "evaluation.n_images"]
    a = pd.DataFrame([  # sweep A varies alpha; sweep B varies th; both train pixel_th 4 / 0.2
        {"regularizer.target": "pixel_th", "regularizer.alpha": 4.0, "regularizer.th": 0.2, "model.width": 16,
         "train.seed": 0, "train.num_threads": 1, "evaluation.n_images": 100},
        {"regularizer.target": "pixel_th", "regularizer.alpha": 1.0, "regularizer.th": 0.2, "model.width": 16,
         "train.seed": 0, "train.num_threads": 1, "evaluation.n_images": 100},
        {"regularizer.target": "none", "regularizer.alpha": 4.0, "regularizer.th": 0.2, "model.width": 16,
         "train.seed": 1, "train.num_threads": 1, "evaluation.n_images": 100},
    ])
    b = pd.DataFrame([
        {"regularizer.target": "pixel_th", "regularizer.alpha": 4.0, "regularizer.th": 0.2, "model.width": 16,
         "train.seed": 3, "train.num_threads": 2, "evaluation.n_images": 500},
        {"regularizer.target": "pixel_th", "regularizer.alpha": 4.0, "regularizer.th": 0.8, "model.width": 16,
         "train.seed": 3, "train.num_threads": 2, "evaluation.n_images": 500},
        {"regularizer.target": "none", "regularizer.alpha": 0.0, "regularizer.th": 0.5, "model.width": 16,
         "train.seed": 3, "train.num_threads": 2, "evaluation.n_images": 500},
    ])
    ka = _config_keys(a, cols, ~arm_labels(a, cols)["baseline"])
    kb = _config_keys(b, cols, ~arm_labels(b, cols)["baseline"])
    assert arm_labels(a, cols)["arm"][0] != arm_labels(b, cols)["arm"][0]  # labels are per sweep
    assert ka["arm_key"][0] == kb["arm_key"][0]  # keys are not
    assert ka["arm_key"][1] != kb["arm_key"][1]
    assert ka["arm_key"][2] == kb["arm_key"][2]  # baselines, whatever their inactive fields say
    assert len(set(ka["condition_key"]) | set(kb["condition_key"])) == 1


def test_baseline_first_state_round_trips():
    s = parse_spec({"name": "o", "base": BASE, "space": {"regularizer.alpha": {"loguniform": [0.1, 10]}},
                    "search": {"algorithm": "optuna", "seed": 0}, "seeds": 3, "num_samples": 2})
    a, _, _ = build_search(s)
    a.set_search_properties(s.metric, s.mode, {})
    a.suggest("x0")
    b, _, _ = build_search(s)
    b.set_state(a.get_state())  # what Tune's SearchGenerator saves for a wrapper on resume
    assert [c["__trial_index__"] for c in b.pending] == [1, 2] and b.ours == {"x0"}

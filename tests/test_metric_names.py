"""The declared metric names equal what a real evaluation reports, and sweeps are checked against them."""

from __future__ import annotations

import math

import pytest
import torch

from neuroreg.config import ConfigError, RunConfig
from neuroreg.data import load_dataset
from neuroreg.evaluate.metrics import evaluation_metrics
from neuroreg.evaluate.runner import evaluate_model
from neuroreg.models import create_model
from sweep.spec import parse_spec

EVAL = {
    "suites": ["clean", "noise", "adversarial", "corruptions"],
    "noise_types": ["gaussian", "salt_pepper"], "noise_levels": {"gaussian": [0.0, 0.25], "salt_pepper": [0.1]},
    "noise_n_images": 20, "n_images": 4, "attacks_l2": ["ddn"], "attacks_linf": ["fmn_linf"],
    "ddn_steps": 5, "fmn_steps": 5, "corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5],
    "corruption_n_images": 8, "progress": False,
}


def test_declared_names_are_what_the_evaluation_reports(tmp_path):
    cfg = RunConfig.from_dict({"data": {"name": "digits", "image_size": 16, "test_subset": 40},
                               "model": {"width": 4}, "evaluation": EVAL})
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 1, width=4).eval()
    summary = evaluate_model(model, cfg, load_dataset(cfg.data, train=False), tmp_path, "cpu")
    numeric = {k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("n_test",)}
    declared = evaluation_metrics(cfg)
    assert numeric == declared, (sorted(numeric - declared), sorted(declared - numeric))
    assert all(not math.isnan(summary[k]) for k in ("clean_acc", "noise_acc_gaussian_0.25"))


BASE = {"data": {"name": "digits", "image_size": 16}, "model": {"width": 4},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 100}, "train": {"epochs": 1},
        "evaluation": {"suites": ["clean", "noise"]}}


@pytest.mark.parametrize(("top", "field"), [
    ({"metric": "median_l2"}, "metric"),  # no adversarial suite
    ({"metric": "clean_accuracy"}, "metric"),  # a typo
    ({"search": {"algorithm": "optuna", "metrics": ["clean_acc", "robustness"], "modes": ["max", "max"]},
      "space": {"regularizer.alpha": {"loguniform": [0.1, 1]}}}, "search.metrics[1]"),
    # a declared hypothesis on a metric no trial reports (no adversarial suite; a typo)
    ({"hypotheses": [{"metric": "median_l2", "direction": "greater", "smallest_effect": 0.1}]}, "hypotheses[0].metric"),
    ({"hypotheses": [{"metric": "noise_acc_gaussian_0.4", "smallest_effect": 0.05},
                     {"metric": "noise_acc_gausian_0.3", "smallest_effect": 0.05}]}, "hypotheses[1].metric"),
])
def test_unreported_metric_is_refused(top, field):
    raw = {"name": "m", "base": BASE, "space": {"regularizer.alpha": {"uniform": [0.1, 1]}},
           "search": {"algorithm": "random"}, **top}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw)
    assert e.value.field == field


def test_reported_metric_is_accepted():
    s = parse_spec({"name": "m", "base": BASE, "space": {"regularizer.alpha": {"uniform": [0.1, 1]}},
                    "search": {"algorithm": "random"}, "metric": "noise_acc_gaussian_0.3"})
    assert s.metric == "noise_acc_gaussian_0.3"

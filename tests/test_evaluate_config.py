"""The evaluation section of the run config: defaults per data set, clear errors per field."""

from __future__ import annotations

import pytest

from neuroreg.config import ConfigError, RunConfig
from neuroreg.evaluate.config import EvalConfig, default_noise_levels


def test_defaults_validate_and_round_trip():
    cfg = RunConfig.from_dict({"evaluation": {"suites": ["clean", "adversarial"], "n_images": 50,
                                              "noise_levels": {"gaussian": [0, 0.1]}, "noise_types": ["gaussian"]}})
    assert cfg.evaluation.n_images == 50 and cfg.evaluation.levels_for("cifar10") == {"gaussian": [0.0, 0.1]}
    again = RunConfig.from_dict(cfg.to_dict())
    assert again.evaluation == cfg.evaluation


def test_digit_data_get_larger_gaussian_sigma():
    assert max(default_noise_levels("mnist")["gaussian"]) >= 0.5
    assert max(default_noise_levels("cifar10")["gaussian"]) == pytest.approx(0.1)
    assert EvalConfig().levels_for("digits") == default_noise_levels("digits")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"suites": ["clean", "robustness"]}, "evaluation.suites"),
        ({"n_images": 0}, "evaluation.n_images"),
        ({"noise_types": ["pink"]}, "evaluation.noise_types"),
        ({"noise_levels": {"gaussian": [0, -0.1], "uniform": [0], "salt_pepper": [0]}}, "evaluation.noise_levels.gaussian"),
        ({"noise_levels": {"gaussian": [0.1]}}, "evaluation.noise_levels"),
        ({"noise_levels": {"gaussian": [0], "uniform": [0], "salt_pepper": [0, 1.5]}}, "evaluation.noise_levels.salt_pepper"),
        ({"attacks_l2": ["l2fmn"]}, "evaluation.attacks_l2"),
        ({"attacks_linf": ["ddn"]}, "evaluation.attacks_linf"),
        ({"norms": ["l1"]}, "evaluation.norms"),
        ({"pgd_eps_linf": [0.1, 0.05]}, "evaluation.pgd_eps_linf"),
        ({"boundary_budgets": []}, "evaluation.boundary_budgets"),
        ({"transfer_epsilons": [-0.1]}, "evaluation.transfer_epsilons"),
        ({"corruptions": ["rain"]}, "evaluation.corruptions"),
        ({"severities": [0, 1]}, "evaluation.severities"),
        ({"ddn_steps": 0}, "evaluation.ddn_steps"),
        ({"bb_lr": 0.0}, "evaluation.bb_lr"),
        ({"corruption_n_images": 0}, "evaluation.corruption_n_images"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"evaluation": changes})
    assert e.value.field == field

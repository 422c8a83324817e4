"""The comparison family: paired by seed, 95 % CI, Benjamini-Hochberg, power (analysis.stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.stats import compare_family, family_metrics, power_paired, seeds_for_power


def trials(seeds_base, seeds_arm, base_vals, arm_vals, metric="noise_acc_gaussian_0.4"):
    rows = [{"arm": "none", "baseline": True, "condition": "", "train.seed": s, metric: v, "clean_acc": 0.99}
            for s, v in zip(seeds_base, base_vals)]
    rows += [{"arm": "pixel_th", "baseline": False, "condition": "", "train.seed": s, metric: v, "clean_acc": 0.9 + s / 100}
             for s, v in zip(seeds_arm, arm_vals)]
    return pd.DataFrame(rows)


def test_power_matches_textbook_values():
    # one-sample t-test, d = 1, alpha 0.05 two-sided: n = 10 gives power 0.803 (G*Power)
    assert power_paired(1.0, 10) == pytest.approx(0.803, abs=0.002)
    assert seeds_for_power(1.0, paired=True) == 10
    assert power_paired(0.0, 10) == pytest.approx(0.05, abs=1e-6)


def test_paired_by_seed_with_ci_and_correction():
    base = [0.10, 0.30, 0.12, 0.50, 0.20]
    arm = [0.40, 0.55, 0.45, 0.78, 0.52]  # each seed about +0.3 over its own baseline
    t = trials(range(5), range(5), base, arm)
    out = compare_family(t)
    row = out[out.metric == "noise_acc_gaussian_0.4"].iloc[0]
    assert row.test == "paired t" and row.n == 5
    ref = sps.ttest_rel(arm, base)
    assert row.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high))
    assert row.ci_low < row["diff"] < row.ci_high
    assert row["diff"] == pytest.approx(np.mean(np.subtract(arm, base)))
    # Welch on the same numbers is far weaker: the baseline's seed spread hides the effect
    welch = sps.ttest_ind(arm, base, equal_var=False).pvalue
    assert row.p < welch
    # BH over the whole family (here two metrics)
    assert list(out.p_adj) == pytest.approx(list(sps.false_discovery_control(out.p.to_numpy(), method="bh")))
    assert (out.p_adj >= out.p - 1e-12).all()
    assert row.power > 0.8 and row.n_80 <= 5


def test_unmatched_seeds_fall_back_to_welch():
    t = trials([0, 1, 2], [10, 11, 12], [0.1, 0.2, 0.15], [0.3, 0.4, 0.35])
    row = compare_family(t, ["noise_acc_gaussian_0.4"]).iloc[0]
    assert row.test == "Welch t" and row.n == 3 and row.n_baseline == 3
    ref = sps.ttest_ind([0.3, 0.4, 0.35], [0.1, 0.2, 0.15], equal_var=False)
    assert row.p == pytest.approx(ref.pvalue)


def test_infinite_distances_are_counted_apart():
    t = trials(range(3), range(3), [1.0, 1.1, 0.9], [np.inf, 1.5, 1.4], metric="median_l2")
    row = compare_family(t, ["median_l2"]).iloc[0]
    assert row.n_inf == 1 and row.n == 2


def test_family_lists_every_noise_level_not_a_pooled_mean():
    t = pd.DataFrame([{"clean_acc": 1, "noise_acc_gaussian_0.4": 0, "noise_acc_gaussian_0.1": 0,
                       "noise_acc_salt_pepper_0.1": 0, "noise_acc_mean": 0, "median_l2": 1,
                       "noise_acc_gaussian_0": 1}])
    assert family_metrics(t) == ["clean_acc", "noise_acc_gaussian_0.1", "noise_acc_gaussian_0.4",
                                 "noise_acc_salt_pepper_0.1", "median_l2"]


def test_constant_differences_are_not_called_significant():
    # Both arms at a constant prediction under extreme noise: the same difference on every
    # seed up to rounding. No variance, no test (a t-test would give p ~ 1e-15).
    base = [0.0980, 0.0980, 0.0980]
    arm = [0.0980 + 0.181, 0.0980 + 0.181, 0.0980 + 0.181]
    row = compare_family(trials(range(3), range(3), base, arm), ["noise_acc_gaussian_0.4"]).iloc[0]
    assert row["diff"] == pytest.approx(0.181) and np.isnan(row.p) and np.isnan(row.p_adj)

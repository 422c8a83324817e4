"""The comparison family: power and planning numbers, paired by seed, uncorrected CIs,
Holm over the declared hypotheses and BH over the rest (analysis.stats, analysis.sequential);
console and report print one family; repeats across sweeps count once."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_analysis import write_fake_sweep

from analysis.confirmatory import Family, comparison_family, decision_line
from analysis.gather import gather
from analysis.report import main as report_main
from analysis.sequential import t_power
from analysis.stats import (
    compare_family,
    family_metrics,
    holm,
    mde,
    power_paired,
    power_welch,
    seeds_for_power,
)


def trials(seeds_base, seeds_arm, base_vals, arm_vals, metric="noise_acc_gaussian_0.4"):
    rows = [{"arm": "none", "baseline": True, "condition": "", "train.seed": s, metric: v, "clean_acc": 0.99}
            for s, v in zip(seeds_base, base_vals)]
    rows += [{"arm": "pixel_th", "baseline": False, "condition": "", "train.seed": s, metric: v, "clean_acc": 0.9 + s / 100}
             for s, v in zip(seeds_arm, arm_vals)]
    return pd.DataFrame(rows)


# --- power --------------------------------------------------------------------------------


def test_power_matches_textbook_values():
    # G*Power / Cohen (1988): one-sample t, two-sided alpha 0.05: d = 1, n = 10 -> 0.803;
    # d = 0.5, n = 34 -> 0.8078; one-sided d = 0.5, n = 27 -> 0.8118; two-sample d = 0.5,
    # 64 per group -> 0.8015.
    assert power_paired(1.0, 10) == pytest.approx(0.803, abs=0.001)
    assert power_paired(0.5, 34) == pytest.approx(0.8078, abs=5e-4)
    assert power_paired(0.5, 27, alternative="greater") == pytest.approx(0.8118, abs=5e-4)
    assert power_welch(0.5, 64, 64) == pytest.approx(0.8015, abs=5e-4)
    assert seeds_for_power(1.0, paired=True) == 10
    assert seeds_for_power(0.5, paired=True) == 34
    assert seeds_for_power(0.5, paired=False) == 64
    assert power_paired(0.0, 10) == pytest.approx(0.05, abs=1e-9)


@pytest.mark.parametrize("n,d", [(2, 5.87), (2, 1.5), (3, 2.0), (3, 6.0), (5, 1.2), (5, 0.4)])
def test_power_agrees_with_monte_carlo_at_df_1_2_4(n, d):
    # n = 2, d = 5.87 is the case: nc 8.3 at df 1, where scipy's noncentral t gives
    # NaN in the lower tail and the old code printed 6.1e-06 (Monte Carlo: 0.487).
    rng = np.random.default_rng(n * 100 + int(10 * d))
    x = rng.normal(d, 1.0, size=(200_000, n))
    p = sps.ttest_1samp(x, 0.0, axis=1).pvalue
    mc = float((p < 0.05).mean())
    se = np.sqrt(mc * (1 - mc) / len(x))
    assert power_paired(d, n) == pytest.approx(mc, abs=4 * se + 1e-3)


def test_power_is_never_below_alpha_nor_above_one():
    for alpha in (0.05, 0.01):
        for df in (1, 2, 3, 4, 6, 10, 30):
            for nc in np.concatenate([np.linspace(0, 10, 41), [12.0, 15.0, 20.0, 40.0, 80.0]]):
                for alt in ("two-sided", "greater"):
                    p = t_power(float(nc), df, alpha, alt)
                    assert np.isfinite(p) and alpha - 1e-12 <= p <= 1.0, (df, nc, alt, p)
    # and it grows with the effect (no fallback jumping down in a tail)
    ps = [t_power(nc, 1) for nc in np.linspace(0, 40, 81)]
    assert all(b >= a - 1e-9 for a, b in zip(ps, ps[1:]))


def test_minimal_detectable_effect_has_80_percent_power():
    for n in (2, 3, 5, 12):
        d = mde(n)
        assert power_paired(d, n) == pytest.approx(0.8, abs=1e-5)
    assert mde(10) == pytest.approx(0.996, abs=0.002)  # d = 1 at n = 10 gives 0.803
    assert mde(2) > mde(3) > mde(5) > mde(12)
    assert mde(5, alternative="greater") < mde(5)


def test_holm_matches_the_step_down_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert list(holm([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(holm([0.5, 0.9])) == pytest.approx([1.0, 1.0])


# --- the family ------------------------------------------------------------------------------


def test_paired_by_seed_with_uncorrected_ci_and_correction():
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
    assert row["diff"] == pytest.approx(np.mean(np.subtract(arm, base)))
    # Welch on the same numbers is far weaker: the baseline's seed spread hides the effect
    assert row.p < sps.ttest_ind(arm, base, equal_var=False).pvalue
    # BH over the whole family (here two metrics)
    assert list(out.p_adj) == pytest.approx(list(sps.false_discovery_control(out.p.to_numpy(), method="bh")))
    # planning: the smallest effect these seeds detect, in metric units
    sd = np.std(np.subtract(arm, base), ddof=1)
    assert row.mde == pytest.approx(mde(5) * sd) and "power" not in out.columns


def test_two_seeds_give_no_interval():
    row = compare_family(trials(range(2), range(2), [0.1, 0.3], [0.5, 0.6]), ["noise_acc_gaussian_0.4"]).iloc[0]
    assert row.n == 2 and np.isnan(row.ci_low) and np.isnan(row.ci_high)
    assert row.p == pytest.approx(sps.ttest_rel([0.5, 0.6], [0.1, 0.3]).pvalue)


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
    base = [0.0980, 0.0980, 0.0980]
    arm = [0.0980 + 0.181, 0.0980 + 0.181, 0.0980 + 0.181]
    row = compare_family(trials(range(3), range(3), base, arm), ["noise_acc_gaussian_0.4"]).iloc[0]
    assert row["diff"] == pytest.approx(0.181) and np.isnan(row.p) and np.isnan(row.p_adj)


def _two_arms(seeds=range(5), effect=0.3, rng_seed=0):
    """A baseline and two regularized arms (one with an effect, one without), paired by seed."""
    rng = np.random.default_rng(rng_seed)
    base = rng.uniform(0.2, 0.6, len(seeds))
    rows = [{"arm": "none", "baseline": True, "condition": "", "train.seed": s, "noise_acc_gaussian_0.4": b,
             "clean_acc": 0.99 + rng.normal(0, 0.003)} for s, b in zip(seeds, base)]
    for arm, eff in (("a", effect), ("b", 0.0)):
        rows += [{"arm": arm, "baseline": False, "condition": "", "train.seed": s,
                  "noise_acc_gaussian_0.4": b + eff + rng.normal(0, 0.02), "clean_acc": 0.98 + rng.normal(0, 0.003)}
                 for s, b in zip(seeds, base)]
    return pd.DataFrame(rows)


SPEC = {"alpha": 0.05, "metric": "clean_acc",
        "hypotheses": [{"metric": "noise_acc_gaussian_0.4", "direction": "greater", "smallest_effect": 0.05}]}


def test_declared_hypotheses_are_confirmatory_with_holm_and_the_rest_exploratory_with_bh():
    t = _two_arms()
    fam = comparison_family(t, SPEC)
    conf, expl = fam.confirmatory, fam.exploratory
    assert list(conf.arm) == ["a", "b"] and set(conf.metric) == {"noise_acc_gaussian_0.4"}
    p = []
    for arm in ("a", "b"):
        x = t[t.arm == arm].sort_values("train.seed")["noise_acc_gaussian_0.4"].to_numpy()
        y = t[t.arm == "none"].sort_values("train.seed")["noise_acc_gaussian_0.4"].to_numpy()
        p.append(sps.ttest_rel(x, y, alternative="greater").pvalue)
    assert list(conf.p) == pytest.approx(p)
    assert list(conf.p_adj) == pytest.approx(list(holm(p)))
    # the declared rows leave the exploratory family; BH over what is left
    assert not set(zip(expl.metric, expl.arm)) & set(zip(conf.metric, conf.arm))
    assert list(expl.p_adj) == pytest.approx(list(sps.false_discovery_control(expl.p.to_numpy(), method="bh")))
    assert fam.size == len(conf) + len(expl) == 4
    # a: +0.3 with sd 0.03 over 5 seeds -> efficacy; b: 0 +- 0.03 -> the 0.05 effect is excluded
    assert list(conf.decision) == ["efficacy", "futility"]
    line = decision_line(next(conf.itertuples()), fam.alpha)
    assert line.startswith("a > none on noise_acc_gaussian_0.4") and "decided after 5 seeds (efficacy)" in line


def test_two_seeds_decision_line_says_no_interval():
    fam = comparison_family(_two_arms(seeds=range(2)), SPEC)
    for r in fam.confirmatory.itertuples():
        line = decision_line(r, fam.alpha)
        # with 1 df no interval is shown and no decision taken on one, even at p_Holm < 0.05
        assert "n = 2: no interval" in line and "[" not in line and r.decision == "undecided"
        assert "undecided at 2 seeds (fixed design; a decision needs >= 3 seeds" in line


def test_futility_is_the_shown_interval_excluding_the_smallest_effect():
    fam = comparison_family(_two_arms(seeds=range(4), effect=0.0, rng_seed=1), SPEC)
    for r in fam.confirmatory.itertuples():
        d = r.diff
        assert r.ci_level == pytest.approx(0.9)  # two one-sided 5 % tests
        assert (r.decision == "futility") == (r.ci_high < 0.05) and r.ci_low < d < r.ci_high
        assert "90 % CI [" in decision_line(r, fam.alpha)
    assert "futility" in set(fam.confirmatory.decision)


def test_sequential_spec_replays_the_looks():
    from analysis.sequential import Design, decide

    spec = {**SPEC, "seeds": {"min": 3, "max": 12}}
    t = _two_arms(seeds=range(6), effect=0.3)
    fam = comparison_family(t, spec)
    a, b = fam.confirmatory.itertuples()
    base = t[t.arm == "none"].set_index("train.seed")["noise_acc_gaussian_0.4"]
    for row in (a, b):
        d = t[t.arm == row.arm].set_index("train.seed")["noise_acc_gaussian_0.4"] - base
        # alpha split over the two declared rows (Bonferroni), looks from 3 seeds on
        ref = decide(d.sort_index().to_numpy(), Design(0.05, "greater", 0.05 / 2, 3, 12))
        assert (row.decision, row.decided_at) == (ref.decision, ref.n)
    assert a.decision == "efficacy" and b.decision == "futility" and a.decided_at <= 6 and b.decided_at <= 6
    assert f"decided after {a.decided_at} seeds (efficacy)" in decision_line(a, fam.alpha)
    assert fam.sequential == {"min": 3, "max": 12}


def test_without_declarations_everything_is_exploratory():
    fam = comparison_family(_two_arms(), {})
    assert isinstance(fam, Family) and not len(fam.confirmatory) and len(fam.exploratory) == 4


# --- one family in console and report; repeats count once ----------------------------------------


def _console_rows(text: str) -> dict[tuple[str, str], str]:
    """(arm, metric) -> p_BH as printed by the console summary."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s{2}(pixel_th .+?)\s{2,}\d+\s{2}(\S+)\s+\S+\s{2}(\[.+?\]|n = \d+: no interval|–)\s+(\S+)\s+\S+$",
                     line)
        if m:
            out[(m.group(1).strip(), m.group(2))] = m.group(4)
    return out


def test_console_and_report_print_the_same_family(tmp_path):
    from analysis.summary import sweep_summary

    exp = write_fake_sweep(tmp_path / "sweeps", "fake", seeds=(0, 1, 2), error_trial=False)
    gather(exp, tmp_path)
    console = sweep_summary(tmp_path, "fake")
    assert report_main(["fake", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "reports" / "fake" / "report.md").read_text()
    size = int(re.search(r"Family of (\d+) comparisons", console).group(1))
    assert f"Family of {size} comparisons" in report
    rows = _console_rows(console)
    assert len(rows) >= 8  # 4 arms x clean_acc, median_l2 (+ median_linf)
    for (arm, metric), p in rows.items():
        line = next(ln for ln in report.splitlines() if ln.startswith(f"| {metric} | {arm} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert f"{float(cells[9]):.2g}" == p, (arm, metric, cells[9], p)


def test_a_rerun_sweep_counts_each_seed_once(tmp_path):
    """Two sweeps with identical trials (B reruns A): every table, plot statistic and test of
    the comparison equals that of A alone."""
    from analysis import plots
    from analysis.frames import load_frames
    from analysis.report import noise_table

    for name in ("a", "b"):
        gather(write_fake_sweep(tmp_path / "sweeps", name, seeds=(0, 1, 2), error_trial=False, rng_seed=0), tmp_path)
    one = load_frames(["a"], tmp_path, by_config=True)
    both = load_frames(["a", "b"], tmp_path, by_config=True)
    assert both.repeats == len(one.done)
    pd.testing.assert_frame_equal(noise_table(both.noise), noise_table(one.noise))
    assert (noise_table(both.noise)["n"] == 3).all()
    for kind in ("gaussian", "uniform"):  # the noise plot's points and error bars, panel by panel
        s1, s2 = (plots.mean_sem(f.noise[f.noise["noise"] == kind], "level", "accuracy", "arm") for f in (one, both))
        pd.testing.assert_frame_equal(s1, s2)
        assert (s2["n"] == 3).all()
    r1, r2 = (plots.robust_accuracy(f.adv) for f in (one, both))
    g = ["arm", "norm", "epsilon"]
    pd.testing.assert_frame_equal(r1.groupby(g)["accuracy"].agg(["mean", "sem", "count"]),
                                  r2.groupby(g)["accuracy"].agg(["mean", "sem", "count"]))
    d1, d2 = (f.adv_sum.groupby(["arm", "norm"])["median"].agg(["mean", "sem", "count"]) for f in (one, both))
    pd.testing.assert_frame_equal(d1, d2)
    f1, f2 = (comparison_family(f.done).exploratory for f in (one, both))
    pd.testing.assert_frame_equal(f1.drop(columns=["baseline_arm"]), f2.drop(columns=["baseline_arm"]))
    assert (f2["n"] == 3).all()

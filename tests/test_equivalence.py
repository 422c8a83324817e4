"""Arm-vs-arm and equivalence hypotheses (analysis.confirmatory, analysis.sequential): two
one-sided tests, their exact power, the group-sequential rule, arms picked by their fields,
the sweep's seeds stopping per comparison, and the spec's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.confirmatory import (
    comparison_family,
    confirmatory_rows,
    decision_line,
    next_round,
    sequential_looks,
)
from analysis.sequential import Design, decide, mde_tost, power_tost, seeds_for_tost, simulate
from neuroreg.config import ConfigError
from sweep.spec import parse_spec
from sweep.tuner import build_search
from tests.test_sequential_sweep import BASE, METRIC, run_to_end, seeds_per_arm

H1 = {"metric": METRIC, "direction": "greater", "smallest_effect": 0.05}
H2 = {"metric": METRIC, "direction": "equivalent", "smallest_effect": 0.05,
      "arm": {"regularizer.pairing": "shared"}, "reference": {"regularizer.pairing": "pairs"}}


def three_arms(shared_shift: float, sd: float = 0.01, n: int = 6, seed: int = 0,
               sd_pairs: float | None = None) -> pd.DataFrame:
    """baseline, pairs and shared over n seeds; baseline trials keep the base's pairing
    field (pairs), as real ones do."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n):
        base = 0.2 + 0.05 * np.sin(s)
        pairs = base + 0.3 + rng.normal(0, sd if sd_pairs is None else sd_pairs)
        for arm, pairing, v, is_base in (("none", "pairs", base, True), ("pixel_th pairing=pairs", "pairs", pairs, False),
                                         ("pixel_th pairing=shared", "shared", pairs + shared_shift + rng.normal(0, sd),
                                          False)):
            rows.append({"arm": arm, "baseline": is_base, "condition": "", "train.seed": s,
                         "regularizer.pairing": pairing, METRIC: v, "clean_acc": 0.9})
    return pd.DataFrame(rows)


# --- the test and its planning numbers ----------------------------------------------------------


def test_power_tost_is_exact_against_simulation():
    rng = np.random.default_rng(1)
    for margin, n in ((1.0, 10), (0.6, 25), (2.0, 4)):
        d = rng.normal(0.0, 1.0, (40_000, n))
        m, se = d.mean(1), d.std(1, ddof=1) / np.sqrt(n)
        tc = sps.t.isf(0.05, n - 1)
        simulated = float(((m - tc * se > -margin) & (m + tc * se < margin)).mean())
        assert power_tost(margin, n) == pytest.approx(simulated, abs=0.01), (margin, n)
    # seeds_for_tost is the first n that reaches 80 %; mde_tost inverts the power.
    n = int(seeds_for_tost(1.0))
    assert power_tost(1.0, n - 1) < 0.8 <= power_tost(1.0, n)
    assert power_tost(mde_tost(n), n) == pytest.approx(0.8, abs=1e-4)
    assert seeds_for_tost(0.01, n_max=50) == np.inf


def test_tost_row_is_the_two_scipy_one_sided_tests():
    df = three_arms(0.004, sd=0.01)
    conf = confirmatory_rows(df[df["arm"] != "none"], [dict(H2)])
    assert len(conf) == 1
    r = next(conf.itertuples())
    assert (r.arm, r.baseline_arm, r.test) == ("pixel_th pairing=shared", "pixel_th pairing=pairs", "paired t")
    d = (df[df["arm"] == r.arm][METRIC].to_numpy() - df[df["arm"] == r.baseline_arm][METRIC].to_numpy())
    lo = sps.ttest_1samp(d, -0.05, alternative="greater").pvalue
    hi = sps.ttest_1samp(d, 0.05, alternative="less").pvalue
    assert r.p == pytest.approx(max(lo, hi))
    # p < alpha exactly when the 90 % interval lies inside the margin.
    ci = sps.ttest_1samp(d, 0.0).confidence_interval(0.90)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
    assert r.decision == "efficacy" and -0.05 < r.ci_low and r.ci_high < 0.05
    line = decision_line(r, 0.05)
    assert "≈" in line and "TOST" in line and "equivalent within ±0.05" in line


def test_tost_says_not_equivalent_beyond_the_margin_and_undecided_when_wide():
    far = next(confirmatory_rows(three_arms(0.2), [dict(H2)]).itertuples())
    assert far.decision == "futility" and far.ci_low > 0.05
    assert "not equivalent" in decision_line(far, 0.05)
    wide = next(confirmatory_rows(three_arms(0.0, sd=0.2, n=4), [dict(H2)]).itertuples())
    assert wide.decision == "undecided" and wide.seeds_needed > 4
    assert f"~{int(wide.seeds_needed)} seeds to show ±0.05" in decision_line(wide, 0.05)


def test_arm_vs_arm_rows_beside_the_baseline_rows():
    """H1 against the baseline for both arms, H2 shared vs pairs; the baseline is never the
    reference of H2 although its pairing field says pairs; Holm runs over all three."""
    fam = comparison_family(three_arms(0.0), {"hypotheses": [H1, H2]})
    conf = fam.confirmatory
    got = sorted(zip(conf["direction"], conf["arm"], conf["baseline_arm"]))
    assert got == [("equivalent", "pixel_th pairing=shared", "pixel_th pairing=pairs"),
                   ("greater", "pixel_th pairing=pairs", "none"), ("greater", "pixel_th pairing=shared", "none")]
    assert conf["p_adj"].max() <= 1 and (conf["p_adj"] >= conf["p"]).all()
    # The declared baseline comparisons left the exploratory family; the others stayed.
    explored = set(zip(fam.exploratory["metric"], fam.exploratory["arm"]))
    assert (METRIC, "pixel_th pairing=shared") not in explored and ("clean_acc", "pixel_th pairing=shared") in explored


def grid_trials(n: int = 5, base_alpha: float = 4.0) -> pd.DataFrame:
    """alpha {2, 4} x pairing {pairs, shared} and a baseline that keeps the base's alpha 4 and
    pairing pairs; shared equals pairs at the same alpha (sd 0.005), alpha 4 is 0.3 above 2."""
    rng = np.random.default_rng(7)
    rows = []
    for s in range(n):
        base = 0.2 + 0.05 * np.sin(s)
        rows.append({"arm": "none", "baseline": True, "condition": "", "train.seed": s, "regularizer.alpha": base_alpha,
                     "regularizer.pairing": "pairs", "regularizer.n_pairs": 16.0, METRIC: base})
        for alpha in (2.0, 4.0):
            level = base + (0.3 if alpha == 4.0 else 0.0) + rng.normal(0, 0.005)
            for pairing in ("pairs", "shared"):
                rows.append({"arm": f"pixel_th alpha={alpha:g} pairing={pairing}", "baseline": False, "condition": "",
                             "train.seed": s, "regularizer.alpha": alpha, "regularizer.pairing": pairing,
                             "regularizer.n_pairs": 16.0 if pairing == "pairs" else np.nan,
                             METRIC: level + rng.normal(0, 0.005)})
    return pd.DataFrame(rows)


def test_each_arm_gets_the_reference_of_its_own_alpha_never_the_baseline():
    """Review findings: a reference selector on alpha must not pick the baseline (which keeps
    the base's alpha), and with several picked arms each compared arm gets the one that
    matches it in the field the candidates differ in."""
    df = grid_trials()
    by_alpha = dict(H2, arm={"regularizer.alpha": 2.0}, reference={"regularizer.alpha": 4.0})
    rows = confirmatory_rows(df, [by_alpha])
    assert sorted(zip(rows["arm"], rows["baseline_arm"])) == [
        ("pixel_th alpha=2 pairing=pairs", "pixel_th alpha=4 pairing=pairs"),
        ("pixel_th alpha=2 pairing=shared", "pixel_th alpha=4 pairing=shared")]
    assert set(rows["test"]) == {"paired t"} and set(rows["decision"]) == {"futility"}  # 0.3 apart
    rows = confirmatory_rows(df, [H2])  # pairing: shared vs pairs, at each alpha
    assert sorted(zip(rows["arm"], rows["baseline_arm"])) == [
        ("pixel_th alpha=2 pairing=shared", "pixel_th alpha=2 pairing=pairs"),
        ("pixel_th alpha=4 pairing=shared", "pixel_th alpha=4 pairing=pairs")]
    assert set(rows["decision"]) == {"efficacy"}  # equal within 0.05 at each alpha
    more = next_round(df.iloc[: 5 * 3], {"hypotheses": [H1, H2], "seeds": {"min": 3, "max": 12}})
    assert set(more) <= set(df["arm"])  # every key a real arm, never a joined label


def test_selector_values_match_as_numbers_without_slack():
    from analysis.confirmatory import value_matches

    assert value_matches(4, 4.0) and value_matches(None, None) and value_matches(float("nan"), None)
    assert not value_matches(5e-9, 0.0) and not value_matches(0.0, None) and not value_matches("pairs", None)
    assert value_matches("shared", "shared") and not value_matches("shared", "pairs")


# --- sequential ----------------------------------------------------------------------------------


def test_sequential_tost_keeps_its_error_at_the_margin():
    design = Design(0.05, "equivalent", 0.05, 3, 12)
    at_margin = simulate(design, 0.05, 0.03, n_sims=6000, seed=3)
    # False equivalence at a true difference equal to the margin: at most alpha (+ MC error).
    assert at_margin["efficacy"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 6000)
    inside = simulate(design, 0.0, 0.02, n_sims=2000, seed=4)
    assert inside["efficacy"] > 0.95 and inside["mean_seeds"] < 8
    beyond = simulate(design, 0.15, 0.03, n_sims=2000, seed=5)
    assert beyond["futility"] > 0.95
    # The replay stops at the first crossing: later seeds never change an earlier decision.
    d = np.random.default_rng(6).normal(0.0, 0.01, 12)
    first = decide(d[:6], design)
    assert first.decision == "efficacy" and decide(d, design).n == first.n


def test_next_round_continues_the_pair_an_open_equivalence_needs():
    df = three_arms(0.0, sd=0.03, n=6, sd_pairs=1e-4)
    spec = {"hypotheses": [H1, H2], "seeds": {"min": 3, "max": 12}}
    looks = sequential_looks(df, spec)
    last = looks.groupby(["arm", "direction"]).tail(1).set_index("direction")
    # The case in point (seeded data): both arms beat the baseline by 0.3 (decided), while
    # shared - pairs, sd 0.03 around 0, is not yet shown within 0.05.
    assert set(last.loc["greater", "decision"]) == {"efficacy"} and last.loc["equivalent", "decision"] == "continue"
    more = next_round(df, spec)
    assert more == {"pixel_th pairing=pairs": True, "pixel_th pairing=shared": True, "none": False}


def test_sweep_runs_the_equivalence_to_its_end_without_the_baseline(monkeypatch):
    """The baseline stops once both arms beat it; the two arms run on, seed for seed, until
    the equivalence is decided, and the searcher never stalls waiting for baseline seeds."""
    raw = {"name": "eq", "base": BASE, "space": {"regularizer.alpha": {"grid": [2.0, 4.0]}},
           "search": {"algorithm": "grid"}, "seeds": {"min": 3, "max": 12},
           "hypotheses": [dict(H1), {**H2, "arm": {"regularizer.alpha": 2.0}, "reference": {"regularizer.alpha": 4.0}}],
           "metric": METRIC, "mode": "max"}
    spec = parse_spec(raw, default_name="eq", source="test")

    def metric(config):
        p, i = config["params"], int(config.get("__trial_index__", 0))
        base = 0.2 + 0.05 * np.sin(3.0 * i)
        if p.get("regularizer.target") == "none":
            return base
        return base + 0.3 + np.random.default_rng([int(p["regularizer.alpha"]), i]).normal(0, 0.02)

    import tests.test_sequential_sweep as tss

    monkeypatch.setattr(tss, "fake_metric", metric)  # run_to_end reports it for each trial
    searcher, _, _ = build_search(spec)
    seeds = seeds_per_arm(run_to_end(searcher))
    assert seeds[2.0] == seeds[4.0] == list(range(len(seeds[2.0])))
    assert len(seeds["none"]) < len(seeds[2.0]) <= 12


# --- the spec's checks -------------------------------------------------------------------------


@pytest.mark.parametrize("hyp, field, words", [
    ({**H2, "reference": None}, "hypotheses[0].reference", "name the reference arm"),
    ({**H2, "arm": {"regularizer.pairing": "pairs"}}, "hypotheses[0].arm", "same arm"),
    ({**H2, "reference": {"regularizer.pairng": "pairs"}}, "hypotheses[0].reference.regularizer.pairng",
     "not a config field"),
    ({**H2, "reference": {"regularizer.pairing": "pears"}}, "hypotheses[0].reference", "picks none"),
    ({**H2, "reference": {"regularizer.pairing": ["pairs"]}}, "hypotheses[0].reference.regularizer.pairing",
     "one value"),
    ({**H2, "reference": {"regularizer.target": "none"}}, "hypotheses[0].reference", "compares with the baseline"),
    ({**H2, "arm": {"regularizer.pairing": "shared", "regularizer.alpha": 3.0}}, "hypotheses[0].arm", "picks none"),
])
def test_bad_selectors_name_the_field(hyp, field, words):
    raw = {"name": "eq", "base": BASE,
           "space": {"regularizer.pairing": {"grid": ["pairs", "shared"]},
                     "regularizer.n_pairs": {"grid": [None], "when": {"regularizer.pairing": ["shared"]}}},
           "search": {"algorithm": "grid"}, "seeds": 3, "hypotheses": [hyp], "metric": METRIC, "mode": "max"}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw, default_name="eq", source="test")
    assert e.value.field == field and words in str(e.value)


def test_report_prints_the_equivalence_decision(tmp_path):
    """A sweep whose saved spec declares an arm-vs-arm equivalence: gather, then the Markdown
    report shows its decision line and the reference of each confirmatory row."""
    import yaml
    from test_analysis import write_fake_sweep

    from analysis.gather import gather
    from analysis.report import main as report_main

    exp = write_fake_sweep(tmp_path / "sweeps", "eq", seeds=(0, 1, 2), error_trial=False)
    spec = yaml.safe_load((exp / "sweep.yaml").read_text())
    spec["hypotheses"] = [
        {"metric": "clean_acc", "direction": "greater", "smallest_effect": 0.05},
        {"metric": "clean_acc", "direction": "equivalent", "smallest_effect": 0.05,
         "arm": {"regularizer.alpha": 8.0, "regularizer.th": 0.2},
         "reference": {"regularizer.alpha": 2.0, "regularizer.th": 0.2}},
    ]
    (exp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    gather(exp, tmp_path)
    assert report_main(["eq", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "reports" / "eq" / "report.md").read_text()
    eq_lines = [ln for ln in report.splitlines() if " ≈ " in ln]
    assert len(eq_lines) == 1 and "(margin ±0.05, TOST)" in eq_lines[0], eq_lines
    assert "alpha=8" in eq_lines[0].split(" ≈ ")[0] and "alpha=2" in eq_lines[0].split(" ≈ ")[1]
    assert "| reference |" in report and "two one-sided tests" in report


def test_an_ambiguous_reference_is_refused_before_the_sweep():
    """pairs arms at n_pairs 8 and 16, a shared arm at 4: the reference selector picks two
    arms that differ in n_pairs, and the shared arm matches neither."""
    raw = {"name": "eq", "base": BASE, "search": {"algorithm": "grid"}, "seeds": 3, "metric": METRIC, "mode": "max",
           "space": {"regularizer.pairing": {"grid": ["pairs", "shared"]},
                     "regularizer.n_pairs": {"grid": [8, 16], "when": {"regularizer.pairing": ["pairs"]}}},
           "hypotheses": [H2]}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw, default_name="eq", source="test")
    assert e.value.field == "hypotheses[0].reference" and "picks no arm to compare with" in str(e.value)
    raw["hypotheses"] = [{**H2, "reference": {"regularizer.pairing": "pairs", "regularizer.n_pairs": 16}}]
    assert parse_spec(raw, default_name="eq", source="test").hypotheses[0].reference["regularizer.n_pairs"] == 16

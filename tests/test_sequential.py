"""The sequential test of a declared hypothesis (analysis.sequential): boundaries against the
textbook, and a simulation over synthetic paired differences (no training) of its type-I
error, its power at the smallest effect and the seeds it uses against the fixed design."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.confirmatory import next_round, sequential_looks
from analysis.sequential import (
    Design,
    _z_stats,
    decide,
    efficacy_bounds,
    obf_spending,
    seeds_for_power,
    simulate,
    t_bounds,
)

ALPHA = 0.05
DELTA = 0.05  # smallest_effect of mnist_repro.yaml (5 points of accuracy)
SD = 0.055
"""sd of the paired differences the default design {min: 3, max: 12} is powered for: at
DELTA / SD = 0.91 it reaches >= 80 % (simulated 85 %); up to SD = 0.06 it still has ~80 %."""
N_SIMS = 2000
MC = 2 * math.sqrt(ALPHA * (1 - ALPHA) / N_SIMS)  # two Monte Carlo standard errors at alpha


def test_boundaries_match_the_textbook():
    # Lan-DeMets O'Brien-Fleming spending, 5 equally spaced looks, one-sided 0.025: the
    # boundaries of gsDesign (sfLDOF; Jennison & Turnbull 2000, ch. 7): 4.877,
    # 3.357, 2.680, 2.290, 2.031.
    c = efficacy_bounds([1, 2, 3, 4, 5], 5, 0.025)
    assert list(c) == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=2e-3)
    assert efficacy_bounds([7], 7, 0.05)[0] == pytest.approx(1.6449, abs=1e-4)  # one look: z_{0.95}
    assert obf_spending(1.0, 0.05) == pytest.approx(0.05)
    assert obf_spending(0.25, 0.05) < 1e-3  # early looks spend almost nothing


def test_boundaries_spend_alpha_on_the_z_scale():
    # A Brownian motion looked at after 3 .. 12 seeds crosses the boundaries with
    # probability alpha (Monte Carlo, 400,000 paths).
    ns = list(range(3, 13))
    c = efficacy_bounds(ns, 12, ALPHA)
    rng = np.random.default_rng(1)
    s = np.cumsum(rng.standard_normal((400_000, 12)), axis=1)
    z = s[:, np.array(ns) - 1] / np.sqrt(ns)
    crossed = (z >= c).any(axis=1).mean()
    assert crossed == pytest.approx(ALPHA, abs=4 * math.sqrt(ALPHA * (1 - ALPHA) / 400_000))


DESIGN = Design(DELTA, "greater", ALPHA, min_seeds=3, max_seeds=12)


def test_type_one_error_with_identical_arms():
    r = simulate(DESIGN, effect=0.0, sd=SD, n_sims=N_SIMS, seed=11)
    # With a huge sd the futility rule never helps: the efficacy boundaries alone hold alpha.
    worst = simulate(DESIGN, effect=0.0, sd=100.0, n_sims=N_SIMS, seed=13)
    print(f"\nidentical arms, {N_SIMS} sequences: type-I error {r['efficacy']:.4f} at sd {SD}, "
          f"{worst['efficacy']:.4f} at sd 100 (alpha {ALPHA}, + MC error {MC:.4f}); futility {r['futility']:.3f}; "
          f"mean seeds {r['mean_seeds']:.2f}")
    assert r["efficacy"] <= ALPHA + MC and worst["efficacy"] <= ALPHA + MC
    # the same over 20,000 sequences, to say the control is not luck
    big = simulate(DESIGN, 0.0, 100.0, 20_000, seed=12)["efficacy"]
    assert big <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / 20_000)
    two = simulate(Design(DELTA, "two-sided", ALPHA, 3, 12), 0.0, 100.0, 20_000, seed=14)["efficacy"]
    assert two <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / 20_000)


def test_textbook_z_boundaries_would_not_hold_alpha_for_few_seeds():
    # Why the boundaries are calibrated for the t sequence: the z-scale boundaries applied to
    # p-value-mapped t statistics at 3 .. 12 seeds exceed alpha (about 0.055 for 0.05).
    ns = list(range(3, 13))
    z_c = efficacy_bounds(ns, 12, ALPHA)
    t_c = t_bounds(tuple(ns), 12, ALPHA)
    assert (t_c[1:] > z_c[1:]).all()  # the calibrated ones are stricter after the first look
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100_000, 12))
    z = np.stack([_z_stats(x[:, :n], 1.0)[0] for n in ns], axis=1)
    naive, calibrated = (z >= z_c).any(axis=1).mean(), (z >= t_c).any(axis=1).mean()
    # Monte Carlo error of this check and of the calibration (400,000 sequences) together
    se = math.sqrt(ALPHA * (1 - ALPHA) * (1 / len(x) + 1 / 400_000))
    assert naive > ALPHA + 4 * se and calibrated <= ALPHA + 3 * se


def test_power_at_the_smallest_effect_and_fewer_seeds_than_the_fixed_design():
    alt = simulate(DESIGN, effect=DELTA, sd=SD, n_sims=N_SIMS, seed=21)
    null = simulate(DESIGN, effect=0.0, sd=SD, n_sims=N_SIMS, seed=22)
    power = alt["efficacy"]
    # The fixed design of the same power: one one-sided paired t-test at alpha after n seeds.
    fixed = seeds_for_power(DELTA / SD, paired=True, power=power, alpha=ALPHA, alternative="greater")
    fixed80 = seeds_for_power(DELTA / SD, paired=True, power=0.8, alpha=ALPHA, alternative="greater")
    print(f"\neffect = smallest effect {DELTA}, sd {SD}: power {power:.3f} (futility {alt['futility']:.3f}, "
          f"max reached {alt['max_reached']:.3f}); mean seeds {alt['mean_seeds']:.2f} under the effect, "
          f"{null['mean_seeds']:.2f} with identical arms; fixed design of the same power {fixed:.0f} seeds "
          f"(80 %: {fixed80:.0f})")
    assert power >= 0.8
    assert alt["mean_seeds"] < fixed and null["mean_seeds"] < fixed
    assert alt["futility"] <= DESIGN.futility + MC  # futility stops at the smallest effect stay rare


def test_decide_stops_at_the_first_crossing():
    rng = np.random.default_rng(0)
    big = 0.3 + rng.normal(0, 0.02, 12)
    d = decide(big, DESIGN)
    assert d.decision == "efficacy" and d.n == d.looks[-1].n and d.n < 12
    assert all(lk.decision == "continue" for lk in d.looks[:-1])
    assert d.looks[-1].statistic >= d.looks[-1].efficacy_bound
    none = rng.normal(0, 0.01, 12)
    f = decide(none, DESIGN)
    assert f.decision == "futility" and f.looks[-1].futility_statistic <= -f.looks[-1].futility_bound
    assert decide(big[:2], DESIGN).decision == "too few seeds"
    # "less" mirrors "greater"; two-sided decides either way
    assert decide(-big, Design(DELTA, "less")).decision == "efficacy"
    assert decide(-big, Design(DELTA, "two-sided")).decision == "efficacy"
    assert decide(-big, DESIGN).decision == "futility"
    # undecided data at max: max reached; before max: continue
    mid = np.array([0.08, -0.05, 0.1, 0.0, 0.09, -0.06, 0.07, 0.02, 0.11, -0.04, 0.06, 0.03])
    short = Design(DELTA, "greater", ALPHA, 3, 5)
    assert decide(mid[:4], short).decision == "continue" and decide(mid[:5], short).decision == "max reached"


def test_next_round_keeps_undecided_arms_and_their_baseline():
    rng = np.random.default_rng(5)
    seeds = range(4)
    base = rng.uniform(0.2, 0.6, 4)
    rows = [{"arm": "none", "baseline": True, "condition": "", "train.seed": s, "acc": b} for s, b in zip(seeds, base)]
    for arm, eff, sd in (("decided", 0.4, 0.01), ("open", 0.05, 0.2)):
        rows += [{"arm": arm, "baseline": False, "condition": "", "train.seed": s, "acc": b + eff + rng.normal(0, sd)}
                 for s, b in zip(seeds, base)]
    spec = {"alpha": 0.05, "seeds": {"min": 3, "max": 12},
            "hypotheses": [{"metric": "acc", "direction": "greater", "smallest_effect": 0.05}]}
    done = pd.DataFrame(rows)
    assert next_round(done, spec) == {"decided": False, "open": True, "none": True}
    looks = sequential_looks(done, spec)
    assert set(looks.columns) >= {"arm", "metric", "n", "statistic", "efficacy_bound", "decision"}
    assert list(looks[looks.arm == "open"].n) == [3, 4]
    assert next_round(done[done.arm != "open"], spec) == {"decided": False, "none": False}

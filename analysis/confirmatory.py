"""The confirmatory family: the declared hypotheses of a sweep, tested and decided.

A hypothesis compares arms with a reference on one metric. By default every regularized
arm against the baseline of its condition (greater, less, two-sided); with ``arm`` and
``reference`` (field -> value selectors, e.g. ``{regularizer.pairing: shared}``) the chosen
arms against another arm of their condition, e.g. for ``direction: equivalent``:
|shared - pairs| < smallest_effect, shown by two one-sided tests (TOST).

``comparison_family(done, spec)`` splits a sweep's comparisons into this family (Holm) and
the exploratory rest (Benjamini-Hochberg, analysis.stats.compare_family); the console, the
Markdown and the HTML report all print it. ``next_round`` is the sequential sweep's rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.selectors import pick_reference, value_matches
from analysis.sequential import ALPHA, Design, decide, mde_tost, seeds_for_power, seeds_for_tost
from analysis.stats import (
    _COLS,
    CONFIRMATORY_CORRECTION,
    MIN_CI_SEEDS,
    _compare_one,
    _series,
    arms_with_baseline,
    bh_adjust,
    compare_family,
    family_metrics,
    holm,
    paired_differences,
)

SYMBOLS = {"greater": ">", "less": "<", "two-sided": "≠", "equivalent": "≈"}


@dataclass
class Family:
    """The comparisons of a sweep, split by what was declared before it ran.

    ``confirmatory``: one row per declared hypothesis and compared arm (one-sided test in
    the declared direction, or TOST, Holm over these rows, a decision each); ``exploratory``:
    every other arm x metric against its baseline (two-sided, Benjamini-Hochberg over these rows).
    """

    confirmatory: pd.DataFrame
    exploratory: pd.DataFrame
    alpha: float = ALPHA
    sequential: dict[str, int] | None = None
    """{min, max} seeds of a sequential sweep; None for a fixed number of seeds."""

    @property
    def size(self) -> int:
        return len(self.confirmatory) + len(self.exploratory)

    def rows(self) -> pd.DataFrame:
        """Both families in one frame (``family`` column), confirmatory first."""
        parts = [f.assign(family=name) for name, f in (("confirmatory", self.confirmatory),
                                                        ("exploratory", self.exploratory)) if len(f)]
        return pd.concat(parts, ignore_index=True) if parts else self.exploratory.assign(family=[])


def hypotheses_of(spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The declared hypotheses of a saved sweep spec (sweep.yaml), with defaults filled."""
    out = []
    for h in (spec or {}).get("hypotheses") or []:
        if isinstance(h, Mapping) and h.get("metric"):
            out.append({"metric": str(h["metric"]), "direction": str(h.get("direction") or "greater"),
                        "smallest_effect": float(h.get("smallest_effect") or np.nan),
                        "arm": dict(h.get("arm") or {}), "reference": dict(h.get("reference") or {})})
    return out


def sequential_of(spec: Mapping[str, Any] | None) -> dict[str, int] | None:
    """{min, max} of ``seeds: {min: 3, max: 12}``, else None."""
    seeds = (spec or {}).get("seeds")
    if isinstance(seeds, Mapping) and "min" in seeds and "max" in seeds:
        return {"min": int(seeds["min"]), "max": int(seeds["max"])}
    return None


# --- which arms a hypothesis compares ---------------------------------------------------------


def selected(trials: pd.DataFrame, selector: Mapping[str, Any]) -> pd.Series:
    """Regularized rows whose config columns hold every value of ``selector``
    (``value_matches``). A field the trials do not have selects nothing. Baseline trials are
    never selected: they keep the base's regularizer fields (alpha 4, pairing pairs) without
    training with them, and a hypothesis without ``reference`` already means the baseline."""
    mask = ~trials["baseline"].astype(bool) if "baseline" in trials.columns else pd.Series(True, index=trials.index)
    for key, want in selector.items():
        if key not in trials.columns:
            return pd.Series(False, index=trials.index)
        mask &= trials[key].map(lambda v, w=want: value_matches(v, w)).astype(bool)
    return mask


def _fields(trials: pd.DataFrame) -> dict[str, Any]:
    """An arm's regularizer fields (its non-regularizer ones are its condition)."""
    row = trials.iloc[0]
    return {c: row[c] for c in trials.columns if c.startswith("regularizer.")}


def compared_arms(done: pd.DataFrame, h: Mapping[str, Any]) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame, str]]:
    """(arm, its trials, the reference's trials, reference label) for each arm ``h`` compares.

    Without a ``reference``: every regularized arm (those ``h['arm']`` selects, if given)
    against its condition's baseline. With one: within each condition, every other
    regularized arm (those ``h['arm']`` selects, if given) against the one arm of the
    reference selector's that ``pick_reference`` gives it; an arm with none, or several, is
    not compared (sweep.validation refuses such a sweep before it runs)."""
    arm_sel, ref_sel = h.get("arm") or {}, h.get("reference") or {}
    if not ref_sel:
        for arm, a, base, base_arm in arms_with_baseline(done):
            if not arm_sel or selected(a, arm_sel).all():
                yield arm, a, base, base_arm
        return
    for _cond, d in done.groupby("condition", sort=True, dropna=False):
        is_ref = selected(d, ref_sel)
        refs = [(label, r) for label, r in d[is_ref].groupby("arm", sort=True)]
        if not refs:
            continue
        candidates = [_fields(r) for _label, r in refs]
        rest = d[~is_ref & (selected(d, arm_sel) if arm_sel else ~d["baseline"].astype(bool))]
        for arm, a in rest.groupby("arm", sort=True):
            picked = pick_reference(_fields(a), candidates)
            if len(picked) == 1:
                label, r = refs[picked[0]]
                yield arm, a, r, label


# --- the tests ----------------------------------------------------------------------------------


def _compare_equivalence(a: pd.DataFrame, ref: pd.DataFrame, m: str, seed_col: str | None, alpha: float,
                         margin: float) -> dict:
    """Two one-sided tests of |a - ref| < margin (scipy.stats t-tests against -margin and
    +margin), paired by seed where the arms share seeds, else Welch's. p is the larger of the
    two one-sided p-values; the interval is the (1 - 2 alpha) one whose inclusion in
    (-margin, margin) is the same test; mde the smallest margin shown with 80 % power at a
    true difference of 0."""
    # The difference, its sd and the interval are the two-sided comparison's, at 1 - 2 alpha.
    res = _compare_one(a, ref, m, seed_col, alpha, "two-sided", 1 - 2 * alpha)
    res.update(p=np.nan, mde=np.nan)
    if res["sd"] != res["sd"]:
        return res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if res["test"] == "paired t":
            d = paired_differences(a, ref, m, seed_col).to_numpy(float)
            lo = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
            hi = sps.ttest_1samp(d, margin, alternative="less").pvalue
            n_mde = mde_tost(len(d), True, alpha=alpha)
        else:
            x = _series(a, m, seed_col).to_numpy(float)
            y = _series(ref, m, seed_col).to_numpy(float)
            x, y = x[np.isfinite(x)], y[np.isfinite(y)]
            lo = sps.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue
            hi = sps.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue
            n_mde = mde_tost(len(x), False, len(y), alpha=alpha)
    res.update(p=float(max(lo, hi)), mde=n_mde * res["sd"])
    return res


def comparison_family(done: pd.DataFrame, spec: Mapping[str, Any] | None = None,
                      seed_col: str = "train.seed") -> Family:
    """THE comparison family of a sweep (finished trials ``done``, saved spec ``spec``): the
    console, the Markdown and the HTML report all print this one."""
    spec = spec or {}
    alpha = float(spec.get("alpha") or ALPHA)
    hyps = hypotheses_of(spec)
    seq = sequential_of(spec)
    objectives = list((spec.get("search") or {}).get("metrics") or []) + [spec.get("metric") or ""]
    extra = [m for m in objectives if m and m != "best_val_acc"]
    explore = compare_family(done, family_metrics(done, extra), seed_col, alpha)
    conf = confirmatory_rows(done, hyps, alpha, seq, seed_col)
    if len(conf):
        # Only the declared comparisons against the baseline leave the exploratory family
        # (an arm-vs-arm hypothesis is a comparison the exploratory family does not make).
        declared = {(m, a) for m, a, b in zip(conf["metric"], conf["arm"], conf["baseline_arm"])
                    if b in set(explore["baseline_arm"])}
        explore = explore[[(m, a) not in declared for m, a in zip(explore["metric"], explore["arm"])]]
        explore = bh_adjust(explore)  # again, over the rows left
    return Family(conf, explore.reset_index(drop=True), alpha, seq)


def confirmatory_rows(done: pd.DataFrame, hyps: Sequence[Mapping[str, Any]], alpha: float = ALPHA,
                      seq: Mapping[str, int] | None = None, seed_col: str = "train.seed") -> pd.DataFrame:
    """One row per declared hypothesis and compared arm: the one-sided (or two-sided) test,
    or TOST for equivalence, Holm over the rows, the planning numbers and the decision
    (fixed design, or the replayed sequential looks of ``analysis.sequential`` with alpha
    split over the rows, Bonferroni). ``baseline_arm`` holds the reference arm."""
    rows = []
    has_seed = seed_col in done.columns
    for h in hyps:
        if h["metric"] not in done.columns:
            continue
        # A one-sided test at alpha is two one-sided bounds of a (1 - 2 alpha) interval: its
        # lower bound is the efficacy test (before Holm), its upper bound the futility test.
        # TOST likewise: equivalent at alpha iff the (1 - 2 alpha) interval lies within the margin.
        level = 1 - alpha if h["direction"] == "two-sided" else 1 - 2 * alpha
        for arm, a, ref, ref_arm in compared_arms(done, h):
            col = seed_col if has_seed else None
            if h["direction"] == "equivalent":
                test = _compare_equivalence(a, ref, h["metric"], col, alpha, h["smallest_effect"])
            else:
                test = _compare_one(a, ref, h["metric"], col, alpha, h["direction"], level)
            r = {"metric": h["metric"], "arm": arm, "baseline_arm": ref_arm, "direction": h["direction"],
                 "smallest_effect": h["smallest_effect"], "ci_level": level, **test}
            r["seeds_needed"] = _seeds_needed(r, alpha)
            r["_diffs"] = paired_differences(a, ref, h["metric"], seed_col) if has_seed else pd.Series(dtype=float)
            rows.append(r)
    cols = [*_COLS, "ci_level", "direction", "smallest_effect", "seeds_needed", "decision", "decided_at", "design"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    out["p_adj"] = np.nan
    ok = out["p"].notna()
    if ok.any():
        out.loc[ok, "p_adj"] = holm(out.loc[ok, "p"].to_numpy(float))
    decisions = [_decide(r, alpha, len(out), seq) for r in out.to_dict("records")]
    out["decision"] = [d[0] for d in decisions]
    out["decided_at"] = [d[1] for d in decisions]
    out["design"] = "sequential" if seq else "fixed"
    return out[cols]


def _seeds_needed(r: Mapping[str, Any], alpha: float) -> float:
    """Seeds per arm for 80 % power at the smallest effect (equivalence: to show the margin
    at a true difference of 0), from the observed sd."""
    if not (r["sd"] == r["sd"] and r["sd"] > 0):
        return np.nan
    paired = r["test"] == "paired t"
    if r["direction"] == "equivalent":
        return seeds_for_tost(r["smallest_effect"] / r["sd"], paired, alpha=alpha)
    return seeds_for_power(r["smallest_effect"] / r["sd"], paired, alpha=alpha, alternative=r["direction"])


def _decide(r: Mapping[str, Any], alpha: float, m: int, seq: Mapping[str, int] | None) -> tuple[str, int]:
    """(decision, seeds) of one confirmatory row."""
    n = int(r["n"]) if r["n"] == r["n"] else 0
    if seq:
        design = Design(r["smallest_effect"], r["direction"], alpha / m, seq["min"], seq["max"])
        d = decide(r["_diffs"].to_numpy(float), design)
        return d.decision, d.n
    # Below MIN_CI_SEEDS no interval is shown, and no decision is taken on one.
    if n < MIN_CI_SEEDS or r["p"] != r["p"] or r["ci_low"] != r["ci_low"]:
        return "undecided", n
    sign = -1.0 if r["direction"] == "less" else 1.0
    if r["p_adj"] < alpha and (r["direction"] in ("two-sided", "equivalent") or sign * r["diff"] > 0):
        return "efficacy", n
    # Futility: the shown interval excludes the smallest effect in the declared direction
    # (two-sided: lies within +-smallest_effect; equivalent: lies beyond it).
    lo, hi, delta = r["ci_low"], r["ci_high"], r["smallest_effect"]
    out = {"greater": hi < delta, "less": lo > -delta, "two-sided": -delta < lo and hi < delta,
           "equivalent": lo > delta or hi < -delta}[r["direction"]]
    return ("futility" if out else "undecided"), n


def _verdict_words(r: Any) -> str:
    if r.direction != "equivalent":
        return r.decision
    return {"efficacy": f"equivalent within ±{r.smallest_effect:g}",
            "futility": f"not equivalent: the difference lies beyond ±{r.smallest_effect:g}"}[r.decision]


def decision_line(r: Any, alpha: float) -> str:
    """One sentence per hypothesis and arm: estimate, interval, corrected p and the decision."""
    n = int(r.n) if r.n == r.n else 0
    ci = (f"n = {n}: no interval" if not r.ci_low == r.ci_low
          else f"{100 * r.ci_level:g} % CI [{r.ci_low:+.3g}, {r.ci_high:+.3g}]")
    p = "–" if not r.p_adj == r.p_adj else f"{r.p_adj:.2g}"
    if r.decision in ("efficacy", "futility"):
        verdict = f"decided after {int(r.decided_at)} seeds ({_verdict_words(r)})"
    elif r.decision == "max reached":
        verdict = f"undecided at the maximum of {int(r.decided_at)} seeds (max reached)"
    elif r.decision == "continue":
        verdict = f"undecided after {int(r.decided_at)} seeds (continue: more seeds needed)"
    else:
        goal = "to show ±" if r.direction == "equivalent" else "for "
        need = "" if not r.seeds_needed == r.seeds_needed else (
            f"; ~{int(r.seeds_needed)} seeds {goal}{r.smallest_effect:g} at 80 % power"
            if np.isfinite(r.seeds_needed) else f"; > 1000 seeds {goal}{r.smallest_effect:g}")
        few = f"; a decision needs >= {MIN_CI_SEEDS} seeds" if n < MIN_CI_SEEDS else ""
        verdict = f"undecided at {n} seeds ({r.design} design{few}{need})"
    diff = "–" if not r.diff == r.diff else f"{r.diff:+.3g}"
    what = (f"margin ±{r.smallest_effect:g}, TOST" if r.direction == "equivalent"
            else f"smallest effect {r.smallest_effect:g}")
    return (f"{r.arm} {SYMBOLS.get(r.direction, '?')} {r.baseline_arm} on {r.metric} "
            f"({what}): {diff} {ci}, p_{CONFIRMATORY_CORRECTION} {p}, {verdict}")


def sequential_looks(done: pd.DataFrame, spec: Mapping[str, Any], seed_col: str = "train.seed") -> pd.DataFrame:
    """The ``decisions`` table of a sequential sweep: one row per look, declared hypothesis and
    compared arm (arm, baseline_arm (the reference), metric, n, estimate, statistic,
    efficacy_bound, futility_statistic, futility_bound, decision), replayed over the seeds in
    order with the alpha split over the confirmatory rows, exactly as the decision lines are."""
    seq, hyps = sequential_of(spec), hypotheses_of(spec)
    if not seq or not hyps:
        return pd.DataFrame()
    alpha = float(spec.get("alpha") or ALPHA)
    pairs = [(h, arm, a, ref, ref_arm) for h in hyps if h["metric"] in done.columns
             for arm, a, ref, ref_arm in compared_arms(done, h)]
    rows = []
    for h, arm, a, ref, ref_arm in pairs:
        design = Design(h["smallest_effect"], h["direction"], alpha / len(pairs), seq["min"], seq["max"])
        d = decide(paired_differences(a, ref, h["metric"], seed_col).to_numpy(float), design)
        key = {"arm": arm, "baseline_arm": ref_arm, "metric": h["metric"], "direction": h["direction"]}
        rows += [{**key, **vars(look)} for look in d.looks]
        if not d.looks:
            rows.append({**key, "n": d.n, "decision": d.decision})
    return pd.DataFrame(rows)


def open_comparisons(looks: pd.DataFrame) -> list[tuple[str, str]]:
    """(arm, reference) of every comparison in ``looks`` (``sequential_looks``) that is still
    undecided (continue, or fewer than min seeds) at its last look."""
    if not len(looks):
        return []
    last = looks.groupby(["arm", "baseline_arm", "metric", "direction"], sort=False).tail(1)
    still = last[last["decision"].isin(["continue", "too few seeds"])]
    return sorted({(str(a), str(r)) for a, r in zip(still["arm"], still["baseline_arm"])})


def partners(looks: pd.DataFrame) -> dict[str, set[str]]:
    """arm -> the arms it is compared with in ``looks`` (``sequential_looks``), both ways."""
    out: dict[str, set[str]] = {}
    for arm, ref in zip(looks.get("arm", []), looks.get("baseline_arm", [])):
        out.setdefault(str(arm), set()).add(str(ref))
        out.setdefault(str(ref), set()).add(str(arm))
    return out


def next_round(done: pd.DataFrame, spec: Mapping[str, Any], seed_col: str = "train.seed") -> dict[str, bool]:
    """After a completed round of a sequential sweep: arm -> whether it gets one more seed.

    An arm continues while any hypothesis that compares it is undecided (continue, or fewer
    than min seeds) and max is not reached; a reference arm (the baseline, or the arm an
    arm-vs-arm hypothesis names) continues while any arm compared with it does. Pure:
    ``done`` is the finished trials (arm, baseline, condition, the seed column, the config
    columns a selector names and the metrics), ``spec`` the saved sweep spec (SweepSpec.to_dict())."""
    looks = sequential_looks(done, spec, seed_col)
    out = dict.fromkeys(partners(looks), False)
    for arm, ref in open_comparisons(looks):
        out[arm] = out[ref] = True
    return out

"""Statistics over seeds: per-arm summaries and each regularizer against its baseline.

``compare_family`` tests every arm x metric against the baseline (the exploratory family);
``analysis.confirmatory.comparison_family`` splits off the declared hypotheses and is the
one place the comparisons of a sweep are built for the console, Markdown and HTML reports.

An *arm* is one configuration without its seed (the ``arm`` column of ``trials``); its
trials are the seeds. The baseline of an arm is the unregularized arm (``baseline``
column true: target none or alpha 0) with the same values of the other swept fields
(the ``condition`` column), so a width or data-set sweep compares like with like.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.sequential import (  # noqa: F401 (re-exported: the planning numbers)
    ALPHA,
    TARGET_POWER,
    mde,
    power_paired,
    power_welch,
    seeds_for_power,
)
from neuroreg.evaluate.suites import SUITES

KEY_METRICS = ("best_val_acc",) + tuple(m for suite in SUITES for m in suite.headline)
"""Metrics compared against the baseline by default, where a sweep has them: the trainer's
best validation accuracy, then each evaluation suite's declared headline metrics."""


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran to the end (Ray's TERMINATED)."""
    return trials[trials["status"] == "TERMINATED"]


def arm_summary(trials: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """arm -> n and mean / sem of each metric over its trials."""
    metrics = [m for m in metrics if m in trials.columns]
    d = trials[["arm", *metrics]].copy()
    for m in metrics:
        d[m] = pd.to_numeric(d[m], errors="coerce")
    g = d.groupby("arm", sort=True)
    out = g.size().to_frame("n")
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_sem"] = g[m].sem()
    return out.reset_index()


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean difference a - b, its standard error and Welch's t-test (unequal variances)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff = a.mean() - b.mean() if len(a) and len(b) else np.nan
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "sem_diff": np.nan, "t": np.nan, "p": np.nan, "df": np.nan}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0.0:  # identical constants: no test possible (scipy would warn and return NaN)
        return {"diff": float(diff), "sem_diff": 0.0, "t": np.nan, "p": np.nan, "df": np.nan}
    with warnings.catch_warnings():
        # Nearly identical values make scipy warn about precision; the result stands.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(a, b, equal_var=False)
    # Welch-Satterthwaite degrees of freedom (scipy does not return them for all versions).
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else np.nan
    return {"diff": float(diff), "sem_diff": se, "t": float(res.statistic), "p": float(res.pvalue), "df": float(dof)}


def arms_with_baseline(trials: pd.DataFrame):
    """(arm, its trials, the baseline trials of its condition, baseline label) per regularized arm."""
    for _cond, d in trials.groupby("condition", sort=True, dropna=False):
        base = d[d["baseline"].astype(bool)]
        if not len(base):
            continue
        base_arm = " / ".join(sorted(base["arm"].unique()))
        for arm, a in d[~d["baseline"].astype(bool)].groupby("arm", sort=True):
            yield arm, a, base, base_arm


def compare_to_baseline(trials: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every regularized arm against the baseline of its condition, per metric.

    Columns: metric, arm, baseline_arm, n, n_baseline, mean, baseline_mean, diff
    (arm - baseline), sem_diff (sqrt(s_a^2/n_a + s_b^2/n_b)), t, df, p (Welch's t-test,
    scipy.stats.ttest_ind(equal_var=False)). Empty when the sweep has no baseline arm.
    """
    metrics = [m for m in (metrics or KEY_METRICS) if m in trials.columns]
    rows = []
    for arm, a, base, base_arm in arms_with_baseline(trials):
        for m in metrics:
            xa = pd.to_numeric(a[m], errors="coerce")
            ya = pd.to_numeric(base[m], errors="coerce")
            # One sample for n, mean and the test: infinite values (e.g. a median distance
            # when most images are unbroken) are counted apart, not averaged.
            x, y = xa[np.isfinite(xa)], ya[np.isfinite(ya)]
            if not len(x) or not len(y):
                continue
            rows.append({
                "metric": m, "arm": arm, "baseline_arm": base_arm, "n": len(x), "n_baseline": len(y),
                "n_inf": int(np.isinf(xa).sum()), "n_inf_baseline": int(np.isinf(ya).sum()),
                "mean": x.mean(), "baseline_mean": y.mean(), **welch(x, y),
            })
    cols = ["metric", "arm", "baseline_arm", "n", "n_baseline", "n_inf", "n_inf_baseline", "mean", "baseline_mean",
            "diff", "sem_diff", "t", "df", "p"]
    return pd.DataFrame(rows, columns=cols)


def best_arm(trials: pd.DataFrame, metric: str, mode: str = "max") -> pd.Series | None:
    """The arm with the best mean of ``metric`` over its seeds (n, mean, sem)."""
    if metric not in trials.columns:
        return None
    s = arm_summary(trials, [metric]).dropna(subset=[f"{metric}_mean"])
    if not len(s):
        return None
    s = s.sort_values(f"{metric}_mean", ascending=(mode == "min"), kind="stable")
    return s.iloc[0]


def varying_columns(trials: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The given columns that take more than one value among these trials."""
    return [c for c in columns if c in trials.columns and trials[c].astype(str).nunique(dropna=False) > 1]


# --- the family of comparisons: paired by seed, CI, corrected p, planning numbers -----------

CORRECTION = "Benjamini-Hochberg"
"""Correction of the exploratory family (scipy.stats.false_discovery_control)."""
CONFIRMATORY_CORRECTION = "Holm"
"""Correction of the confirmatory family (declared hypotheses): Holm's step-down, FWER."""
MIN_CI_SEEDS = 3
"""Below this many seeds no interval is printed: with 1 df a 95 % t interval is +-12.7 sd,
wider than an accuracy's whole range."""


def family_metrics(trials: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[str]:
    """Metrics of the comparison family: clean accuracy, every noise type at every level,
    the median distances (papers' and over correct images), and any extra ones given."""
    base = ["clean_acc"]
    # Level 0 is clean accuracy again (it would count the same comparison twice).
    noise = sorted(
        (c for c in trials.columns if c.startswith("noise_acc_") and c != "noise_acc_mean"
         and not (_is_float(c.rsplit("_", 1)[1]) and float(c.rsplit("_", 1)[1]) == 0.0)),
        key=lambda c: (c.rsplit("_", 1)[0], float(c.rsplit("_", 1)[1]) if _is_float(c.rsplit("_", 1)[1]) else 0.0),
    )
    dist = ["median_l2", "median_linf", "median_l2_correct", "median_linf_correct"]
    out = [m for m in dict.fromkeys([*base, *noise, *dist, *(metrics or [])]) if m in trials.columns]
    return out


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error; scipy has BH but not Holm)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


_COLS = ["metric", "arm", "baseline_arm", "test", "n", "n_baseline", "n_inf", "mean", "baseline_mean",
         "diff", "sd", "ci_low", "ci_high", "p", "p_adj", "mde"]


def compare_family(
    trials: pd.DataFrame, metrics: Sequence[str] | None = None, seed_col: str = "train.seed",
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Every regularized arm against its condition's baseline, for every metric given.

    Paired by seed (``scipy.stats.ttest_rel``) where the arm and the baseline share seeds,
    on the shared seeds; otherwise Welch's t-test (``ttest_ind(equal_var=False)``). Columns:
    metric, arm, baseline_arm, test, n, n_baseline, mean, baseline_mean, diff (arm -
    baseline), sd (of the paired differences; Welch: sqrt((s_a^2 + s_b^2) / 2)), ci_low,
    ci_high (two-sided 1 - alpha CI of the difference, scipy's, *not* corrected for the
    family; NaN below 3 seeds), p (two-sided), p_adj (Benjamini-Hochberg over all rows), mde
    (minimal detectable effect at 80 % power for these seeds, metric units, from the observed
    sd). Infinite values (median distances with most images unbroken) are dropped and counted
    in n_inf.
    """
    metrics = list(metrics) if metrics is not None else family_metrics(trials)
    rows = []
    has_seed = seed_col in trials.columns
    for arm, a, base, base_arm in arms_with_baseline(trials):
        for m in metrics:
            if m in trials.columns:
                rows.append({"metric": m, "arm": arm, "baseline_arm": base_arm,
                             **_compare_one(a, base, m, seed_col if has_seed else None, alpha)})
    out = pd.DataFrame(rows, columns=[c for c in _COLS if c != "p_adj"])
    return bh_adjust(out)[_COLS]


def bh_adjust(rows: pd.DataFrame) -> pd.DataFrame:
    """``p_adj``: Benjamini-Hochberg over these rows' p-values (NaN where p is)."""
    rows = rows.copy()
    rows["p_adj"] = np.nan
    ok = rows["p"].notna()
    if ok.any():
        rows.loc[ok, "p_adj"] = sps.false_discovery_control(rows.loc[ok, "p"].to_numpy(float), method="bh")
    return rows


def _series(df: pd.DataFrame, m: str, seed_col: str | None) -> pd.Series:
    v = pd.to_numeric(df[m], errors="coerce")
    return pd.Series(v.to_numpy(), index=df[seed_col].to_numpy() if seed_col else None)


def paired_differences(a: pd.DataFrame, base: pd.DataFrame, m: str, seed_col: str = "train.seed") -> pd.Series:
    """seed -> arm - baseline on the seeds both share (finite values, seeds in order);
    empty when a seed is not unique in either (then the seeds do not pair)."""
    if seed_col not in a.columns or seed_col not in base.columns:
        return pd.Series(dtype=float)
    x, y = _series(a, m, seed_col), _series(base, m, seed_col)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not (x.index.is_unique and y.index.is_unique):
        return pd.Series(dtype=float)
    shared = sorted(set(x.index) & set(y.index))
    return (x[shared] - y[shared]).astype(float)


def _compare_one(a: pd.DataFrame, base: pd.DataFrame, m: str, seed_col: str | None, alpha: float,
                 alternative: str = "two-sided", ci_level: float | None = None) -> dict:
    level = 1 - alpha if ci_level is None else ci_level
    xa, ya = _series(a, m, seed_col), _series(base, m, seed_col)
    n_inf = int(np.isinf(xa).sum() + np.isinf(ya).sum())
    x, y = xa[np.isfinite(xa)], ya[np.isfinite(ya)]
    d = paired_differences(a, base, m, seed_col) if seed_col else pd.Series(dtype=float)
    res: dict = {"n_inf": n_inf, "mean": x.mean() if len(x) else np.nan,
                 "baseline_mean": y.mean() if len(y) else np.nan}
    nan = {"diff": np.nan, "sd": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "mde": np.nan}
    if len(d) >= 2:
        d = d.to_numpy(float)
        res.update(test="paired t", n=len(d), n_baseline=len(d), **{**nan, "diff": float(d.mean())})
        # Equal differences on every seed (e.g. both models at a constant prediction under
        # extreme noise) leave no variance: a t-test would report p ~ 1e-15 from rounding.
        if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):
            return res
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = sps.ttest_1samp(d, 0.0, alternative=alternative)
        sd = float(d.std(ddof=1))
        res.update(sd=sd, p=float(t.pvalue), mde=mde(len(d), True, alpha=alpha, alternative=alternative) * sd)
        if len(d) >= MIN_CI_SEEDS:
            ci = sps.ttest_1samp(d, 0.0).confidence_interval(level)
            res.update(ci_low=float(ci.low), ci_high=float(ci.high))
        return res
    res.update(test="Welch t", n=len(x), n_baseline=len(y), **nan)
    if len(x) and len(y):
        res["diff"] = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) <= 1e-9 and np.ptp(y) <= 1e-9):
        return res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = sps.ttest_ind(x.to_numpy(float), y.to_numpy(float), equal_var=False, alternative=alternative)
    sd = float(np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2))
    res.update(sd=sd, p=float(t.pvalue), mde=mde(len(x), False, len(y), alpha, alternative=alternative) * sd)
    if min(len(x), len(y)) >= MIN_CI_SEEDS:
        ci = sps.ttest_ind(x.to_numpy(float), y.to_numpy(float), equal_var=False).confidence_interval(level)
        res.update(ci_low=float(ci.low), ci_high=float(ci.high))
    return res

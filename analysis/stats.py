"""Statistics over seeds: per-arm summaries and each regularizer against its baseline.

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


# --- the family of comparisons: paired by seed, CI, corrected p, power -----------------

ALPHA = 0.05
TARGET_POWER = 0.8
CORRECTION = "Benjamini-Hochberg"
"""Multiple-comparison correction over the whole family (scipy.stats.false_discovery_control)."""


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


def _t_power(tc: float, df: float, nc: float) -> float:
    p = float(sps.nct.sf(tc, df, nc) + sps.nct.cdf(-tc, df, nc))
    if not np.isfinite(p):  # scipy's noncentral t fails far in the tail: power is ~1 there
        p = float(sps.norm.sf(tc - nc) + sps.norm.cdf(-tc - nc))
    return min(1.0, max(0.0, p))


def power_paired(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided one-sample (paired) t-test for standardized effect d at n pairs."""
    if n < 2 or not np.isfinite(effect):
        return np.nan
    df = n - 1
    return _t_power(sps.t.ppf(1 - alpha / 2, df), df, effect * np.sqrt(n))


def power_welch(effect: float, n1: int, n2: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided two-sample t-test (pooled df) for standardized effect d."""
    if n1 < 2 or n2 < 2 or not np.isfinite(effect):
        return np.nan
    df = n1 + n2 - 2
    return _t_power(sps.t.ppf(1 - alpha / 2, df), df, effect * np.sqrt(n1 * n2 / (n1 + n2)))


def seeds_for_power(effect: float, paired: bool, power: float = TARGET_POWER, n_max: int = 1000) -> float:
    """Smallest number of seeds (per arm) that gives ``power`` for the effect; inf beyond n_max."""
    if not np.isfinite(effect) or effect == 0:
        return np.inf
    for n in range(2, n_max + 1):
        p = power_paired(effect, n) if paired else power_welch(effect, n, n)
        if p >= power:
            return float(n)
    return np.inf


def compare_family(
    trials: pd.DataFrame, metrics: Sequence[str] | None = None, seed_col: str = "train.seed"
) -> pd.DataFrame:
    """Every regularized arm against its condition's baseline, for every metric of the family.

    Paired by seed (``scipy.stats.ttest_rel``) where the arm and the baseline share seeds,
    on the shared seeds; otherwise Welch's t-test (``ttest_ind(equal_var=False)``). Columns:
    metric, arm, baseline_arm, test, n, n_baseline, mean, baseline_mean, diff (arm -
    baseline), ci_low, ci_high (95 % CI of the difference, scipy's), p, p_adj (corrected
    over all rows, Benjamini-Hochberg), power (for the observed effect at this n), n_80
    (seeds per arm for 80 % power at the observed effect and variance). Infinite values
    (median distances with most images unbroken) are dropped and counted in n_inf.
    """
    metrics = list(metrics) if metrics is not None else family_metrics(trials)
    rows = []
    has_seed = seed_col in trials.columns
    for arm, a, base, base_arm in arms_with_baseline(trials):
        for m in metrics:
            if m in trials.columns:
                rows.append({"metric": m, "arm": arm, "baseline_arm": base_arm,
                             **_compare_one(a, base, m, seed_col if has_seed else None)})
    cols = ["metric", "arm", "baseline_arm", "test", "n", "n_baseline", "n_inf", "mean", "baseline_mean",
            "diff", "ci_low", "ci_high", "p", "p_adj", "power", "n_80"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c != "p_adj"])
    out["p_adj"] = np.nan
    ok = out["p"].notna()
    if ok.any():
        out.loc[ok, "p_adj"] = sps.false_discovery_control(out.loc[ok, "p"].to_numpy(float), method="bh")
    return out[cols]


def _compare_one(a: pd.DataFrame, base: pd.DataFrame, m: str, seed_col: str | None) -> dict:
    xa = pd.to_numeric(a[m], errors="coerce")
    ya = pd.to_numeric(base[m], errors="coerce")
    n_inf = int(np.isinf(xa).sum() + np.isinf(ya).sum())
    x = pd.Series(xa.to_numpy(), index=a[seed_col].to_numpy() if seed_col else None)
    y = pd.Series(ya.to_numpy(), index=base[seed_col].to_numpy() if seed_col else None)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    shared = sorted(set(x.index) & set(y.index)) if seed_col else []
    paired = seed_col is not None and len(shared) >= 2 and x.index.is_unique and y.index.is_unique
    res: dict = {"n_inf": n_inf, "mean": x.mean() if len(x) else np.nan,
                 "baseline_mean": y.mean() if len(y) else np.nan}
    nan = {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "power": np.nan, "n_80": np.nan}
    if paired:
        d = (x[shared] - y[shared]).to_numpy(float)
        res.update(test="paired t", n=len(d), n_baseline=len(d), **{**nan, "diff": float(d.mean())})
        sd = d.std(ddof=1)
        # Equal differences on every seed (e.g. both models at a constant prediction under
        # extreme noise) leave no variance: a t-test would report p ~ 1e-15 from rounding.
        if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):
            return res
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = sps.ttest_rel(x[shared].to_numpy(float), y[shared].to_numpy(float))
        ci = t.confidence_interval(1 - ALPHA)
        effect = abs(d.mean()) / sd
        res.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue),
                   power=power_paired(effect, len(d)), n_80=seeds_for_power(effect, True))
        return res
    res.update(test="Welch t", n=len(x), n_baseline=len(y), **nan)
    if len(x) and len(y):
        res["diff"] = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return res
    sa, sb = x.std(ddof=1), y.std(ddof=1)
    if np.ptp(x) <= 1e-9 and np.ptp(y) <= 1e-9:
        return res
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = sps.ttest_ind(x.to_numpy(float), y.to_numpy(float), equal_var=False)
    ci = t.confidence_interval(1 - ALPHA)
    effect = abs(res["diff"]) / np.sqrt((sa**2 + sb**2) / 2)
    res.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue),
               power=power_welch(effect, len(x), len(y)), n_80=seeds_for_power(effect, False))
    return res

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

KEY_METRICS = (
    "best_val_acc", "clean_acc", "noise_acc_mean", "median_l2", "median_linf",
    "adv_success_l2", "adv_success_linf", "f_rev", "f05_l2", "f05_linf",
)
"""Metrics compared against the baseline by default, where a sweep has them."""


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


def compare_to_baseline(trials: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every regularized arm against the baseline of its condition, per metric.

    Columns: metric, arm, baseline_arm, n, n_baseline, mean, baseline_mean, diff
    (arm - baseline), sem_diff (sqrt(s_a^2/n_a + s_b^2/n_b)), t, df, p (Welch's t-test,
    scipy.stats.ttest_ind(equal_var=False)). Empty when the sweep has no baseline arm.
    """
    metrics = [m for m in (metrics or KEY_METRICS) if m in trials.columns]
    rows = []
    for _cond, d in trials.groupby("condition", sort=True, dropna=False):
        base = d[d["baseline"].astype(bool)]
        if not len(base):
            continue
        base_arm = " / ".join(sorted(base["arm"].unique()))
        for arm, a in d[~d["baseline"].astype(bool)].groupby("arm", sort=True):
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

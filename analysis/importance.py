"""Parameter importance and Pareto fronts, computed by Optuna over the gathered trials.

The trials of any sweep (grid, random or Optuna-searched) are replayed into an in-memory
Optuna study with ``optuna.trial.create_trial``; Optuna's importance evaluators (fANOVA by
default) and its multi-objective ``best_trials`` (the non-dominated set) then do the work.

Below ``MIN_CONFIGS`` distinct configurations no importance is computed: fANOVA fits a
random forest to the configurations, and over a handful of points it reports structure
the data cannot hold. ``design_label`` says what a plot holds in configurations and seeds
(a seed repeats a configuration; it adds no point to a surface).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

_DIRECTION = {"max": "maximize", "min": "minimize"}

MIN_CONFIGS = 8
"""Fewest distinct configurations for a fitted surface (contour plot) or a fANOVA importance."""


def n_configurations(trials: pd.DataFrame, params: Sequence[str]) -> int:
    """Distinct value combinations of ``params`` among the rows (a missing value is a value)."""
    cols = [p for p in params if p in trials.columns]
    if not len(trials):
        return 0
    if not cols:
        return 1
    return int(_config_keys(trials, cols).nunique())


def _config_keys(trials: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    # Element-wise str: pandas' astype(str) keeps NaN as missing, and a missing value is a value here.
    return trials[list(cols)].map(str).agg("|".join, axis=1) if cols else pd.Series("", index=trials.index)


def design_label(trials: pd.DataFrame, params: Sequence[str], seed_col: str = "train.seed") -> str:
    """'3 configurations × 2 seeds' (or '..., 1–3 seeds each'): what a plot of these rows shows."""
    n = n_configurations(trials, params)
    word = "configuration" if n == 1 else "configurations"
    cols = [p for p in params if p in trials.columns]
    if seed_col not in trials.columns or not len(trials):
        return f"{n} {word}, {len(trials)} runs"
    per = trials.assign(_k=_config_keys(trials, cols)).groupby("_k")[seed_col].nunique()
    lo, hi = int(per.min()), int(per.max())
    if lo == hi:
        return f"{n} {word} × {lo} seed{'s' if lo != 1 else ''}"
    return f"{n} {word}, {lo}–{hi} seeds each"


CONTOUR_WHY = "a surface interpolated between fewer points shows structure the data do not hold"
IMPORTANCE_WHY = "fANOVA's random forest over fewer points assigns importance the data cannot support"


def too_few_configurations(trials: pd.DataFrame, params: Sequence[str], why: str = CONTOUR_WHY,
                           min_configs: int = MIN_CONFIGS) -> str | None:
    """Why a plot or importance is left out (fewer than ``min_configs`` configurations), else None.

    One line, e.g. '3 configurations × 2 seeds, fewer than 8 distinct configurations (...)';
    the caller says what is left out.
    """
    n = n_configurations(trials, params)
    if n >= min_configs:
        return None
    return f"{design_label(trials, params)}, fewer than {min_configs} distinct configurations ({why})."


def distributions(
    trials: pd.DataFrame, params: Sequence[str], space: Mapping[str, Any] | None = None
) -> dict[str, optuna.distributions.BaseDistribution]:
    """An Optuna distribution per parameter that varies among the trials.

    Numbers get a Float/IntDistribution over their observed range (log scale when the
    sweep's space says loguniform); anything else a CategoricalDistribution of its
    values as strings. Parameters with a single value are left out.
    """
    space = space or {}
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in params:
        if p not in trials.columns:
            raise KeyError(f"params: {p!r} is no column of the trials table")
        # Missing values (a field that does not apply to a row, analysis.applicable) are left
        # out of the range: such a row's trial simply lacks the parameter.
        col = trials[p].dropna()
        if not len(col):
            continue
        num = pd.to_numeric(col, errors="coerce")
        is_num = num.notna().all() and not pd.api.types.is_bool_dtype(col) and col.dtype != object
        if is_num:
            lo, hi = float(num.min()), float(num.max())
            if lo == hi:
                continue
            log = isinstance(space.get(p), Mapping) and "loguniform" in space[p] and lo > 0
            if pd.api.types.is_integer_dtype(col):
                out[p] = optuna.distributions.IntDistribution(int(lo), int(hi), log=log)
            else:
                out[p] = optuna.distributions.FloatDistribution(lo, hi, log=log)
        else:
            cats = sorted(col.astype(str).unique())
            if len(cats) > 1:
                out[p] = optuna.distributions.CategoricalDistribution(cats)
    return out


def _param_value(dist: optuna.distributions.BaseDistribution, v: Any) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return str(v)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    return float(v)


def study_from_trials(
    trials: pd.DataFrame,
    params: Sequence[str],
    objectives: Mapping[str, str],
    space: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """An in-memory study holding one COMPLETE trial per row with finite objective values.

    ``objectives``: metric -> "max" | "min" (one entry: single-objective study).
    The row's DataFrame index is kept in each trial's user_attrs["row"].
    """
    bad = {m: d for m, d in objectives.items() if d not in _DIRECTION}
    if bad:
        raise ValueError(f"objectives: directions must be 'max' or 'min', got {bad}")
    missing = [m for m in objectives if m not in trials.columns]
    if missing:
        raise KeyError(f"objectives: {missing} are no columns of the trials table")
    dists = distributions(trials, params, space)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    dirs = [_DIRECTION[d] for d in objectives.values()]
    study = optuna.create_study(directions=dirs) if len(dirs) > 1 else optuna.create_study(direction=dirs[0])
    for idx, row in trials.iterrows():
        values = [pd.to_numeric(row[m], errors="coerce") for m in objectives]
        if not all(np.isfinite(v) for v in values):
            continue
        ps = {p: _param_value(d, row[p]) for p, d in dists.items() if pd.notna(row[p])}
        study.add_trial(optuna.trial.create_trial(
            params=ps, distributions={p: dists[p] for p in ps},
            values=[float(v) for v in values], user_attrs={"row": int(idx) if isinstance(idx, (int, np.integer)) else str(idx)},
        ))
    return study


def param_importances(
    trials: pd.DataFrame,
    params: Sequence[str],
    metric: str,
    mode: str = "max",
    space: Mapping[str, Any] | None = None,
    evaluator: optuna.importance.BaseImportanceEvaluator | None = None,
    min_configs: int = MIN_CONFIGS,
) -> pd.Series:
    """Normalized importance (sums to 1) of each varying parameter for ``metric``.

    Over the rows where every parameter applies (analysis.applicable: the baseline's alpha
    and Th are no values of alpha and Th, so it is left out). Default evaluator: fANOVA with
    a fixed seed, so the numbers are reproducible. Needs at least two finished trials, one
    varying parameter and ``min_configs`` distinct configurations (ValueError with the reason).
    """
    from analysis.applicable import applies_mask

    params = list(params)
    missing = [p for p in params if p not in trials.columns]
    if missing:
        raise KeyError(f"params: {missing} are no columns of the trials table")
    rows = trials[applies_mask(trials, params).all(axis=1)] if len(trials) else trials
    study = study_from_trials(rows, params, {metric: mode}, space)
    if len(study.trials) < 2:
        raise ValueError(f"param_importances: need >= 2 trials with a finite {metric}, got {len(study.trials)}")
    if not any(t.params for t in study.trials):
        raise ValueError("param_importances: no parameter varies among these trials")
    used = rows.loc[[_row_label(t.user_attrs["row"], rows.index) for t in study.trials]]
    if reason := too_few_configurations(used, params, IMPORTANCE_WHY, min_configs):
        raise ValueError(reason)
    evaluator = evaluator or optuna.importance.FanovaImportanceEvaluator(seed=0)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(imp, name="importance").sort_values(ascending=False)


def _row_label(row: Any, index: pd.Index) -> Any:
    """The index label study_from_trials stored (ints as ints, others as their str)."""
    if isinstance(row, int) or row in index:
        return row
    return next(i for i in index if str(i) == row)


def pareto_front(points: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """The rows of ``points`` that no other row dominates (Optuna's ``best_trials``).

    ``points``: one row per candidate (a trial, or an arm's means over seeds);
    ``objectives``: metric -> "max" | "min", two or more.
    """
    if len(objectives) < 2:
        raise ValueError("objectives: a Pareto front needs two or more metrics")
    pts = points.reset_index(drop=True)
    study = study_from_trials(pts, [], objectives)
    rows = sorted(int(t.user_attrs["row"]) for t in study.best_trials)
    return pts.loc[rows].sort_values(list(objectives)[0], kind="stable")

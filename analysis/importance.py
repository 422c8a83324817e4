"""Parameter importance and Pareto fronts, computed by Optuna over the gathered trials.

The trials of any sweep (grid, random or Optuna-searched) are replayed into an in-memory
Optuna study with ``optuna.trial.create_trial``; Optuna's importance evaluators (fANOVA by
default) and its multi-objective ``best_trials`` (the non-dominated set) then do the work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

_DIRECTION = {"max": "maximize", "min": "minimize"}


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
        col = trials[p]
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
) -> pd.Series:
    """Normalized importance (sums to 1) of each varying parameter for ``metric``.

    Default evaluator: fANOVA with a fixed seed, so the numbers are reproducible.
    Needs at least two finished trials and one varying parameter.
    """
    study = study_from_trials(trials, params, {metric: mode}, space)
    if len(study.trials) < 2:
        raise ValueError(f"param_importances: need >= 2 trials with a finite {metric}, got {len(study.trials)}")
    if not any(t.params for t in study.trials):
        raise ValueError("param_importances: no parameter varies among these trials")
    evaluator = evaluator or optuna.importance.FanovaImportanceEvaluator(seed=0)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(imp, name="importance").sort_values(ascending=False)


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

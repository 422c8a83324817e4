"""The closing table of a sweep: one row per trial, the best trial, where the files are."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sweep.labels import NOT_APPLICABLE, applies, legend, trial_seed

# (result key, column title) shown after the varied parameters, when any trial has them.
METRIC_COLUMNS = (
    ("epoch", "epochs"),  # the last epoch reported (training_iteration counts the evaluation report too)
    ("best_val_acc", "best_val_acc"),
    ("clean_acc", "clean_acc"),
    ("noise_acc_mean", "noise_acc_mean"),
    ("median_l2", "median_l2"),
    ("median_linf", "median_linf"),
)


def ray_statuses(results: Any) -> dict[str, str]:
    """trial_id -> status as saved in the experiment state (TERMINATED, ERROR, PENDING, ...).

    Read back from storage: after Ctrl-C Tune marks the in-memory trials as terminated while
    the saved state keeps them unfinished, which is what --resume acts on."""
    try:
        from ray.tune import ExperimentAnalysis

        analysis = ExperimentAnalysis(results.experiment_path)
        return {t.trial_id: t.status for t in analysis.trials}
    except Exception:  # unreadable state: treat every trial as finished
        return {}


def unfinished(results: Any) -> int:
    """Trials neither terminated nor errored (interrupted: --resume continues them)."""
    return sum(s not in ("TERMINATED", "ERROR") for s in ray_statuses(results).values())


def trial_rows(results: Any, fill: dict[str, Any] | None = None, seeds: list[int] | None = None,
               base: dict[str, Any] | None = None) -> pd.DataFrame:
    """A DataFrame of a ResultGrid: trial, status, parameters, seed, final metrics, folder.

    status: done (trained and evaluated), stopped (ended early by the scheduler or the time
    budget), error, or interrupted (continue with --resume). ``fill``: values of parameters
    some trials set and others take from the base (the baseline's regularizer.target: the
    other trials' target is the base's, not "–"). ``seeds``: train.seed by trial index, so the
    seed column shows the seed itself. ``base``: the sweep's base config, for the seed of a
    sweep without a seed list and to tell which parameters apply to an arm; a parameter that
    does not (th or alpha of a baseline, th of pixel) is NaN, printed as "–"."""
    statuses = ray_statuses(results)
    searched = {k for r in results for k in ((r.config or {}).get("params") or {})}
    fill = {k: v for k, v in (fill or {}).items() if k in searched}
    rows = []
    for r in results:
        cfg = r.config or {}
        own = dict(cfg.get("params") or {})
        params = {**fill, **own}
        shown = {k: (_fmt_param(v) if applies(k, {**fill, **own}, base) else math.nan) for k, v in params.items()}
        if "train.seed" not in params:
            # Without a seed list every trial trains the base's seed (a baseline's index 0 is no seed).
            seed = trial_seed(cfg, seeds, base) if seeds or base else None
            if seed is not None:
                shown["train.seed"] = seed
        m = r.metrics or {}
        tid = m.get("trial_id") or _trial_id(r.path)
        row: dict[str, Any] = {"trial": tid}
        if r.error:
            row["status"] = "error"
        elif m.get("evaluated") is not None:
            row["status"] = "done"
        elif statuses.get(tid, "TERMINATED") == "TERMINATED":
            row["status"] = "stopped"
        else:
            row["status"] = "interrupted"
        row.update({_short(k): v for k, v in shown.items()})
        for key, title in METRIC_COLUMNS:
            row[title] = m.get(key, math.nan)
        row["path"] = r.path
        rows.append(row)
    df = pd.DataFrame(rows)
    # trial, status, the parameters (in order of appearance), the seed, the metrics, the folder
    metrics = [title for _, title in METRIC_COLUMNS]
    seed = ["seed"] if "seed" in df else []
    params = [c for c in df.columns if c not in ("trial", "status", "path", *seed, *metrics)]
    return df[["trial", "status", *params, *seed, *metrics, "path"]] if len(df) else df


def _trial_id(path: str | None) -> str:
    return str(path).rsplit("trial_", 1)[-1] if path else "?"


def _short(key: str) -> str:
    """regularizer.alpha -> alpha; train.seed -> seed (unique last parts are enough)."""
    return key.rsplit(".", 1)[-1]


def _fmt_param(v: Any) -> Any:
    if isinstance(v, list):
        return "+".join(str(x) for x in v)
    return v


def format_table(df: pd.DataFrame) -> str:
    """The table, "–" where a value does not apply or is missing, and a legend of its
    derived columns below."""
    if df.empty:
        return "(no trials)"
    shown = df.drop(columns=["path"])
    shown = shown.dropna(axis=1, how="all")
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        table = shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep=NOT_APPLICABLE)
    notes = legend(list(shown.columns))
    return f"{table}\n\n{notes}" if notes else table


def best_row(df: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    key = dict(METRIC_COLUMNS).get(metric, metric)
    if df.empty or key not in df or df[key].isna().all():
        return None
    idx = df[key].idxmax() if mode == "max" else df[key].idxmin()
    return df.loc[idx]


def best_result_metric(results: Any, metric: str, mode: str) -> tuple[Any, float] | None:
    """The best trial's Result by ``metric`` over final results (any metric, not just columns)."""
    best, best_v = None, None
    for r in results:
        v = (r.metrics or {}).get(metric)
        if not isinstance(v, (int, float)) or math.isnan(v):
            continue
        if best_v is None or (v > best_v if mode == "max" else v < best_v):
            best, best_v = r, v
    return (best, best_v) if best is not None else None

"""The sweep's Optuna study as optuna-dashboard shows it: named, linked, with curves and the baseline.

Ray's ``OptunaSearch`` keeps a study whose objectives are "Objective 0/1", whose parameters
carry Tune's ``params/`` prefix, whose trials say nothing of the Ray trials behind them, and
which holds no baseline. ``LinkedOptunaSearch`` is that searcher with:

- objective names (``study.set_metric_names``) and the parameters' own dotted names;
- per Optuna trial, user attributes ``ray_trial_ids``, ``run_folders`` (relative to the sweep
  folder), ``seeds`` (train.seed values), ``arm_key`` (``analysis.arms``, the key of the
  trials table) and ``arm``, written when a seed's trial starts;
- per-epoch validation accuracy (the mean over the configuration's seeds) as intermediate
  values, reported once every seed has reached an epoch and at the end; a multi-objective
  study refuses ``report()`` (Optuna: "not supported for multi-objective optimization"), so
  there the curve is the user attribute ``val_acc_by_epoch`` (a list, epoch 1 first);
- the baseline's mean over its seeds as a fixed trial (user attribute ``fixed``), so the
  dashboard's Pareto front and history show the reference point; the sweep's samplers skip
  fixed trials (``sweep.study.IgnoresFixedTrials``), so the search draws exactly what it
  would without it. The same numbers are the study's user attribute ``baseline``.

The searcher stays picklable (plain dicts and lists beside Ray's own state); Tune saves it
with every experiment checkpoint, so --resume keeps the links and the reported epochs.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from sweep.labels import TRIAL_INDEX, arm_label, trial_seed
from sweep.space import BASELINE_PARAMS
from sweep.study import FIXED, is_fixed

logger = logging.getLogger(__name__)

PARAMS = "params"
CURVE_METRIC = "val_acc"


def trial_folder_name(trial_id: str) -> str:
    """A Ray trial's folder in the sweep folder (``sweep.tuner.trial_dirname``)."""
    return f"trial_{trial_id}"


def arm_key(params: dict[str, Any], base: dict[str, Any]) -> str | None:
    """The trials table's ``arm_key`` of a configuration: its full config as the trainer
    writes it (run/config.yaml), flattened and hashed by ``analysis.arms.arm_keys``."""
    try:
        import pandas as pd
        import yaml

        from analysis.arms import arm_keys
        from analysis.ray_folder import flatten
        from neuroreg.config import RunConfig, config_with, regularizer_active

        cfg = RunConfig.from_dict(config_with(base, params), validate=False)
        flat = flatten(yaml.safe_load(cfg.to_yaml()))
        active = regularizer_active(cfg.regularizer.target, cfg.regularizer.alpha)
        return str(arm_keys(pd.DataFrame([flat]), list(flat), pd.Series([active]))["arm_key"].iloc[0])
    except Exception as e:  # a link is a convenience: never the reason a sweep stops
        logger.warning("no arm_key for %s: %s: %s", params, type(e).__name__, e)
        return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def mean_curve(curves: list[dict[int, float]], complete_only: int = 0) -> dict[int, float]:
    """Epoch -> mean over the seeds' curves; with ``complete_only`` n, only epochs that n
    curves have reached (a running configuration's partial mean would move)."""
    steps = sorted({s for c in curves for s in c})
    out = {}
    for s in steps:
        vals = [c[s] for c in curves if s in c]
        if len(vals) >= max(complete_only, 1):
            out[s] = _mean(vals)
    return out


class LinkedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch whose study links back to the sweep (see the module docstring).

    ``base``: the sweep's base config (the full nested dict); ``seeds``: train.seed by trial
    index (None: the base's seed); ``repeats``: seeds per configuration."""

    def __init__(self, *args: Any, base: dict[str, Any], seeds: list[int] | None = None, repeats: int = 1,
                 **kwargs: Any):
        self._base = base
        self._seeds = list(seeds) if seeds else None
        self._repeats = max(1, int(repeats))
        self._members: dict[str, list] = {}  # Ray trial id -> [Optuna trial's Ray key, seed index]
        self._params: dict[str, dict[str, Any]] = {}  # key -> the configuration's parameters
        self._arm_keys: dict[str, str | None] = {}
        self._curves: dict[str, dict[str, dict[int, float]]] = {}  # key -> Ray trial id -> epoch -> value
        self._reported: dict[str, list[int]] = {}  # key -> epochs reported as intermediate values
        super().__init__(*args, **kwargs)

    # --- the study --------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        return list(self._metric) if isinstance(self._metric, list) else [self._metric]

    @property
    def multi_objective(self) -> bool:
        return len(self.metric_names) > 1

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        import optuna

        with warnings.catch_warnings():  # experimental since optuna 3.2, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(self.metric_names)
        self._ot_study.set_user_attr(
            "links", "trial user attributes: ray_trial_ids, run_folders (relative to the sweep folder "
                     "STORAGE/NAME), seeds (train.seed), arm_key (the trials table's), arm; intermediate "
                     f"values: {CURVE_METRIC} per epoch, mean over the seeds" +
                     (f" (multi-objective: the user attribute {CURVE_METRIC}_by_epoch)" if self.multi_objective
                      else "") + "; the trial with user attribute 'fixed' is the baseline, never sampled")

    # --- Tune's interface ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        # Parameters under their own dotted names; a study begun with Tune's "params/" names
        # (a sweep resumed from before) arrives nested already.
        params = dict(config[PARAMS]) if isinstance(config.get(PARAMS), dict) else dict(config)
        self._params[trial_id] = params
        self.link_seed(trial_id, trial_id, None)
        return {PARAMS: params}

    def link_seed(self, key: str, trial_id: str, index: int | None) -> None:
        """Ray trial ``trial_id`` runs seed ``index`` of the Optuna trial Ray knows as ``key``."""
        self._members[trial_id] = [key, index]
        self._write_links(key)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key = self._members.get(trial_id, [trial_id])[0]
        if key not in self._ot_trials or key in self._completed_trials or "evaluated" in result:
            return  # the evaluation report repeats the last epoch: no extra step
        value, epoch = _number(result.get(CURVE_METRIC)), result.get("epoch")
        if value is None or not isinstance(epoch, int):
            return
        self._curves.setdefault(key, {}).setdefault(trial_id, {})[epoch] = value
        self._report(key, final=False)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._report(trial_id, final=True)
            self._write_links(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)

    # --- links and curves ---------------------------------------------------------------
    def _seed_of(self, key: str, index: int | None) -> int | None:
        config = {PARAMS: self._params.get(key, {})}
        if index is not None:
            config[TRIAL_INDEX] = index
        return trial_seed(config, self._seeds, self._base)

    def _write_links(self, key: str) -> None:
        ot_trial = self._ot_trials.get(key)
        if ot_trial is None:
            return
        members = sorted(((tid, idx) for tid, (k, idx) in self._members.items() if k == key),
                         key=lambda m: (m[1] is None, m[1] or 0))
        if key not in self._arm_keys:
            self._arm_keys[key] = arm_key(self._params.get(key, {}), self._base)
        attrs = {
            "ray_trial_ids": [tid for tid, _ in members],
            "run_folders": [trial_folder_name(tid) for tid, _ in members],
            "seeds": [self._seed_of(key, idx) for _, idx in members],
            "arm": arm_label(self._params.get(key, {}), self._base, sep=" "),
            "arm_key": self._arm_keys[key],
        }
        try:
            for name, value in attrs.items():
                ot_trial.set_user_attr(name, value)
        except Exception as e:  # a finished trial, a database hiccup: the sweep goes on
            logger.warning("could not link Optuna trial of %s: %s: %s", key, type(e).__name__, e)

    def _report(self, key: str, final: bool) -> None:
        curves = list(self._curves.get(key, {}).values())
        if not curves:
            return
        mean = mean_curve(curves, 0 if final else self._repeats)
        ot_trial = self._ot_trials[key]
        try:
            if self.multi_objective:
                ot_trial.set_user_attr(f"{CURVE_METRIC}_by_epoch", [mean[s] for s in sorted(mean)])
                return
            done = set(self._reported.get(key, []))
            for step in sorted(set(mean) - done):
                ot_trial.report(mean[step], step)
                done.add(step)
            self._reported[key] = sorted(done)
        except Exception as e:
            logger.warning("could not report %s of %s: %s: %s", CURVE_METRIC, key, type(e).__name__, e)

    # --- the baseline -------------------------------------------------------------------
    def add_baseline(self, runs: list[dict[str, Any]]) -> bool:
        """The baseline's mean over its seeds as the study's fixed trial (once per study).

        ``runs``: one per seed, {"trial_id", "index", "metrics": final result, "curve":
        {epoch: val_acc}}. False when the study has one already or an objective has no value
        in any run (then the study's user attribute ``baseline`` says which)."""
        import optuna

        if self._ot_study is None or any(is_fixed(t) for t in self._ot_study.get_trials(deepcopy=False)):
            return False
        runs = sorted(runs, key=lambda r: r.get("index") or 0)
        ids = [r["trial_id"] for r in runs]
        seeds = [trial_seed({PARAMS: BASELINE_PARAMS, TRIAL_INDEX: r.get("index")}, self._seeds, self._base)
                 for r in runs]
        values = {}
        for m in self.metric_names:
            xs = [x for r in runs if (x := _number((r.get("metrics") or {}).get(m))) is not None]
            if xs:
                values[m] = _mean(xs)
        summary = {"metrics": values, "n_seeds": len(runs), "seeds": seeds, "ray_trial_ids": ids,
                   "run_folders": [trial_folder_name(t) for t in ids]}
        missing = [m for m in self.metric_names if m not in values]
        if missing:
            self._ot_study.set_user_attr("baseline", {**summary, "not_added": f"no value of {', '.join(missing)}"})
            return False
        curve = mean_curve([{int(k): float(v) for k, v in (r.get("curve") or {}).items()} for r in runs])
        attrs = {FIXED: "baseline: the unregularized reference (regularizer.target none), mean over its seeds; "
                        "added by the sweep, never suggested or seen by the sampler",
                 "ray_trial_ids": ids, "run_folders": summary["run_folders"], "seeds": seeds, "arm": "none",
                 "arm_key": arm_key(BASELINE_PARAMS, self._base)}
        if self.multi_objective:
            attrs[f"{CURVE_METRIC}_by_epoch"] = [curve[s] for s in sorted(curve)]
        trial = optuna.trial.create_trial(values=[values[m] for m in self.metric_names], user_attrs=attrs,
                                          intermediate_values=None if self.multi_objective else curve)
        self._ot_study.add_trial(trial)
        number = max(t.number for t in self._ot_study.get_trials(deepcopy=False) if is_fixed(t))
        self._ot_study.set_user_attr("baseline", {**summary, "trial_number": number})
        return True


def linked_search(searcher: Any) -> LinkedOptunaSearch | None:
    """The LinkedOptunaSearch at the bottom of a chain of wrappers (``.searcher``), if any."""
    seen = 0
    while searcher is not None and seen < 16:
        if isinstance(searcher, LinkedOptunaSearch):
            return searcher
        searcher, seen = getattr(searcher, "searcher", None), seen + 1
    return None

"""Cross-field checks of a parsed sweep, run before Ray starts: keys, conditions, every
value a trial can take (through RunConfig validation) and the metrics it optimises."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from neuroreg.config import (
    ConfigError,
    RunConfig,
    config_with,
    field_paths,
    regularizer_active,
    set_dotted,
)
from neuroreg.evaluate.metrics import EPOCH_METRICS, reported_metrics
from sweep.space import (
    ALGORITHMS,
    MODES,
    SCHEDULERS,
    ParamSpec,
    SweepSpec,
    config_value,
    enumerate_trials,
)


def validate_spec(spec: SweepSpec, check_files: bool = True) -> None:
    """Cross-field checks; each value a trial can take goes through RunConfig validation."""
    paths = set(field_paths())
    algo = spec.search.algorithm
    if algo not in ALGORITHMS:
        raise ConfigError("search.algorithm", f"must be one of {ALGORITHMS}, got {algo!r}")
    if spec.scheduler.type not in SCHEDULERS:
        raise ConfigError("scheduler.type", f"must be one of {SCHEDULERS}, got {spec.scheduler.type!r}")
    if spec.scheduler.grace_period < 1:
        raise ConfigError("scheduler.grace_period", "must be >= 1 epoch")
    if not (math.isfinite(spec.scheduler.reduction_factor) and spec.scheduler.reduction_factor > 1):
        raise ConfigError("scheduler.reduction_factor", f"must be a finite number > 1 (e.g. 2), "
                                                        f"got {spec.scheduler.reduction_factor}")
    if not 0 <= spec.search.seed <= MAX_SAMPLER_SEED:
        raise ConfigError("search.seed", f"must be an integer in [0, 2^32 - 1] (numpy's and Optuna's sampler "
                                         f"seed range), got {spec.search.seed}")
    r = spec.resources
    if not (math.isfinite(r.cpus_per_trial) and r.cpus_per_trial > 0):
        raise ConfigError("resources.cpus_per_trial", f"must be a finite number > 0 (fractions allowed; flag "
                                                      f"--cpus-per-trial), got {r.cpus_per_trial}")
    if not (math.isfinite(r.gpus_per_trial) and r.gpus_per_trial >= 0):
        raise ConfigError("resources.gpus_per_trial", f"must be a finite number >= 0 (fractions allowed; flag "
                                                      f"--gpus-per-trial), got {r.gpus_per_trial}")
    _check_devices(spec)
    if r.max_concurrent is not None and r.max_concurrent < 1:
        raise ConfigError("resources.max_concurrent", "must be >= 1 or null")

    # Metrics.
    if spec.search.metrics is not None or spec.search.modes is not None:
        if algo != "optuna":
            raise ConfigError("search.metrics", "several objectives need search.algorithm: optuna")
        ms, mo = spec.search.metrics or [], spec.search.modes or []
        if not ms or len(ms) != len(mo):
            raise ConfigError("search.modes", f"give one mode per metric: metrics {ms}, modes {mo}")
        for i, m in enumerate(mo):
            if m not in MODES:
                raise ConfigError(f"search.modes[{i}]", f"must be min or max, got {m!r}")
        if any(not isinstance(m, str) for m in ms):
            raise ConfigError("search.metrics", f"must be a list of metric names, got {ms}")
    if spec.scheduler.type == "asha" and spec.metric not in EPOCH_METRICS:
        raise ConfigError(
            "metric",
            f"ASHA compares trials every epoch, but {spec.metric!r} is only known after the final "
            f"evaluation; use a per-epoch metric ({', '.join(EPOCH_METRICS)}) or scheduler.type: none",
        )

    # Keys and conditions.
    keys = [p.key for p in spec.space]
    for i, p in enumerate(spec.space):
        where = f"space.{p.key}"
        if p.key not in paths:
            raise ConfigError(where, f"is not a config field; see neuroreg/config.py (e.g. regularizer.alpha, {_near(p.key, paths)})")
        if p.key in keys[:i]:
            raise ConfigError(where, "appears twice")
        if spec.seeds and p.key == "train.seed":
            raise ConfigError(where, "conflicts with seeds: vary train.seed either here or with seeds, not both")
        for ck, allowed in p.when.items():
            if ck not in paths:
                raise ConfigError(f"{where}.when", f"{ck!r} is not a config field")
            if ck == p.key:
                raise ConfigError(f"{where}.when", "a key cannot depend on itself")
            if ck in keys[i + 1:]:
                raise ConfigError(f"{where}.when", f"{ck!r} is sampled after {p.key}; list it earlier in space")
            if ck in keys:
                src = spec.space[keys.index(ck)]
                if src.values is not None:
                    can = any(v in allowed for v in src.values)
                else:
                    can = any(isinstance(v, (int, float)) and src.low <= v <= src.high for v in allowed)
                if not can:
                    raise ConfigError(
                        f"{where}.when",
                        f"{ck} never takes {allowed} (its values: {src.describe()}), so {p.key} would never be sampled",
                    )
            if ck not in keys:
                current = config_value(spec.base_config, ck)
                if current not in allowed:
                    raise ConfigError(
                        f"{where}.when",
                        f"{ck} is fixed to {current!r} in base, so {p.key} would never be sampled",
                    )
        if algo == "grid" and p.type != "grid":
            raise ConfigError(where, f"search.algorithm grid takes only grid values; {p.type} needs random or optuna")
        if algo == "optuna" and p.type == "grid":
            raise ConfigError(where, "optuna cannot enumerate a grid: use choice, or search.algorithm grid / random")
        for value in _probe_values(p):
            _check_value(spec, p, value, check_files)
    _check_metrics(spec)
    _check_selectors(spec, paths)
    if spec.sequential is not None and not spec.hypotheses:
        raise ConfigError("seeds", "seeds: {min, max} adds seeds until the declared hypotheses are decided, but "
                                   "this sweep declares none: add hypotheses: [{metric, direction, smallest_effect}] "
                                   "or give a fixed number of seeds")
    if algo == "grid" and spec.num_samples != 1:
        raise ConfigError("num_samples", "a grid runs each point once: set num_samples: 1 and repeat with seeds")
    if algo == "optuna" and not spec.space:
        raise ConfigError("space", "optuna needs at least one parameter to search")
    if spec.search.n_startup_trials is not None and spec.search.n_startup_trials < 0:
        raise ConfigError("search.n_startup_trials", "must be >= 0")
    configs = _trial_configs(spec)
    if algo != "optuna":
        for d in configs:
            _validate(d, "space", check_files)  # every full combination
    _check_regularization_sets(spec, configs)
    if spec.seeds:
        # A sequential sweep may add seeds up to max - 1: those must be valid seeds too.
        later = [spec.sequential.max - 1] if spec.sequential and spec.sequential.max > len(spec.seeds) else []
        for s in [*spec.seeds, *later]:
            d = copy.deepcopy(spec.base)
            set_dotted(d, "train.seed", s)
            _validate(d, "seeds", check_files)


MAX_SAMPLER_SEED = 2**32 - 1
SWEEP_DEVICES = ("auto", "cpu")
"""train.device values a sweep trial may take: Ray assigns GPUs (``--gpus-per-trial``)."""


def _check_devices(spec: SweepSpec) -> None:
    """A sweep's trials take the devices Ray gives them: an explicit cuda / cuda:N would grab
    GPU 0 without a share, or name a GPU the trial cannot see."""
    fix = ("a sweep assigns GPUs through --gpus-per-trial (resources.gpus_per_trial); use train.device: auto "
           "(the trial's GPU share, else the CPU) or cpu (logical GPUs used only to pack trials)")
    device = spec.base_config.train.device
    if device not in SWEEP_DEVICES:
        raise ConfigError("base.train.device", f"{device!r} is not allowed in a sweep; {fix}")
    for p in spec.space:
        if p.key == "train.device":
            bad = [v for v in (p.values or [None]) if v not in SWEEP_DEVICES]
            if bad:
                raise ConfigError("space.train.device", f"{bad[0]!r} is not allowed in a sweep; {fix}")
    # fp16 trains on a CUDA GPU only (a GradScaler, autocast): trials without a GPU share run
    # on the CPU, where the trainer refuses it, one trial at a time after Ray started.
    if spec.resources.gpus_per_trial == 0:
        where = "base.train.precision" if spec.base_config.train.precision == "fp16" else next(
            (f"space.{p.key}" for p in spec.space if p.key == "train.precision" and "fp16" in (p.values or [])), None)
        if where:
            raise ConfigError(where, "fp16 trains on a CUDA GPU only and these trials get none: give them one with "
                                     "--gpus-per-trial, or use auto, fp32 or bf16")


def _check_regularization_sets(spec: SweepSpec, configs: list[dict[str, Any]]) -> None:
    """Every regularized trial's regularizer.n fits its regularization set, checked where the
    set's size is known without files (digits, synthetic); other sets are checked by the trial."""
    from neuroreg.data import _train_val, load_dataset

    sizes: dict[str, int] = {}
    for d in configs:
        try:
            cfg = RunConfig.from_dict(copy.deepcopy(d), validate=False)
        except (ConfigError, KeyError, TypeError, ValueError):
            continue  # an invalid value is reported by its own check
        r = cfg.regularizer
        if not r.active:
            continue
        source = r.data if r.data is not None else cfg.data
        if source.name not in ("digits", "synthetic"):
            continue
        key = repr((source, r.data is None))
        if key not in sizes:
            try:
                sizes[key] = (len(_train_val(source, "data")[0]) if r.data is None
                              else len(load_dataset(source, train=True, field="regularizer.data")))
            except ConfigError:
                continue  # reported by the config's own check
        if r.n > sizes[key]:
            what = "classification training split" if r.data is None else f"regularizer.data ({source.name}) training set"
            raise ConfigError("regularizer.n", f"a regularized trial asks for {r.n} images but the {what} has only "
                                               f"{sizes[key]}; set regularizer.n <= {sizes[key]} (--set "
                                               f"regularizer.n={sizes[key]}) or choose a larger regularizer.data")


def needs_regularization_set(spec: SweepSpec) -> bool:
    """Whether some trial of the sweep trains with the similarity loss (and so needs a
    regularization set): a sweep of baselines only never loads one."""
    for d in _trial_configs(spec):
        try:
            if RunConfig.from_dict(copy.deepcopy(d), validate=False).regularizer.active:
                return True
        except (ConfigError, KeyError, TypeError, ValueError):
            return True  # unknown: load it, as before
    return False


def _trial_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """Config trees covering the values trials can take: every trial of a grid / random
    sweep; for an Optuna space, each probed value of a parameter with every other parameter
    at a value that regularizes (a target that is not none, the top of a range)."""
    if spec.search.algorithm != "optuna":
        return [config_with(spec.base, t) for t in enumerate_trials(spec)]
    active = {p.key: _active_value(p) for p in spec.space}
    out = [copy.deepcopy(spec.base), config_with(spec.base, active)]
    for p in spec.space:
        for value in _probe_values(p):
            out.append(config_with(spec.base, {**active, p.key: value}))
    return out


def _active_value(p: ParamSpec) -> Any:
    if p.values is None:
        return p.high
    return next((v for v in p.values if v not in ("none", 0, None) and v is not False), p.values[0])


def _check_metrics(spec: SweepSpec) -> None:
    """``metric`` and every objective must be reported by some trial of this sweep
    (neuroreg.evaluate.metrics, checked against a real evaluation in the tests)."""
    configs = [spec.base] + [config_with(spec.base, {p.key: v}) for p in spec.space for v in _probe_values(p)]
    names: set[str] = set()
    for d in configs:
        try:
            got = reported_metrics(RunConfig.from_dict(copy.deepcopy(d), validate=False))
        except (ConfigError, KeyError, TypeError, ValueError):
            continue  # an invalid value is reported by its own check
        if got is None:
            return  # a suite whose names are known only at run time (frequency)
        names |= got
    wanted = [("metric", spec.metric)] + [(f"search.metrics[{i}]", m) for i, m in enumerate(spec.search.metrics or [])]
    wanted += [(f"hypotheses[{i}].metric", h.metric) for i, h in enumerate(spec.hypotheses)]
    for where, m in wanted:
        if m not in names:
            close = sorted(n for n in names if m.split("_")[0] in n)[:6] or sorted(names)[:6]
            raise ConfigError(where, f"{m!r} is not a metric these trials report (their suites: "
                                     f"{spec.base_config.evaluation.suites}); e.g. {close}; name a reported "
                                     "metric or add the suite that reports it to base.evaluation.suites")


def _check_selectors(spec: SweepSpec, paths: set[str]) -> None:
    """A hypothesis' ``arm`` / ``reference`` name config fields and, for grid and random
    sweeps (whose trials are known now), pick regularized arms such that every compared arm
    has exactly one reference in its condition, by the rule the analysis applies
    (analysis.selectors.pick_reference): otherwise the hypothesis would have no row and a
    sequential sweep no rule for its seeds."""
    from analysis.selectors import pick_reference, value_matches

    for i, h in enumerate(spec.hypotheses):
        for part, sel in (("arm", h.arm), ("reference", h.reference)):
            for key in sel:
                if key not in paths:
                    raise ConfigError(f"hypotheses[{i}].{part}.{key}", f"is not a config field ({_near(key, paths)})")
    if spec.search.algorithm == "optuna" or not any(h.arm or h.reference for h in spec.hypotheses):
        return
    # Each regularized configuration (seeds aside): its condition (the swept fields outside
    # the regularizer, as the analysis groups arms) and every field's value.
    arms: dict[str, tuple[str, dict[str, Any]]] = {}
    for params in enumerate_trials(spec):
        cfg = RunConfig.from_dict(config_with(spec.base, params), validate=False)
        if not regularizer_active(cfg.regularizer.target, cfg.regularizer.alpha):
            continue
        cond = json.dumps({k: v for k, v in params.items() if not k.startswith("regularizer.") and k != "train.seed"},
                          sort_keys=True, default=str)
        fields = {k: config_value(cfg, k) for k in sorted(paths) if k != "train.seed"}
        arms.setdefault(json.dumps([cond, fields], sort_keys=True, default=str), (cond, fields))

    def picks(sel: dict[str, Any], fields: dict[str, Any]) -> bool:
        return all(value_matches(fields.get(k), v) for k, v in sel.items())

    def reg(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if k.startswith("regularizer.")}

    for i, h in enumerate(spec.hypotheses):
        where = f"hypotheses[{i}]"
        refs = [(c, f) for c, f in arms.values() if h.reference and picks(h.reference, f)]
        compared = [(c, f) for c, f in arms.values() if picks(h.arm, f) and (c, f) not in refs]
        values = {k: sorted({str(f.get(k)) for _c, f in arms.values()}) for k in {**h.arm, **h.reference}}
        if h.reference and not refs:
            raise ConfigError(f"{where}.reference", f"{h.reference} picks none of this sweep's regularized arms (their "
                                                    f"values: {values}); name values the space gives (a hypothesis "
                                                    "without reference compares with the baseline)")
        if not compared:
            raise ConfigError(f"{where}.arm", f"{h.arm} picks none of this sweep's regularized arms besides the "
                                              f"reference (their values: {values}); name values the space gives")
        for cond, fields in compared if h.reference else []:
            got = pick_reference(reg(fields), [reg(f) for c, f in refs if c == cond])
            if len(got) != 1:
                what = "no arm" if not got else f"{len(got)} arms"
                raise ConfigError(f"{where}.reference", f"{h.reference} picks {what} to compare with the arm "
                                                        f"{_short(fields, h.arm)} (condition {cond}); add a field so "
                                                        "it picks exactly one, e.g. the one this arm differs in")


def _short(fields: dict[str, Any], sel: dict[str, Any]) -> str:
    keys = list(sel) or [k for k in ("regularizer.target", "regularizer.alpha", "regularizer.pairing") if k in fields]
    return "{" + ", ".join(f"{k}: {fields.get(k)}" for k in keys) + "}"


def _near(key: str, paths: set[str]) -> str:
    last = key.split(".")[-1]
    hits = sorted(p for p in paths if p.split(".")[-1] == last)
    return f"did you mean {hits[0]}?" if hits else "run --dry-run on a shipped space for examples"


def _probe_values(p: ParamSpec) -> list[Any]:
    if p.values is not None:
        return list(p.values)
    if p.type == "int":
        return [p.low, p.high]
    # An interior, non-integer point catches a float range on an integer field.
    return [p.low, p.high, p.low + 0.37 * (p.high - p.low)]


def _condition_values(spec: SweepSpec, p: ParamSpec) -> dict[str, Any]:
    """Settings that make p's conditions true (first allowed value of each), recursively."""
    out: dict[str, Any] = {}
    by_key = {q.key: q for q in spec.space}
    for ck, allowed in p.when.items():
        if ck in by_key:
            out.update(_condition_values(spec, by_key[ck]))
        out[ck] = allowed[0]
    return out


def _check_value(spec: SweepSpec, p: ParamSpec, value: Any, check_files: bool) -> None:
    d = copy.deepcopy(spec.base)
    for ck, cv in _condition_values(spec, p).items():
        set_dotted(d, ck, cv)
    set_dotted(d, p.key, value)
    try:
        RunConfig.from_dict(d, validate=False).validate(check_files)
    except ConfigError as e:
        raise ConfigError(f"space.{p.key}", f"value {value!r} is not a valid {p.key}: {e}") from None


def _validate(d: dict[str, Any], where: str, check_files: bool) -> None:
    try:
        RunConfig.from_dict(d, validate=False).validate(check_files)
    except ConfigError as e:
        raise ConfigError(where, str(e)) from None


def largest_footprint(spec: SweepSpec) -> Any:
    """The largest estimated GPU footprint of any trial (neuroreg.footprint), for the packing
    check before trials start; None when no data set size is known up front."""
    from neuroreg.footprint import estimate_for

    best = None
    for d in _trial_configs(spec):
        try:
            f = estimate_for(RunConfig.from_dict(copy.deepcopy(d), validate=False))
        except (ConfigError, KeyError, TypeError, ValueError):
            continue
        if f is not None and (best is None or f.total > best.total):
            best = f
    return best

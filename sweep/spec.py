"""A search-space file, parsed into typed dataclasses and validated before Ray starts.

A sweep file (YAML, read with ``yaml.safe_load``) holds::

    name: alpha_th                      # experiment name prefix (default: file stem)
    description: ...
    base: {...}                         # a RunConfig tree (neuroreg.config), evaluation included
    space:                              # dotted RunConfig keys -> one distribution each
      regularizer.alpha: {loguniform: [0.1, 10]}
      regularizer.th: {uniform: [0.05, 0.95], when: {regularizer.target: pixel_th}}
      regularizer.layers: {choice: [[conv1], [conv5], [conv1, conv5]]}
      regularizer.target: {grid: [none, pixel_th]}
    search: {algorithm: optuna, seed: 0}   # optuna | random | grid; metrics/modes: multi-objective
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or type: none
    seeds: 3                            # repeat every configuration over train.seed 0, 1, 2 (or a list)
    metric: best_val_acc
    mode: max
    num_samples: 6                      # configurations to draw (random / optuna)
    time_budget_s: 900
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: 2}

Every value a trial can take is checked through ``RunConfig`` validation (the bounds of a
range, every choice and grid value), so ranges such as Th in (0, 1) and alpha >= 0 are
defined in one place: ``neuroreg/config.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuroreg.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    expand_path,
    field_paths,
    set_dotted,
)
from neuroreg.evaluate.metrics import EPOCH_METRICS, reported_metrics  # noqa: F401 (re-exported)

PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
RANDOM_TYPES = ("uniform", "loguniform", "int", "choice")
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("none", "asha")
MODES = ("min", "max")

# Metrics every epoch's report holds (docs/ARCHITECTURE.md); anything else (clean_acc,
# median_l2, ...) is only known after the end-of-trial evaluation.

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

_TOP_KEYS = (
    "name", "description", "base", "space", "search", "scheduler", "seeds", "metric", "mode",
    "num_samples", "time_budget_s", "resources", "baseline", "failure",
)

MAX_SAMPLES = 10_000
"""Most configurations one sweep draws: trial lists are enumerated up front (--dry-run)."""

BASELINE_PARAMS: dict[str, Any] = {"regularizer.target": "none"}
"""The parameters of the baseline arm every sweep adds (unless ``baseline: false``)."""


@dataclass
class ParamSpec:
    """One dimension of the space: a dotted RunConfig key and its distribution."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)
    """Condition: sample this key only when every named key has one of the listed values."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {self.type: self.values if self.values is not None else [self.low, self.high]}
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d

    def describe(self) -> str:
        if self.type in ("choice", "grid"):
            text = f"{self.type}({', '.join(json.dumps(v) for v in self.values)})"
        else:
            text = f"{self.type}({self.low}, {self.high})"
        if self.when:
            cond = " and ".join(f"{k} in {v}" if len(v) > 1 else f"{k} == {v[0]}" for k, v in self.when.items())
            text += f"  when {cond}"
        return text


@dataclass
class SearchSpec:
    algorithm: str = "random"
    """optuna (TPE; NSGA-II for several metrics), random (sampled here, reproducible) or grid."""
    seed: int = 0
    """Seed of the sampler (random draws, TPE)."""
    metrics: list[str] | None = None
    """Optuna multi-objective: the metrics to optimise (default: [metric])."""
    modes: list[str] | None = None
    """One of min / max per entry of metrics."""
    n_startup_trials: int | None = None
    """TPE: random trials before the model kicks in (Optuna's default 10)."""


@dataclass
class SchedulerSpec:
    type: str = "none"
    """asha (early stopping on the per-epoch metric) or none."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: float = 2.0
    """ASHA: keep the best 1/reduction_factor at each rung."""


@dataclass
class ResourcesSpec:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    """None: as many as the cluster's CPUs / GPUs allow."""


@dataclass
class FailureSpec:
    max_failures: int = 0
    """Retries of a failed trial (a lost node, an error) from its last checkpoint; -1: no limit."""


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any]
    """The base RunConfig as a dict (overrides applied, data paths absolute)."""
    space: list[ParamSpec] = field(default_factory=list)
    search: SearchSpec = field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    seeds: list[int] | None = None
    """train.seed values each configuration is repeated over; None = the base seed only."""
    metric: str = "best_val_acc"
    mode: str = "max"
    num_samples: int = 1
    time_budget_s: float | None = None
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    failure: FailureSpec = field(default_factory=FailureSpec)
    description: str = ""
    source: str | None = None
    baseline: bool = True
    """Add an unregularized arm (regularizer.target none) for every seed, unless the trial
    list already has one: a comparison needs its baseline."""

    # --- derived ------------------------------------------------------------------
    @property
    def base_config(self) -> RunConfig:
        return RunConfig.from_dict(copy.deepcopy(self.base), validate=False)

    @property
    def repeats(self) -> int:
        return len(self.seeds) if self.seeds else 1

    @property
    def search_metrics(self) -> list[str]:
        return list(self.search.metrics) if self.search.metrics else [self.metric]

    @property
    def search_modes(self) -> list[str]:
        return list(self.search.modes) if self.search.modes else [self.mode]

    def num_trials(self) -> int:
        if self.search.algorithm == "optuna":
            return self.num_samples * self.repeats + self.baseline_trials()
        return len(enumerate_trials(self))

    def baseline_trials(self) -> int:
        """Baseline trials an Optuna sweep runs beside the searched ones (one per seed)."""
        if self.search.algorithm != "optuna" or not self.baseline:
            return 0
        return self.repeats

    def max_epochs(self) -> int:
        """Largest train.epochs any trial can have (ASHA's horizon)."""
        epochs = [self.base_config.train.epochs]
        for p in self.space:
            if p.key == "train.epochs":
                epochs += list(p.values) if p.values is not None else [int(p.high)]
        return int(max(epochs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "base": copy.deepcopy(self.base),
            "space": {p.key: p.to_dict() for p in self.space},
            "search": {k: v for k, v in vars(self.search).items() if v is not None},
            "scheduler": dict(vars(self.scheduler)),
            "seeds": list(self.seeds) if self.seeds else None,
            "metric": self.metric,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "time_budget_s": self.time_budget_s,
            "resources": dict(vars(self.resources)),
            "baseline": self.baseline,
            "failure": dict(vars(self.failure)),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- loading -------------------------------------------------------------------------


def resolve_space_path(name_or_path: str | os.PathLike) -> Path:
    """A file path, or a name (with or without .yaml) in the shipped search_spaces/."""
    p = Path(name_or_path)
    if p.is_file():
        return p.resolve()
    for cand in (SPACES_DIR / p.name, SPACES_DIR / f"{p.name}.yaml"):
        if not p.parent.parts and cand.is_file():
            return cand
    shipped = sorted(q.stem for q in SPACES_DIR.glob("*.yaml")) if SPACES_DIR.is_dir() else []
    raise ConfigError("--space", f"no file {str(p)!r} and no shipped space of that name; shipped: {shipped}")


def load_spec(
    name_or_path: str | os.PathLike,
    overrides: list[str] | None = None,
    check_files: bool = True,
) -> SweepSpec:
    """Read, parse and validate a sweep file; ``overrides`` (key=value) apply to ``base``."""
    path = resolve_space_path(name_or_path)
    from neuroreg.yamlio import describe_error, load_strict

    try:
        raw = load_strict(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(str(path), "is not a text file; give a YAML sweep file") from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"is not a valid sweep file: {describe_error(e)}") from None
    return parse_spec(raw, overrides, default_name=path.stem, source=str(path), check_files=check_files)


def parse_spec(
    raw: Any,
    overrides: list[str] | None = None,
    default_name: str = "sweep",
    source: str | None = None,
    check_files: bool = True,
) -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError("sweep file", f"must hold a mapping at top level, got {type(raw).__name__}")
    for k in raw:
        if k not in _TOP_KEYS:
            raise ConfigError(str(k), f"unknown key; known keys of a sweep file: {list(_TOP_KEYS)}")

    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base", f"must be a mapping (a run config), got {type(base).__name__}")
    base = apply_overrides(base, overrides or [])
    try:
        RunConfig.from_dict(copy.deepcopy(base), validate=False).validate(check_files)
    except ConfigError as e:
        raise ConfigError(f"base.{e.field}", str(e)[len(e.field) + 2 :]) from None
    base = absolute_paths(base)

    name = raw.get("name", default_name)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", name):
        raise ConfigError("name", f"{name!r} is not a safe sweep name; use letters, digits, '.', '_' and '-' "
                                  "(at most 128, starting with a letter or digit)")
    spec = SweepSpec(
        name=name,
        base=base,
        description=_typed(raw, "description", str, ""),
        metric=_typed(raw, "metric", str, "best_val_acc"),
        mode=_typed(raw, "mode", str, "max"),
        num_samples=_typed(raw, "num_samples", int, 1),
        time_budget_s=_typed(raw, "time_budget_s", (int, float), None),
        source=source,
        baseline=_typed(raw, "baseline", bool, True),
    )
    if spec.mode not in MODES:
        raise ConfigError("mode", f"must be min or max, got {spec.mode!r}")
    if not 1 <= spec.num_samples <= MAX_SAMPLES:
        raise ConfigError("num_samples", f"must lie in [1, {MAX_SAMPLES}], got {spec.num_samples}")
    if spec.time_budget_s is not None and not spec.time_budget_s > 0:
        raise ConfigError("time_budget_s", f"must be > 0 seconds or null, got {spec.time_budget_s}")
    spec.search = _dataclass_section(raw, "search", SearchSpec)
    spec.scheduler = _dataclass_section(raw, "scheduler", SchedulerSpec)
    spec.resources = _dataclass_section(raw, "resources", ResourcesSpec)
    spec.failure = _dataclass_section(raw, "failure", FailureSpec)
    if spec.failure.max_failures is None or spec.failure.max_failures < -1:
        raise ConfigError("failure.max_failures", f"must be an integer >= -1 (-1: no limit), got {spec.failure.max_failures}")
    spec.seeds = _parse_seeds(raw.get("seeds"))
    spec.space = _parse_space(raw.get("space"))
    validate_spec(spec, check_files)
    return spec


def _typed(raw: dict, key: str, tp: Any, default: Any) -> Any:
    v = raw.get(key, default)
    if v is None and default is None:
        return None
    ok = isinstance(v, tp) and not (isinstance(v, bool) and tp is not bool)
    if not ok:
        names = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
        raise ConfigError(key, f"must be of type {names}, got {v!r}")
    return v


def _dataclass_section(raw: dict, key: str, cls: type) -> Any:
    v = raw.get(key)
    if v is None:
        return cls()
    if not isinstance(v, dict):
        raise ConfigError(key, f"must be a mapping, got {type(v).__name__}")
    obj = cls()
    known = list(vars(obj))
    for k, val in v.items():
        if k not in known:
            raise ConfigError(f"{key}.{k}", f"unknown key; known keys of {key}: {known}")
        default = getattr(obj, k)
        setattr(obj, k, _coerce_simple(val, default, f"{key}.{k}"))
    return obj


def _coerce_simple(val: Any, default: Any, where: str) -> Any:
    if val is None:
        return None
    if isinstance(default, bool):
        if not isinstance(val, bool):
            raise ConfigError(where, f"must be true or false, got {val!r}")
    elif isinstance(default, int) and not isinstance(default, bool):
        if isinstance(val, bool) or not isinstance(val, int):
            raise ConfigError(where, f"must be an integer, got {val!r}")
    elif isinstance(default, float):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(where, f"must be a number, got {val!r}")
        return float(val)
    elif isinstance(default, str):
        if not isinstance(val, str):
            raise ConfigError(where, f"must be a string, got {val!r}")
    return val


def _parse_seeds(v: Any) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ConfigError("seeds", f"must be >= 1 (the number of seeds) or a list of seeds, got {v}")
        return list(range(v))
    if isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) for s in v):
        if len(set(v)) != len(v):
            raise ConfigError("seeds", f"lists a seed twice: {v}")
        return list(v)
    raise ConfigError("seeds", f"must be a count (e.g. 3) or a non-empty list of integer seeds, got {v!r}")


def _parse_space(v: Any) -> list[ParamSpec]:
    if v is None:
        return []
    if not isinstance(v, dict):
        raise ConfigError("space", f"must map dotted config keys to distributions, got {type(v).__name__}")
    out = []
    for key, d in v.items():
        where = f"space.{key}"
        if not isinstance(d, dict):
            raise ConfigError(where, f"must be a mapping such as {{uniform: [0.1, 0.9]}}, got {d!r}")
        kinds = [k for k in d if k in PARAM_TYPES]
        extra = [k for k in d if k not in PARAM_TYPES and k != "when"]
        if extra:
            raise ConfigError(where, f"unknown key(s) {extra}; use one of {list(PARAM_TYPES)} and optionally when")
        if len(kinds) != 1:
            raise ConfigError(where, f"needs exactly one of {list(PARAM_TYPES)}, got {kinds or 'none'}")
        kind = kinds[0]
        arg = d[kind]
        p = ParamSpec(key=str(key), type=kind, when=_parse_when(d.get("when"), where))
        if kind in ("choice", "grid"):
            if not isinstance(arg, list) or not arg:
                raise ConfigError(where, f"{kind} needs a non-empty list of values, got {arg!r}")
            p.values = list(arg)
        else:
            if (
                not isinstance(arg, list) or len(arg) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in arg)
            ):
                raise ConfigError(where, f"{kind} needs [low, high] (two numbers), got {arg!r}")
            low, high = arg
            if kind == "int" and not all(isinstance(x, int) for x in arg):
                raise ConfigError(where, f"int needs integer bounds, got {arg!r}")
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ConfigError(where, f"bounds must be finite, got {arg!r}")
            if (kind == "int" and low > high) or (kind != "int" and not low < high):
                raise ConfigError(where, f"needs low < high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ConfigError(where, f"loguniform needs low > 0, got {low}")
            if kind == "int" and not (-(2**62) <= low and high <= 2**62):
                raise ConfigError(where, f"int bounds must lie within +-2**62 (numpy and Optuna draw 64-bit "
                                         f"integers), got [{low}, {high}]")
            p.low, p.high = (low, high) if kind == "int" else (float(low), float(high))
        out.append(p)
    return out


def _parse_when(v: Any, where: str) -> dict[str, list[Any]]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"{where}.when", f"must map config keys to a value or a list of values, got {v!r}")
    return {str(k): (list(x) if isinstance(x, list) else [x]) for k, x in v.items()}


# --- validation ------------------------------------------------------------------------


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
    if not spec.scheduler.reduction_factor > 1:
        raise ConfigError("scheduler.reduction_factor", "must be > 1")
    r = spec.resources
    if not r.cpus_per_trial > 0:
        raise ConfigError("resources.cpus_per_trial", f"must be > 0 (fractions allowed), got {r.cpus_per_trial}")
    if r.gpus_per_trial < 0:
        raise ConfigError("resources.gpus_per_trial", f"must be >= 0 (fractions allowed), got {r.gpus_per_trial}")
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
                current = _get_dotted(spec.base, ck, spec.base_config)
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
    if algo == "grid" and spec.num_samples != 1:
        raise ConfigError("num_samples", "a grid runs each point once: set num_samples: 1 and repeat with seeds")
    if algo == "optuna" and not spec.space:
        raise ConfigError("space", "optuna needs at least one parameter to search")
    if spec.search.n_startup_trials is not None and spec.search.n_startup_trials < 0:
        raise ConfigError("search.n_startup_trials", "must be >= 0")
    if algo != "optuna":
        for trial in enumerate_trials(spec):
            _validate(_with_params(spec.base, trial), "space", check_files)  # every full combination
    if spec.seeds:
        for s in spec.seeds:
            d = copy.deepcopy(spec.base)
            set_dotted(d, "train.seed", s)
            _validate(d, "seeds", check_files)


def _check_metrics(spec: SweepSpec) -> None:
    """``metric`` and every objective must be reported by some trial of this sweep
    (neuroreg.evaluate.metrics, checked against a real evaluation in the tests)."""
    configs = [spec.base] + [_with_params(spec.base, {p.key: v}) for p in spec.space for v in _probe_values(p)]
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
    for where, m in wanted:
        if m not in names:
            close = sorted(n for n in names if m.split("_")[0] in n)[:6] or sorted(names)[:6]
            raise ConfigError(where, f"{m!r} is not a metric these trials report (their suites: "
                                     f"{spec.base_config.evaluation.suites}); e.g. {close}")


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


def _get_dotted(d: dict[str, Any], key: str, cfg: RunConfig) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return obj


def condition_holds(p: ParamSpec, values: dict[str, Any], base_cfg: RunConfig) -> bool:
    for ck, allowed in p.when.items():
        current = values[ck] if ck in values else _get_dotted({}, ck, base_cfg)
        if current not in allowed:
            return False
    return True


# --- trials ----------------------------------------------------------------------------


def enumerate_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """The exact trial parameter sets of a random or grid search: grid values crossed with
    num_samples random draws (seeded), conditional keys dropped where their condition is
    false, duplicates removed, every configuration repeated over the seeds."""
    import numpy as np

    if spec.search.algorithm == "optuna":
        raise ValueError("optuna trials are suggested while the sweep runs")
    rng = np.random.default_rng(spec.search.seed)
    base_cfg = spec.base_config
    grid = [p for p in spec.space if p.type == "grid"]
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in itertools.product(*[p.values for p in grid]) if grid else [()]:
        fixed = {p.key: v for p, v in zip(grid, combo)}
        for _ in range(spec.num_samples):
            values: dict[str, Any] = {}
            for p in spec.space:
                if not condition_holds(p, values, base_cfg):
                    continue
                values[p.key] = fixed[p.key] if p.type == "grid" else sample_value(p, rng)
            ident = json.dumps(values, sort_keys=True)
            if ident in seen:
                continue
            seen.add(ident)
            configs.append(values)
    if spec.baseline:
        configs = _with_baselines(spec.base, configs)
    if not spec.seeds:
        return configs
    return [{**c, "train.seed": s} for c in configs for s in spec.seeds]


def _with_baselines(base: dict[str, Any], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A baseline for every condition (the non-regularizer parameters, e.g. a width) that
    has none, placed before the condition's first configuration."""
    def condition(c: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in c.items() if not k.startswith("regularizer.")}, sort_keys=True)

    covered = {condition(c) for c in configs if _inactive(base, c)}
    out: list[dict[str, Any]] = []
    for c in configs:
        cond = condition(c)
        if cond not in covered:
            covered.add(cond)
            out.append({**{k: v for k, v in c.items() if not k.startswith("regularizer.")}, **BASELINE_PARAMS})
        out.append(c)
    return out


def _inactive(base: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether base + params trains without the similarity loss (a baseline)."""
    return not RunConfig.from_dict(_with_params(base, params), validate=False).regularizer.active


def sample_value(p: ParamSpec, rng: Any) -> Any:
    if p.type == "uniform":
        return float(rng.uniform(p.low, p.high))
    if p.type == "loguniform":
        return float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
    if p.type == "int":
        return int(rng.integers(p.low, p.high + 1))
    return copy.deepcopy(p.values[int(rng.integers(len(p.values)))])


def _with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(base)
    for k, v in params.items():
        set_dotted(d, k, v)
    return d


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> RunConfig:
    """The validated RunConfig of one trial: base with the trial's dotted parameters set."""
    return RunConfig.from_dict(_with_params(base, params))


# --- paths ---------------------------------------------------------------------------------

_PATH_FIELDS = (
    "data.root", "regularizer.data.root", "regularizer.neural_responses",
    "regularizer.neural_matrix", "regularizer.features_weights", "evaluation.surrogate",
)


def absolute_paths(base: dict[str, Any]) -> dict[str, Any]:
    """Make file paths absolute (Ray trials run in other working directories) and pin data
    roots that come from $NEUROREG_DATA_ROOT into the config (workers on other nodes do not
    see the driver's environment)."""
    out = copy.deepcopy(base)
    cfg = RunConfig.from_dict(copy.deepcopy(out), validate=False)
    for key in _PATH_FIELDS:
        value = _get_dotted(out, key, cfg)
        if isinstance(value, str) and value and "://" not in value:
            set_dotted(out, key, str(Path(expand_path(value, key)).resolve()))
    env_root = os.environ.get("NEUROREG_DATA_ROOT")
    if env_root:
        for prefix, dc in (("data", cfg.data), ("regularizer.data", cfg.regularizer.data)):
            if dc is not None and dc.name not in ("digits", "synthetic") and not dc.root:
                set_dotted(out, f"{prefix}.root", str(Path(env_root).expanduser().resolve()))
    return out

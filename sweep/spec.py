"""A search-space file, parsed into typed dataclasses and validated before Ray starts.

A sweep file (YAML, read with neuroreg.yamlio's guarded reader: safe, duplicate keys and
oversized files refused) holds::

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
    # seeds: {min: 3, max: 12}          # sequential: seeds added until the hypotheses are decided
    hypotheses:                         # declared before the sweep: the confirmatory family (Holm)
      - {metric: noise_acc_gaussian_0.4, direction: greater, smallest_effect: 0.05}
      # arm vs arm: |shared - pairs| < 0.05 (two one-sided tests), arms picked by their fields
      # - {metric: noise_acc_gaussian_0.4, direction: equivalent, smallest_effect: 0.05,
      #    arm: {regularizer.pairing: shared}, reference: {regularizer.pairing: pairs}}
    alpha: 0.05                         # type-I error of the confirmatory family
    metric: best_val_acc
    mode: max
    num_samples: 6                      # configurations to draw (random / optuna)
    time_budget_s: 900
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: 2}
    failure: {max_failures: 2}          # retries of a trial whose node died, from its checkpoint
    baseline: true                      # add the unregularized arm (default)

Every value a trial can take is checked through ``RunConfig`` validation (the bounds of a
range, every choice and grid value), so ranges such as Th in (0, 1) and alpha >= 0 are
defined in one place: ``neuroreg/config.py``.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

from neuroreg.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    build_dataclass,
    expand_path,
    set_dotted,
)
from neuroreg.evaluate.metrics import EPOCH_METRICS, reported_metrics  # noqa: F401 (re-exported)
from neuroreg.targets import TARGETS
from neuroreg.yamlio import read_yaml_file
from sweep.space import (  # noqa: F401 (the typed form, re-exported for callers)
    ALGORITHMS,
    BASELINE_PARAMS,
    DIRECTIONS,
    MAX_SAMPLES,
    MODES,
    PARAM_TYPES,
    RANDOM_TYPES,
    SCHEDULERS,
    SPACES_DIR,
    FailureSpec,
    HypothesisSpec,
    ParamSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    SequentialSpec,
    SweepSpec,
    config_value,
    enumerate_trials,
)
from sweep.validation import validate_spec

_TOP_KEYS = (
    "name", "description", "base", "space", "search", "scheduler", "seeds", "metric", "mode",
    "num_samples", "time_budget_s", "resources", "baseline", "failure", "hypotheses", "alpha",
)
MAX_SEQUENTIAL_SEEDS = 1000


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
    raw = read_yaml_file(path, "--space", "sweep file")
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
    if spec.time_budget_s is not None and not (math.isfinite(spec.time_budget_s) and spec.time_budget_s > 0):
        raise ConfigError("time_budget_s", f"must be a finite number of seconds > 0, or null, got {spec.time_budget_s}")
    spec.search = _section(raw, "search", SearchSpec)
    spec.scheduler = _section(raw, "scheduler", SchedulerSpec)
    spec.resources = _section(raw, "resources", ResourcesSpec)
    spec.failure = _section(raw, "failure", FailureSpec)
    if spec.failure.max_failures is None or spec.failure.max_failures < -1:
        raise ConfigError("failure.max_failures", f"must be an integer >= -1 (-1: no limit), got {spec.failure.max_failures}")
    spec.seeds, spec.sequential = _parse_seeds(raw.get("seeds"))
    spec.hypotheses = _parse_hypotheses(raw.get("hypotheses"))
    spec.alpha = _parse_alpha(raw.get("alpha", 0.05))
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


def _section(raw: dict, key: str, cls: type) -> Any:
    """A typed section (search, scheduler, resources, failure) through the config tree's builder."""
    value = raw.get(key)
    return cls() if value is None else build_dataclass(cls, value, key)


def _parse_seeds(v: Any) -> tuple[list[int] | None, SequentialSpec | None]:
    if v is None:
        return None, None
    if isinstance(v, dict):
        extra = sorted(set(map(str, v)) - {"min", "max"})
        lo, hi = v.get("min"), v.get("max")
        if extra or not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)):
            raise ConfigError("seeds", f"a sequential design is {{min: 3, max: 12}} (two integers), got {v!r}")
        if not 2 <= lo <= hi <= MAX_SEQUENTIAL_SEEDS:
            raise ConfigError("seeds", f"needs 2 <= min <= max <= {MAX_SEQUENTIAL_SEEDS} (a paired t-test needs "
                                       f"2 seeds), got min {lo}, max {hi}")
        return list(range(lo)), SequentialSpec(lo, hi)
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ConfigError("seeds", f"must be >= 1 (the number of seeds) or a list of seeds, got {v}")
        return list(range(v)), None
    if isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) for s in v):
        if len(set(v)) != len(v):
            raise ConfigError("seeds", f"lists a seed twice: {v}")
        return list(v), None
    raise ConfigError("seeds", f"must be a count (e.g. 3), a non-empty list of integer seeds, or {{min: 3, max: 12}} "
                               f"(sequential), got {v!r}")


def _parse_hypotheses(v: Any) -> list[HypothesisSpec]:
    """``hypotheses: [{metric, direction, smallest_effect[, arm][, reference]}, ...]``; the
    metric names and selectors are checked against what the trials report in sweep.validation."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError("hypotheses", f"must be a list of {{metric, direction, smallest_effect}}, got {v!r}")
    out: list[HypothesisSpec] = []
    for i, h in enumerate(v):
        where = f"hypotheses[{i}]"
        if not isinstance(h, dict):
            raise ConfigError(where, f"must be a mapping such as {{metric: noise_acc_gaussian_0.4, direction: "
                                     f"greater, smallest_effect: 0.05}}, got {h!r}")
        extra = sorted(set(map(str, h)) - {"metric", "direction", "smallest_effect", "arm", "reference"})
        if extra:
            raise ConfigError(where, f"unknown key(s) {extra}; a hypothesis has metric, direction, smallest_effect "
                                     "and optionally arm and reference")
        metric, direction, effect = h.get("metric"), h.get("direction", "greater"), h.get("smallest_effect")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{where}.metric", f"must name a metric the trials report, got {metric!r}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"{where}.direction", f"must be one of {list(DIRECTIONS)}, got {direction!r}")
        if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not (math.isfinite(effect) and effect > 0):
            raise ConfigError(f"{where}.smallest_effect", "must be a number > 0: the smallest difference worth "
                                                          f"finding, in the metric's units (e.g. 0.05), got {effect!r}")
        arm, ref = _parse_selector(h.get("arm"), f"{where}.arm"), _parse_selector(h.get("reference"), f"{where}.reference")
        if direction == "equivalent" and not ref:
            raise ConfigError(f"{where}.reference", "an equivalence hypothesis compares two regularized arms: name the "
                                                    "reference arm, e.g. reference: {regularizer.pairing: pairs}")
        if ref and ref == arm:
            raise ConfigError(f"{where}.arm", f"selects the same arm as reference ({ref}): name two different arms")
        new = HypothesisSpec(metric, direction, float(effect), arm, ref)
        if any(o.to_dict() | {"smallest_effect": 0} == new.to_dict() | {"smallest_effect": 0} for o in out):
            raise ConfigError(f"{where}.metric", f"{metric!r} is declared twice ({direction}, the same arms)")
        out.append(new)
    return out


def _parse_selector(v: Any, where: str) -> dict[str, Any]:
    """``{regularizer.pairing: shared}``: config field -> one value (the fields are checked
    against the config and the trials in sweep.validation)."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not v or not all(isinstance(k, str) for k in v):
        raise ConfigError(where, f"must map config fields to one value each, e.g. {{regularizer.pairing: shared}}, "
                                 f"got {v!r}")
    for k, x in v.items():
        if x is not None and not isinstance(x, (str, int, float, bool)):
            raise ConfigError(f"{where}.{k}", f"must be one value (text, number, true/false or null), got {x!r}")
    return dict(v)


def _parse_alpha(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 0.5:
        raise ConfigError("alpha", f"must be a number in (0, 0.5), e.g. 0.05, got {v!r}")
    return float(v)


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


# --- paths ---------------------------------------------------------------------------------

# Config fields that name files or folders: the data roots, the surrogate, and every path a
# registered target declares (neuroreg.targets).
_PATH_FIELDS = ("data.root", "regularizer.data.root", "evaluation.surrogate") + tuple(
    f"regularizer.{p}" for target in TARGETS for p in target.paths)


def absolute_paths(base: dict[str, Any]) -> dict[str, Any]:
    """Make file paths absolute (Ray trials run in other working directories) and pin data
    roots that come from $NEUROREG_DATA_ROOT into the config (workers on other nodes do not
    see the driver's environment)."""
    out = copy.deepcopy(base)
    cfg = RunConfig.from_dict(copy.deepcopy(out), validate=False)
    for key in _PATH_FIELDS:
        value = config_value(cfg, key)
        if isinstance(value, str) and value and "://" not in value:
            set_dotted(out, key, str(Path(expand_path(value, key)).resolve()))
    env_root = os.environ.get("NEUROREG_DATA_ROOT")
    if env_root:
        for prefix, dc in (("data", cfg.data), ("regularizer.data", cfg.regularizer.data)):
            if dc is not None and dc.name not in ("digits", "synthetic") and not dc.root:
                set_dotted(out, f"{prefix}.root", str(Path(env_root).expanduser().resolve()))
    return out

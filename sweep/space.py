"""The search space of a sweep: its typed form (what sweep.spec parses a file into) and its
trials: conditions, the sampler random search and Optuna share, and the exact trial list
of a random or grid search."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuroreg.config import RunConfig, config_with

PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
RANDOM_TYPES = ("uniform", "loguniform", "int", "choice")
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("none", "asha")
MODES = ("min", "max")
DIRECTIONS = ("greater", "less", "two-sided", "equivalent")
"""Directions of a declared hypothesis: arm - reference > 0, < 0, != 0, or within
+-smallest_effect (two one-sided tests)."""

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

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
class HypothesisSpec:
    """A declared hypothesis: every regularized arm (or those ``arm`` selects) against its
    baseline, or against the arm ``reference`` selects in the same condition, on ``metric``."""

    metric: str
    direction: str = "greater"
    """greater (arm - reference > 0), less, two-sided, or equivalent (|arm - reference| <
    smallest_effect, two one-sided tests)."""
    smallest_effect: float = 0.0
    """The smallest difference worth finding (metric units): the futility rule excludes it,
    and the planning numbers give the seeds it needs. For equivalent: the margin."""
    arm: dict[str, Any] = field(default_factory=dict)
    """Config field -> value the compared arms have (e.g. {regularizer.pairing: shared});
    empty: every regularized arm."""
    reference: dict[str, Any] = field(default_factory=dict)
    """Config field -> value of the reference arm (e.g. {regularizer.pairing: pairs});
    empty: the baseline of each arm's condition."""

    def to_dict(self) -> dict[str, Any]:
        out = {"metric": self.metric, "direction": self.direction, "smallest_effect": self.smallest_effect}
        if self.arm:
            out["arm"] = dict(self.arm)
        if self.reference:
            out["reference"] = dict(self.reference)
        return out

    def describe(self) -> str:
        """'shared (regularizer.pairing=shared) equivalent to regularizer.pairing=pairs ...'."""
        who = " ".join(f"{k}={v}" for k, v in self.arm.items()) or "every arm"
        ref = " ".join(f"{k}={v}" for k, v in self.reference.items()) or "its baseline"
        how = {"greater": "greater than", "less": "less than", "two-sided": "different from",
               "equivalent": "equivalent (TOST) to"}[self.direction]
        what = "margin" if self.direction == "equivalent" else "smallest effect"
        return f"{who} {how} {ref} on {self.metric} ({what} {self.smallest_effect:g})"


@dataclass
class SequentialSpec:
    """``seeds: {min: 3, max: 12}``: seeds are added round by round until every declared
    hypothesis is decided (analysis.sequential), at most ``max``."""

    min: int
    max: int


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
    hypotheses: list[HypothesisSpec] = field(default_factory=list)
    """Declared hypotheses: the confirmatory family (Holm); every other comparison is exploratory."""
    alpha: float = 0.05
    """Type-I error of the confirmatory family (and the level of every interval and test)."""
    sequential: SequentialSpec | None = None
    """Sequential seeds: ``seeds`` then holds the first ``min`` seeds; rounds add seeds
    min, min + 1, ... up to max - 1 for the arms not yet decided."""

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
        """Trials the sweep runs: every enumerated one, or for Optuna the samples times the
        seeds plus the baseline per seed."""
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
            "seeds": ({"min": self.sequential.min, "max": self.sequential.max} if self.sequential
                      else list(self.seeds) if self.seeds else None),
            "metric": self.metric,
            "mode": self.mode,
            "num_samples": self.num_samples,
            "time_budget_s": self.time_budget_s,
            "resources": dict(vars(self.resources)),
            "baseline": self.baseline,
            "failure": dict(vars(self.failure)),
            "hypotheses": [h.to_dict() for h in self.hypotheses],
            "alpha": self.alpha,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- trials: conditions, the shared sampler, the exact list of a random or grid search --------


def config_value(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key in a RunConfig (None where the path does not exist)."""
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return obj


def condition_holds(p: ParamSpec, values: dict[str, Any], base_cfg: RunConfig) -> bool:
    for ck, allowed in p.when.items():
        current = values[ck] if ck in values else config_value(base_cfg, ck)
        if current not in allowed:
            return False
    return True


def enumerate_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """The exact trial parameter sets of a random or grid search: grid values crossed with
    num_samples random draws (seeded), conditional keys dropped where their condition is
    false, duplicates removed, every configuration repeated over the seeds."""
    import numpy as np

    if spec.search.algorithm == "optuna":
        raise ValueError("optuna trials are suggested while the sweep runs")
    rng = NumpySource(np.random.default_rng(spec.search.seed))
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
    return not RunConfig.from_dict(config_with(base, params), validate=False).regularizer.active


class NumpySource:
    """Random draws behind Optuna's ``suggest_*`` signatures, from a seeded NumPy generator:
    random search and Optuna then read a ParamSpec through the same ``sample_value``."""

    def __init__(self, rng: Any):
        self.rng = rng

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        if log:
            return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        return float(self.rng.uniform(low, high))

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return choices[int(self.rng.integers(len(choices)))]


def scalar_choices(p: ParamSpec) -> bool:
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in p.values)


def sample_value(p: ParamSpec, source: Any, name: str = "") -> Any:
    """One value of ``p`` drawn by ``source``: an Optuna trial (``name`` is its parameter
    name) or a NumpySource. Choices that are lists (layer sets) travel as JSON labels,
    since Optuna's categorical values must be scalars, and come back as fresh copies."""
    if p.type == "uniform":
        return source.suggest_float(name, p.low, p.high)
    if p.type == "loguniform":
        return source.suggest_float(name, p.low, p.high, log=True)
    if p.type == "int":
        return source.suggest_int(name, int(p.low), int(p.high))
    if scalar_choices(p):
        return source.suggest_categorical(name, p.values)
    return json.loads(source.suggest_categorical(name, [json.dumps(v) for v in p.values]))

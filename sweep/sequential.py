"""Seeds until the answer is in: the searcher of a sequential sweep (``seeds: {min, max}``).

Every configuration first runs over ``min`` seeds (grid and random: the enumerated trial
list; Optuna: its study's configurations, each repeated, plus the baselines). As trials
finish, each arm whose seeds (and those of the arms it is compared with, paired by seed)
are all in is looked at with the group-sequential test of ``analysis.sequential`` (through
``analysis.confirmatory.next_round``): decided arms (efficacy, futility) get no more seeds,
an undecided one gets its next seed at once, and so does its reference (the baseline, or the
arm an arm-vs-arm hypothesis names) while a comparison with it is undecided, up to ``max``. Looks are per arm, not per batch, so new seeds are queued
as trials finish and a cluster never waits for the slowest arm of a round.

The extra seeds are this searcher's own trials: Optuna's study sees only the configurations
it suggested with their first ``min`` seeds, as it sees no baseline trial. Its state travels
with Tune's experiment checkpoints (``get_state``), so ``--resume`` continues mid-sequence.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ray.tune.search import Searcher

from sweep.space import SweepSpec
from sweep.trainable import TRIAL_INDEX

PARAMS = "params"  # a trial's config: {"params": {dotted key: value}} (+ "__trial_index__")


class ForwardingSearcher(Searcher):
    """A wrapper that adds trials of its own (``ours``: baselines, extra seeds); the wrapped
    searcher hears only of the trials it suggested."""

    def __init__(self, searcher: Searcher):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher  # the name Tune's SearchGenerator walks to save the chain
        self.ours: set[str] = set()

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.ours:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.ours:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


def all_seeds(spec: SweepSpec) -> list[int] | None:
    """Seed values by trial index: the first round's, then one more per later round up to max."""
    if spec.sequential is None or not spec.seeds:
        return spec.seeds
    seeds = list(spec.seeds)
    nxt = max(seeds) + 1
    while len(seeds) < spec.sequential.max:
        seeds.append(nxt)
        nxt += 1
    return seeds


def max_trials(spec: SweepSpec, first_round: int) -> int:
    """The most trials a sequential sweep can run: every first-round trial grown to max seeds."""
    assert spec.sequential is not None
    return -(-first_round * spec.sequential.max // spec.sequential.min)


def round_of(index: int, min_seeds: int) -> int:
    """The round a trial's seed index belongs to: 1 for the first ``min`` seeds, then one each."""
    return 1 if index < min_seeds else index - min_seeds + 2


class ListSearcher(Searcher):
    """Hands out a fixed trial list (a grid or random search's) in order, then FINISHED."""

    def __init__(self, trials: list[dict[str, Any]]):
        super().__init__()
        self.trials = [copy.deepcopy(t) for t in trials]
        self.next = 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.next >= len(self.trials):
            return Searcher.FINISHED
        self.next += 1
        return copy.deepcopy(self.trials[self.next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict:
        return {"trials": self.trials, "next": self.next}

    def set_state(self, state: dict) -> None:
        self.trials, self.next = state["trials"], state["next"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


def _ident(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class SequentialSeeds(ForwardingSearcher):
    """Wraps the sweep's searcher; adds seeds to undecided arms as their trials finish."""

    def __init__(self, searcher: Searcher, spec: SweepSpec, first_round: int):
        super().__init__(searcher)
        assert spec.sequential is not None
        # The wrapped searcher hands out the first round only: an Optuna searcher never says
        # FINISHED by itself (Tune's trial budget stops it, and here that budget is max seeds).
        self.first_round = first_round
        self.inner_suggested = 0
        self.spec_dict = spec.to_dict()
        self.base = copy.deepcopy(spec.base)
        self.seeds = all_seeds(spec)
        self.min, self.max = spec.sequential.min, spec.sequential.max
        self.trials: dict[str, dict[str, Any]] = {}
        """trial id -> {ident, params, index, state (running|done|error), metrics}"""
        self.pending: list[dict[str, Any]] = []
        self.inner_finished = False

    # --- Tune's interface ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if self.pending:
            config = self.pending.pop(0)
            self.ours.add(trial_id)
        else:
            if self.inner_suggested >= self.first_round:
                self.inner_finished = True
            config = None if self.inner_finished else self.searcher.suggest(trial_id)
            if config == Searcher.FINISHED:
                self.inner_finished, config = True, None
            elif config is not None:
                self.inner_suggested += 1
            if config is None:
                running = any(t["state"] == "running" for t in self.trials.values())
                return None if running or not self.inner_finished else Searcher.FINISHED
        params = dict(config.get(PARAMS) or {})
        self.trials[trial_id] = {"ident": _ident(params), "params": params,
                                 "index": int(config.get(TRIAL_INDEX, 0)), "state": "running", "metrics": {}}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        t = self.trials.get(trial_id)
        if t is None:
            return
        t["state"] = "error" if error or not result else "done"
        if result:
            t["metrics"] = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._queue_next_seeds()

    def get_state(self) -> dict:
        return {"trials": self.trials, "pending": self.pending, "ours": set(self.ours),
                "inner_finished": self.inner_finished, "inner_suggested": self.inner_suggested}

    def set_state(self, state: dict) -> None:
        self.trials, self.pending = state["trials"], list(state["pending"])
        self.ours, self.inner_finished = set(state["ours"]), state["inner_finished"]
        self.inner_suggested = state["inner_suggested"]

    # --- the decisions ------------------------------------------------------------------
    def done_table(self):
        """Finished trials as the analysis sees them: arm labels from the varying config
        fields (gather's rule), the seed, and the reported metrics."""
        import pandas as pd

        from analysis.gather import arm_labels
        from analysis.ray_folder import flatten
        from neuroreg.config import config_with

        rows, config_cols = [], set()
        for tid, t in self.trials.items():
            if t["state"] != "done":
                continue
            params = {**t["params"], "train.seed": self.seeds[t["index"]] if self.seeds else t["index"]}
            config = flatten(config_with(self.base, params))
            config_cols |= set(config)
            metrics = {k: v for k, v in t["metrics"].items() if k not in config}
            rows.append({"trial_id": tid, "status": "TERMINATED", "_ident": t["ident"], "_index": t["index"],
                         **config, **metrics})
        df = pd.DataFrame(rows)
        if not len(df):
            return df
        labels = arm_labels(df, sorted(config_cols))
        return df.assign(arm=labels["arm"], condition=labels["condition"], baseline=labels["baseline"])

    def _assigned(self, ident: str) -> dict[int, str]:
        """Seed index -> state of every trial of this configuration, queued ones included."""
        out = {t["index"]: t["state"] for t in self.trials.values() if t["ident"] == ident}
        out.update({int(c[TRIAL_INDEX]): "pending" for c in self.pending if _ident(c[PARAMS]) == ident})
        return out

    def _queue(self, params: dict[str, Any], index: int) -> None:
        self.pending.append({PARAMS: copy.deepcopy(params), TRIAL_INDEX: index})

    def _queue_next_seeds(self) -> None:
        from analysis.confirmatory import open_comparisons, partners, sequential_looks

        df = self.done_table()
        if not len(df) or "arm" not in df:
            return
        looks = sequential_looks(df, self.spec_dict)
        still = open_comparisons(looks)
        # An arm with an undecided comparison of its own leads: it takes its next seed. A
        # reference (the baseline, or an arm another is compared with) follows: it takes seed
        # n once an arm with an undecided comparison against it has seed n, never ahead.
        leaders = {arm for arm, _ref in still}
        followers: dict[str, set[str]] = {}
        for arm, ref in still:
            followers.setdefault(ref, set()).add(arm)
        pairs = partners(looks)
        ident = {arm: g["_ident"].iloc[0] for arm, g in df.groupby("arm")}
        for arm in sorted(leaders) + sorted(set(followers) - leaders):
            if arm not in ident:
                continue
            g = df[df["arm"] == arm]
            params = self.trials[g["trial_id"].iloc[0]]["params"]
            assigned = self._assigned(ident[arm])
            n = max(assigned) + 1
            # The first round (seeds 0 .. min-1) is the wrapped searcher's to hand out; later
            # seeds wait until every earlier one of the arm is in.
            if n >= self.max or any(i not in assigned for i in range(self.min)) or \
                    any(s not in ("done", "error") for s in assigned.values()):
                continue
            if arm not in leaders and not any(n in self._assigned(ident[a]) for a in followers[arm] if a in ident):
                continue
            # A look pairs the arm's seeds with those of the arms it is compared with: wait for
            # their seeds in flight (an arm that stopped earlier has none and never blocks).
            in_flight = any(state not in ("done", "error")
                            for other in pairs.get(arm, set()) if other in ident
                            for i, state in self._assigned(ident[other]).items() if i in assigned)
            if not in_flight:
                self._queue(params, n)

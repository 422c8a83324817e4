"""A SweepSpec as a Ray Tune job: search algorithm, scheduler, trainable, Tuner.

random / grid: the exact trial list comes from ``spec.enumerate_trials`` (reproducible,
shown by --dry-run) and runs as one grid over parameter sets. optuna: a define-by-run
space (conditional keys are simply not suggested when their condition is false), wrapped
in a Repeater when every configuration runs over several seeds.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.search import Repeater, Searcher

from neuroreg.evaluate.metrics import EPOCH_METRICS
from sweep.folder import sweep_folder
from sweep.reconcile import Reconciling, ReconcilingASHA, ReconcilingFIFO
from sweep.sequential import (
    PARAMS,
    ForwardingSearcher,
    ListSearcher,
    SequentialSeeds,
    all_seeds,
    max_trials,
)
from sweep.space import (
    BASELINE_PARAMS,
    SweepSpec,
    condition_holds,
    enumerate_trials,
    sample_value,
    scalar_choices,
)
from sweep.start import check_picklable
from sweep.study import ExtendableSearch, make_sampler, rdb_storage, search_generator
from sweep.trainable import TRIAL_INDEX, data_key, prepare_shared_data, run_trial
from sweep.validation import needs_regularization_set


def trial_dirname(trial: Any) -> str:
    from sweep.study_links import trial_folder_name

    return trial_folder_name(trial.trial_id)


class MeanRepeater(Repeater):
    """Ray's Repeater averages one metric over the repeats; this one averages each of
    several (Optuna multi-objective), which Ray's class cannot (it tests ``metric in result``)."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict) and hasattr(self.searcher, "link_seed"):
            group = self._trial_id_to_group[trial_id]
            self.searcher.link_seed(group.primary_trial_id, trial_id, config.get(TRIAL_INDEX))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Ray's Repeater drops per-epoch results; the study's curves average every seed's.
        if hasattr(self.searcher, "link_seed"):
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        metrics = self.searcher.metric
        if not isinstance(metrics, list):
            return super().on_trial_complete(trial_id, result, **kwargs)
        group = self._trial_id_to_group[trial_id]
        score = tuple(float(result[m]) if result and m in result else np.nan for m in metrics)
        group.report(trial_id, score)
        if group.finished_reporting():
            scores = np.array(group.scores(), dtype=float)
            with np.errstate(all="ignore"):
                means = np.nanmean(scores, axis=0)
            self.searcher.on_trial_complete(
                group.primary_trial_id,
                result={m: float(v) for m, v in zip(metrics, means) if not math.isnan(v)},
                **kwargs,
            )


class BaselineFirst(ForwardingSearcher):
    """Hands out one baseline trial per seed first, then the wrapped searcher's trials.

    The baseline trials never reach the wrapped searcher: Optuna's sampler draws only from the
    configurations it suggested, while every seed still gets its unregularized reference.
    When every baseline seed is in, their mean goes into the study as a fixed trial the
    sampler never sees (``LinkedOptunaSearch.add_baseline``), for the dashboard's Pareto front.
    """

    def __init__(self, searcher: Searcher, n_seeds: int):
        super().__init__(searcher)
        self.pending = [{PARAMS: dict(BASELINE_PARAMS), TRIAL_INDEX: i} for i in range(n_seeds)]
        self.n_seeds = n_seeds
        self.runs: dict[str, dict[str, Any]] = {}  # baseline trial id -> index, curve, final metrics

    def suggest(self, trial_id: str) -> dict | None:
        if self.pending:
            self.ours.add(trial_id)
            config = self.pending.pop(0)
            self._runs()[trial_id] = {"trial_id": trial_id, "index": config[TRIAL_INDEX], "curve": {}}
            return config
        return self.searcher.suggest(trial_id)

    def _runs(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "runs"):  # a searcher pickled before the runs were kept
            self.runs, self.n_seeds = {}, len(self.ours) + len(self.pending)
        return self.runs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        run = self._runs().get(trial_id)
        if run is None:
            return super().on_trial_result(trial_id, result)
        value, epoch = result.get("val_acc"), result.get("epoch")
        if "evaluated" not in result and isinstance(epoch, int) and isinstance(value, (int, float)):
            run["curve"][epoch] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        runs = self._runs()
        if trial_id not in runs:
            return
        runs[trial_id]["metrics"] = {k: v for k, v in (result or {}).items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if len(runs) == self.n_seeds and all("metrics" in r for r in runs.values()):
            from sweep.study_links import linked_search

            study = linked_search(self.searcher)
            if study is not None:
                study.add_baseline(list(runs.values()))

    # Tune saves a wrapper's own state with get_state and the innermost searcher by itself
    # (SearchGenerator.save_to_dir walks the .searcher chain), as for Ray's Repeater.
    def get_state(self) -> dict:
        return {"pending": list(self.pending), "ours": set(self.ours), "runs": dict(self._runs()),
                "n_seeds": self.n_seeds}

    def set_state(self, state: dict) -> None:
        self.pending, self.ours = list(state["pending"]), set(state["ours"])
        self.runs = dict(state.get("runs", {}))
        self.n_seeds = state.get("n_seeds", len(self.ours) + len(self.pending))


class OptunaSpace:
    """The define-by-run function (a class: Tune pickles the searcher with its state).

    Suggests each key in file order, skipping conditional keys whose condition is false.
    Choices that are lists (layer sets) go to Optuna as JSON labels (its categorical
    values must be scalars) and come back decoded. Returns {name: decoded value} for those."""

    prefix = f"{PARAMS}/"  # the names of a space pickled before they were plain (a resumed sweep)

    def __init__(self, spec: SweepSpec):
        self.space = list(spec.space)
        self.base = spec.base
        # Optuna's parameter names are the config keys themselves (regularizer.alpha), as the
        # dashboard shows them; LinkedOptunaSearch nests them under "params" for the trainable.
        self.prefix = ""

    def __call__(self, trial: Any) -> dict[str, Any]:
        from neuroreg.config import RunConfig

        base_cfg = RunConfig.from_dict(self.base, validate=False)
        values: dict[str, Any] = {}
        decoded: dict[str, Any] = {}
        for p in self.space:
            if not condition_holds(p, values, base_cfg):
                continue
            name = f"{self.prefix}{p.key}"
            values[p.key] = sample_value(p, trial, name)
            if p.type == "choice" and not scalar_choices(p):
                decoded[name] = values[p.key]
        return decoded


def optuna_space(spec: SweepSpec) -> OptunaSpace:
    return OptunaSpace(spec)


def build_search(
    spec: SweepSpec, study_storage: str | None = None, study_name: str | None = None
) -> tuple[Any, dict[str, Any], int]:
    """(search algorithm or None, param_space, num_samples for TuneConfig).

    ``study_storage``: the Optuna study's SQLAlchemy URL (None: in memory)."""
    if spec.search.algorithm != "optuna":
        trials = enumerate_trials(spec)
        if spec.sequential is None:
            return None, {PARAMS: tune.grid_search(trials)}, 1
        # Sequential: the list as a searcher, each seed by its index, so later rounds add seeds.
        first = [{PARAMS: {k: v for k, v in t.items() if k != "train.seed"},
                  TRIAL_INDEX: spec.seeds.index(t["train.seed"])} for t in trials]
        return SequentialSeeds(ListSearcher(first), spec, len(first)), {}, max_trials(spec, len(first))

    from sweep.study_links import LinkedOptunaSearch

    metrics, modes = spec.search_metrics, spec.search_modes
    multi = len(metrics) > 1
    kw = {} if multi or spec.search.n_startup_trials is None else {"n_startup_trials": spec.search.n_startup_trials}
    sampler = make_sampler(multi, spec.search.seed, **kw)
    # A metric known only after the evaluation is passed as a one-element list: OptunaSearch
    # then skips the per-epoch reports (it would look the metric up in each of them).
    as_list = multi or any(m not in EPOCH_METRICS for m in metrics)
    searcher = LinkedOptunaSearch(
        space=optuna_space(spec),
        base=spec.base_config.to_dict(),
        seeds=all_seeds(spec),
        repeats=spec.repeats,
        metric=metrics if as_list else metrics[0],
        mode=modes if as_list else modes[0],
        sampler=sampler,
        # The storage only decides where trials are kept; the seeded sampler draws the
        # same configurations from either.
        **({"storage": rdb_storage(study_storage), "study_name": study_name} if study_storage else {}),
    )
    if spec.repeats > 1:
        searcher = MeanRepeater(searcher, repeat=spec.repeats, set_index=True)
    if spec.baseline_trials():
        searcher = BaselineFirst(searcher, spec.baseline_trials())
    if spec.sequential is not None:
        return SequentialSeeds(searcher, spec, spec.num_trials()), {}, max_trials(spec, spec.num_trials())
    return searcher, {}, spec.num_trials()


def build_scheduler(spec: SweepSpec) -> Any:
    """FIFO or ASHA, both keeping the searcher's live trials true to the restored ones
    (sweep/reconcile.py: a driver killed mid-upload could leave --resume waiting forever)."""
    if spec.scheduler.type != "asha":
        return ReconcilingFIFO()
    # Trials report once per epoch plus once after the evaluation, so the horizon is
    # epochs + 1: ASHA must not stop a trial at its last epoch, before it is evaluated.
    return ReconcilingASHA(
        time_attr="training_iteration",
        metric=spec.metric,
        mode=spec.mode,
        max_t=spec.max_epochs() + 1,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )


def needs_lenient_metrics(spec: SweepSpec) -> bool:
    """Tune insists every result holds the searcher's metrics; evaluation metrics are only in
    the last one."""
    return spec.search.algorithm == "optuna" and any(m not in EPOCH_METRICS for m in spec.search_metrics)


def build_trainable(spec: SweepSpec, experiment_dir: str | None, share_data: bool = True, verbose: int = 0) -> Any:
    """run_trial with its large arguments in Ray's object store (once, not per trial)."""
    base_cfg = spec.base_config
    shared = prepare_shared_data(base_cfg, needs_regularization_set(spec)) if share_data else None
    fn = tune.with_parameters(
        run_trial,
        base=spec.base,
        seeds=all_seeds(spec),
        experiment_dir=experiment_dir,
        cpus_per_trial=spec.resources.cpus_per_trial,
        shared=shared,
        shared_key=data_key(base_cfg),
        quiet_logs=verbose < 1,
    )
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    return tune.with_resources(fn, resources)


def build_tuner(
    spec: SweepSpec,
    storage: str,
    name: str,
    max_concurrent: int,
    verbose: int = 1,
    progress: bool = False,
    study_storage: str | None = None,
    max_failures: int = 0,
    loggers: list | None = None,
) -> tune.Tuner:
    local = "://" not in storage
    experiment_dir = str(Path(storage) / name) if local else None
    searcher, param_space, num_samples = build_search(spec, study_storage, name)
    if needs_lenient_metrics(spec):
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if searcher is not None:
        # Our own generator (same chain Tune would build) so --resume --num-samples can extend it.
        searcher, max_concurrent = search_generator(searcher, max_concurrent), None
    trainable, scheduler = build_trainable(spec, experiment_dir, verbose=verbose), build_scheduler(spec)
    check_picklable({"search algorithm": searcher, "trainable": trainable, "scheduler": scheduler})
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            time_budget_s=spec.time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(storage, name, local, verbose, _callbacks(spec, verbose, progress) + list(loggers or []),
                              max_failures),
    )


TB_FOLDER = "tensorboard"
"""TensorBoard's runs in the sweep folder: tensorboard/<arm label>/seed<k>/."""

# Ray's bookkeeping in every result: not curves.
_RAY_KEYS = frozenset({
    "training_iteration", "iterations_since_restore", "timestamp", "time_this_iter_s", "time_total_s",
    "time_since_restore", "pid", "done", "epoch", "timesteps_total", "episodes_total", "timesteps_since_restore",
})


def tb_run_name(config: dict[str, Any], base: dict[str, Any] | None, seeds: list[int] | None) -> str:
    """``<arm label>/seed<k>``: the arm from the trial's parameters (``none`` for a baseline),
    k its train.seed; characters a folder name should not hold become ``_``."""
    from sweep.labels import arm_label, trial_seed

    label = re.sub(r"[^A-Za-z0-9._=,+-]", "_", arm_label(config.get(PARAMS) or {}, base))
    return f"{label}/seed{trial_seed(config, seeds, base)}"


class ArmSeedTBXLogger(TBXLoggerCallback):
    """Ray's TensorBoard logger, with runs named by arm and seed and steps that are epochs.

    Ray's own writes into each trial folder, so TensorBoard lists ``trial_<id>`` runs, and
    steps by training_iteration, so the evaluation report shows as one more epoch. This one
    (a TBXLoggerCallback, so Ray adds no second one) writes STORAGE/NAME/tensorboard/<arm
    label>/seed<k>, one scalar per metric per epoch at step = epoch, and the evaluation's
    metrics under evaluation/ at the last epoch's step. Two trials of one name (two alphas
    equal to 4 digits) keep apart: the second run gets its trial id appended."""

    def __init__(self, base: dict[str, Any] | None = None, seeds: list[int] | None = None):
        super().__init__()
        self.base, self.seeds = base, seeds
        self._epoch_keys: dict[Any, set[str]] = {}

    def run_dir(self, trial: Any) -> Path:
        root = Path(trial.local_experiment_path) / TB_FOLDER
        run = root / tb_run_name(trial.config or {}, self.base, self.seeds)
        marker = run / ".trial_id"
        if marker.is_file() and marker.read_text().strip() != trial.trial_id:
            run = run.with_name(f"{run.name}_{trial.trial_id}")
        run.mkdir(parents=True, exist_ok=True)
        (run / ".trial_id").write_text(trial.trial_id)
        return run

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        trial.init_local_path()
        self._trial_writer[trial] = self._summary_writer_cls(str(self.run_dir(trial)), flush_secs=30)
        self._trial_result[trial] = {}
        self._epoch_keys.setdefault(trial, set())

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        epoch = result.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return
        final = "evaluated" in result  # the evaluation report: same epoch, its own metrics only
        seen = self._epoch_keys.setdefault(trial, set())
        writer, logged = self._trial_writer[trial], {}
        for k, v in result.items():
            if k in _RAY_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                continue
            if final:
                if k in seen:
                    continue
                tag = f"evaluation/{k}"
            else:
                seen.add(k)
                tag = k
            writer.add_scalar(tag, v, global_step=epoch)
            logged[tag] = v
        self._trial_result[trial].update(logged)
        writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        super().log_trial_end(trial, failed)
        self._epoch_keys.pop(trial, None)

    def _try_log_hparams(self, trial: Any, result: dict) -> None:
        """The hyperparameters as the sweep names them (regularizer.alpha, train.seed), only
        those that apply to the arm."""
        from tensorboardX.summary import hparams

        from sweep.labels import applies, trial_seed

        config = trial.config or {}
        params = config.get(PARAMS) or {}
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()
              if applies(k, params, self.base)}
        seed = trial_seed(config, self.seeds, self.base)
        if seed is not None:
            hp["train.seed"] = seed
        try:
            for tag in hparams(hparam_dict=hp, metric_dict=result):
                self._trial_writer[trial].file_writer.add_summary(tag)
        except Exception as e:  # as Ray's: an odd value must not stop the sweep
            print(f"warning: TensorBoard hparams of trial {trial.trial_id} not written: {e}", file=sys.stderr)


def _callbacks(spec: SweepSpec, verbose: int, progress: bool) -> list:
    base = spec.base_config.to_dict()
    out: list = [ArmSeedTBXLogger(base, all_seeds(spec))]
    if verbose >= 1 or not progress:
        return out
    from sweep.progress import CompactProgress

    return [*out, CompactProgress(spec.search_metrics, trial_count(spec), all_seeds(spec), base)]


def trial_count(spec: SweepSpec) -> str:
    """The trial count as printed: a range for a sequential sweep (first round to max seeds)."""
    if spec.sequential is None:
        return str(spec.num_trials())
    return f"{spec.num_trials()} to {max_trials(spec, spec.num_trials())}"


def _quiet_tune(verbose: int) -> None:
    """Ray's new console output prints a configuration box and a TensorBoard hint into its
    session folder at every start, whatever the verbosity; its legacy reporter at verbosity 0
    prints nothing, and the sweep's own lines (CompactProgress) say what matters."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0" if verbose < 1 else "1"


def run_config(
    storage: str, name: str, local: bool, verbose: int = 1, callbacks: list | None = None, max_failures: int = 0
) -> tune.RunConfig:
    _quiet_tune(verbose)
    return tune.RunConfig(
        callbacks=callbacks or None,
        name=name,
        storage_path=storage,
        # Two, not one: Tune deletes the older checkpoint before it snapshots the experiment
        # state, so a driver killed in between (SIGKILL) left a state pointing at a deleted
        # checkpoint with num_to_keep=1 and the trial could not be restored.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # A trial whose node dies (or that raises) is retried this often from its last
        # checkpoint, on any node with room; the space's `failure: {max_failures: N}`.
        failure_config=tune.FailureConfig(max_failures=max_failures),
        # Local storage: trials write run/ and evaluation/ straight into their folder.
        # Remote storage (s3://, gs://): they write to the working directory, synced here.
        sync_config=tune.SyncConfig(sync_artifacts=not local),
        verbose=verbose,
    )


def restore_tuner(spec: SweepSpec, storage: str, name: str, verbose: int = 1) -> tune.Tuner:
    """Continue an interrupted sweep: finished trials stay, interrupted ones continue from
    their last epoch checkpoint, errored ones start again. An Optuna sweep runs up to
    ``spec.num_trials()`` trials, more than it started with when --num-samples grew."""
    ExtendableSearch.extend_to = spec.num_trials() if spec.search.algorithm == "optuna" else None
    local = "://" not in storage
    path = sweep_folder(storage, name)
    if needs_lenient_metrics(spec):
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    _quiet_tune(verbose)
    tuner = tune.Tuner.restore(
        path,
        trainable=build_trainable(spec, path if local else None, verbose=verbose),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=True,
    )
    # A sweep saved before sweep/reconcile.py has Tune's plain scheduler in its tuner.pkl; that
    # holds the scheduler as it was at the start, so an equivalent new one loses nothing.
    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    if config is not None and not isinstance(config.scheduler, Reconciling):
        config.scheduler = build_scheduler(spec)
    return tuner

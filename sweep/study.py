"""The Optuna study of a sweep, kept in a database so it outlives the driver.

Default: ``sqlite:///STORAGE/NAME/study.db`` beside the sweep's results (one writer: the
driver). ``--study-storage URL`` takes any SQLAlchemy URL (PostgreSQL, MySQL, another
SQLite file). With remote ``--storage`` (s3://, gs://) there is no local sweep folder, so
the study stays in memory and travels pickled inside Tune's experiment state in the
bucket, which is what ``--resume`` restores; pass ``--study-storage`` to keep it in a
database as well.

``--resume --num-samples N`` extends a study: Tune's search generator saved the trial
count it was started with, so the generator used here lets a larger target override the
saved one when the run is restored.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from neuroreg.config import ConfigError

STUDY_FILE = "study.db"


def default_study_storage(storage: str, name: str) -> str | None:
    """The study's SQLAlchemy URL for a sweep, or None (in memory) for remote storage."""
    if "://" in storage:
        return None
    return f"sqlite:///{Path(storage) / name / STUDY_FILE}"


def check_study_url(url: str) -> str:
    """A URL SQLAlchemy can parse, with its driver installed; refused before Ray starts."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        parsed.get_dialect()
    except Exception as e:  # ArgumentError, NoSuchModuleError, a missing DB driver
        raise ConfigError("--study-storage", f"{url!r} is no usable SQLAlchemy URL ({str(e).splitlines()[0][:160]}); "
                                             "e.g. sqlite:////abs/path/study.db or postgresql://user@host/db") from None
    return url


def rdb_storage(url: str | None) -> Any:
    """optuna's RDBStorage for ``url`` (tables created on first use); None keeps it in memory."""
    if url is None:
        return None
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


def study_trials(url: str, study_name: str) -> int:
    """How many trials the stored study holds (0 when there is no such study).

    Read-only: plain SELECTs on Optuna's tables through SQLAlchemy, never optuna's
    RDBStorage (which creates its tables and stamps a schema version in any database it
    opens), so asking, in a dry run too, changes no database."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return 0  # no database yet (and none created by asking)
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not {"studies", "trials"} <= tables:
                return 0  # no Optuna study in this database
            n = conn.execute(sa.text("SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                                     "WHERE s.study_name = :name"), {"name": study_name}).scalar()
            conn.rollback()
            return int(n or 0)
    finally:
        engine.dispose()


class ExtendableSearch(SearchGenerator):
    """Tune's SearchGenerator whose trial target may grow when a sweep is restored.

    ``extend_to`` (set by ``sweep.tuner.restore_tuner`` before ``fit``) replaces the saved
    total when it is larger; a generator that had finished is then open again."""

    extend_to: int | None = None

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        target = type(self).extend_to
        if target is not None and target > self._total_samples:
            self._total_samples = target
            self._finished = False


def search_generator(searcher: Searcher, max_concurrent: int) -> ExtendableSearch:
    """The chain Tune builds itself for ``max_concurrent_trials`` (ConcurrencyLimiter, then a
    SearchGenerator), with the extendable generator outside."""
    return ExtendableSearch(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))


# --- samplers that survive Tune's pickling ------------------------------------------

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_LOCK, _RLOCK = "__neuroreg_lock__", "__neuroreg_rlock__"


class PicklableLocks:
    """Pickles a sampler whose attributes include thread locks (dropped, then recreated).

    Tune pickles the whole search algorithm into its experiment state (``tuner.pkl`` and
    every searcher checkpoint). optuna 5.1's ``NSGAIISampler`` holds a ``threading.Lock``
    (``_thread_lock``, guarding its generation cache), which cannot be pickled, so the
    default sweep died before its first trial. A lock guards only in-process state, so a
    fresh one after unpickling is equivalent; the sampler's RNG and caches travel as they are.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k, v in state.items():
            if isinstance(v, _LOCK_TYPES):
                state[k] = _RLOCK if "RLock" in type(v).__name__ else _LOCK
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            if v == _LOCK:
                state[k] = threading.Lock()
            elif v == _RLOCK:
                state[k] = threading.RLock()
        self.__dict__.update(state)


FIXED = "fixed"
"""User attribute of a trial the platform adds to the study itself (the baseline's mean over
its seeds): shown by optuna-dashboard, never seen by the sampler."""


def is_fixed(trial: Any) -> bool:
    return FIXED in (getattr(trial, "user_attrs", None) or {})


class _StudyWithoutFixed:
    """The study as the sampler sees it: every trial but the fixed ones.

    The baseline's trial has no parameters; seen by the sampler it would empty the
    intersection search space NSGA-II crosses over in, and count as a (very good or very
    bad) observation for TPE, although the sampler never suggested it."""

    def __init__(self, study: Any):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        return [t for t in self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
                if not is_fixed(t)]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list:
        return self._get_trials()


def _real(study: Any) -> Any:
    return study._study if isinstance(study, _StudyWithoutFixed) else study


class IgnoresFixedTrials:
    """A sampler that never sees the study's fixed trials (``FIXED``)."""

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return super().infer_relative_search_space(_StudyWithoutFixed(_real(study)), trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return super().sample_relative(_StudyWithoutFixed(_real(study)), trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return super().sample_independent(_StudyWithoutFixed(_real(study)), trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        super().before_trial(_StudyWithoutFixed(_real(study)), trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        super().after_trial(_StudyWithoutFixed(_real(study)), trial, state, values)

    def _sync_generation_cache(self, study: Any) -> Any:
        # optuna's GA samplers index the trial list by trial number here, so they get the
        # whole list; a fixed trial has no generation and joins no population anyway.
        return super()._sync_generation_cache(_real(study))


_KINDS = {"PicklableNSGAIISampler": "NSGAIISampler", "PicklableTPESampler": "TPESampler"}
_MADE: dict[str, type] = {}


def picklable_sampler_class(name: str) -> type:
    """``PicklableNSGAIISampler`` or ``PicklableTPESampler``: optuna's sampler with
    ``PicklableLocks`` and ``IgnoresFixedTrials`` in front. Made on first use (optuna is imported lazily: ``sweep.run``
    validates a space before paying for it) and reachable as an attribute of this module,
    so pickle finds it by name in a fresh process too (``--resume``)."""
    if name not in _MADE:
        import optuna

        base = getattr(optuna.samplers, _KINDS[name])
        cls = type(name, (PicklableLocks, IgnoresFixedTrials, base), {"__module__": __name__, "__qualname__": name})
        # optuna's GA samplers derive study attribute keys from the class name in
        # __init_subclass__ ("NSGAIISampler:generation"): keep the base's, so studies made
        # by the plain sampler and by this one read each other's generations.
        for key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
            if hasattr(base, key):
                setattr(cls, key, getattr(base, key))
        _MADE[name] = cls
    return _MADE[name]


def __getattr__(name: str) -> Any:  # PEP 562: unpickling looks the class up here
    if name in _KINDS:
        return picklable_sampler_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_sampler(multi_objective: bool, seed: int | None, **kwargs: Any) -> Any:
    """The search's seeded sampler, picklable: NSGA-II for several objectives, else TPE."""
    name = "PicklableNSGAIISampler" if multi_objective else "PicklableTPESampler"
    return picklable_sampler_class(name)(seed=seed, **kwargs)

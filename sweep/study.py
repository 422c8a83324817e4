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
    """How many trials the stored study holds (0 when there is no such study)."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return 0  # no database yet (and none created by asking)

    try:
        return len(optuna.load_study(study_name=study_name, storage=url).trials)
    except KeyError:
        return 0


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

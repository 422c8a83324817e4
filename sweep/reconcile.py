"""Tune schedulers that keep the search algorithm's concurrency bookkeeping true to the trials.

Why: Tune saves the trial states (experiment_state-*.json) and the search algorithm's state
(its live trials, the variants it has left) as two files, and with remote storage (s3://)
uploads them one after the other. A driver killed between the two uploads leaves a bucket
whose searcher state is one sync older than its trials: on ``--resume`` the searcher still
counts a trial that had finished as live, and, with ``max_concurrent`` reached by that ghost,
it never hands out another trial. Once the restored trials are done, Tune's controller waits
for the searcher (600 s at a time) forever. The same stale state would also hand out a
restored, unfinished trial's variant a second time.

The fix is in the scheduler because Tune gives the scheduler the restored trials
(``on_trial_add``, called before the first step) and the search algorithm
(``tune_controller.search_alg``). The attributes touched are Tune's own (Ray is pinned in
requirements.lock); tests/test_reconcile.py fails if they change.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

_FINISHED = (Trial.TERMINATED, Trial.ERROR)


def live_sets(search_alg: Any) -> list[set]:
    """The sets of trial ids a search algorithm chain counts against its concurrency limit:
    BasicVariantGenerator's ``_live_trials``, ConcurrencyLimiter's ``live_trials``."""
    out, seen, node = [], set(), search_alg
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for name in ("_live_trials", "live_trials"):
            value = getattr(node, name, None)
            if isinstance(value, set):
                out.append(value)
        node = getattr(node, "searcher", None)
    return out


def _consume_generated(search_alg: Any, trial_id: str) -> bool:
    """When the searcher's next trial would be ``trial_id`` (a restored trial its stale state
    has not generated yet), generate it and drop it: its variant must not run twice."""
    for it in getattr(search_alg, "_iterators", None) or []:
        variants = getattr(it, "variants", None)
        if variants is None or not variants.has_next():
            continue
        if f"{it.uuid_prefix}{it.counter:05d}" == trial_id:
            next(it)
            return True
    return False


def reconcile_added(search_alg: Any, trial: Trial) -> None:
    """A trial joins the controller (new, or restored on resume): a finished one is no longer
    live for the searcher; an unfinished one the searcher does not know is live, and not to be
    generated again."""
    sets = live_sets(search_alg)
    if trial.status in _FINISHED:
        for s in sets:
            s.discard(trial.trial_id)
        return
    if sets and all(trial.trial_id not in s for s in sets) and _consume_generated(search_alg, trial.trial_id):
        for s in sets:
            s.add(trial.trial_id)


def reconcile_live(search_alg: Any, trials: list[Trial]) -> None:
    """Forget live ids that are no trial of the controller's, or one that has finished (the
    searcher state was newer, or older, than the trial states it was restored with)."""
    sets = [s for s in live_sets(search_alg) if s]
    if not sets:
        return
    unfinished = {t.trial_id for t in trials if t.status not in _FINISHED}
    for s in sets:
        s.intersection_update(unfinished)


class _Reconciling:
    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        reconcile_added(tune_controller.search_alg, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        reconcile_live(tune_controller.search_alg, tune_controller.get_trials())
        return super().choose_trial_to_run(tune_controller)


class ReconcilingFIFO(_Reconciling, FIFOScheduler):
    """Tune's default scheduler (first in, first out), reconciling the searcher's live trials."""


class ReconcilingASHA(_Reconciling, ASHAScheduler):
    """ASHA, reconciling the searcher's live trials."""

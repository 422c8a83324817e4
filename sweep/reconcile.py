"""Tune schedulers that keep the search algorithm's bookkeeping true to the trials on resume.

Why: Tune saves the trial states (experiment_state-*.json) and the search algorithm's state
(its live trials, the variants it has left) as two files, and with remote storage (s3://)
uploads them one after the other. A driver killed between the two uploads leaves a bucket
whose searcher state is one sync older (or newer) than its trials. Older: on ``--resume`` the
searcher still counts a trial that had finished as live and, with ``max_concurrent`` reached
by that ghost, never hands out another trial (Tune's controller then waits for it, 600 s at a
time, forever), and it would hand out a restored, unfinished trial's variant a second time.
Newer: it counts a trial as live that the trial states do not hold at all.

The fix is in the scheduler because Tune gives the scheduler every restored trial
(``on_trial_add``, before the first step) and the search algorithm
(``tune_controller.search_alg``). What is done:

- a finished restored trial the searcher still counts as live is completed again, with its
  last result, through the whole chain (``search_alg.on_trial_complete``), so that inner
  searchers (sequential seeds, repeats, Optuna) learn it finished, not only the limiter;
- a restored unfinished trial Tune's grid generator has not handed out yet is taken out of it
  (its id is the generator's next: prefix + counter), so it does not run twice;
- a live id that is no trial of the controller's (searcher newer) is completed as errored, with
  a warning naming it: its configuration was handed out by the lost driver and is not rerun.
  It is noticed at the first step's scheduling (once), so when nothing else is left to run
  the resumed controller may first wait out one of Tune's 600-s searcher waits.

The attributes touched are Tune's own (Ray is pinned in requirements.lock);
tests/test_reconcile.py and the S3 resume test in tests/test_cluster.py fail if they change.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.utils import flatten_dict

_FINISHED = (Trial.TERMINATED, Trial.ERROR)
log = logging.getLogger("sweep.reconcile")


def live_sets(search_alg: Any) -> list[set]:
    """The sets of trial ids a search algorithm chain counts against its concurrency limit,
    outermost first: BasicVariantGenerator's ``_live_trials``, ConcurrencyLimiter's ``live_trials``."""
    out, seen, node = [], set(), search_alg
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for name in ("_live_trials", "live_trials"):
            value = getattr(node, name, None)
            if isinstance(value, set):
                out.append(value)
        node = getattr(node, "searcher", None)
    return out


def _next_generated_id(search_alg: Any) -> tuple[Any, str] | None:
    """Tune's grid generator's next trial id (its iterator and the id), if it has one left."""
    for it in getattr(search_alg, "_iterators", None) or []:
        variants = getattr(it, "variants", None)
        # The iterator's __next__: the current variants first, then a new pass over the space.
        if (variants is not None and variants.has_next()) or it.points_to_evaluate or it.num_samples_left > 0:
            return it, f"{it.uuid_prefix}{it.counter:05d}"
    return None


def reconcile_added(search_alg: Any, trial: Trial, unknown: set[str]) -> None:
    """A trial joins the controller (new, or restored on resume). ``unknown``: restored
    unfinished trials the searcher has not handed out yet (kept across calls, because Tune adds
    restored trials newest first, not in the order the generator numbered them)."""
    sets = live_sets(search_alg)
    if not sets:
        return
    if trial.status in _FINISHED:
        if trial.trial_id in sets[0]:
            search_alg.on_trial_complete(trial.trial_id, result=flatten_dict(trial.last_result or {}),
                                         error=trial.status == Trial.ERROR)
            for s in sets:  # what the chain's completion left behind
                s.discard(trial.trial_id)
        return
    if trial.trial_id in sets[0]:
        return
    unknown.add(trial.trial_id)
    while (nxt := _next_generated_id(search_alg)) is not None and nxt[1] in unknown:
        next(nxt[0])  # generated and dropped: the restored trial is this variant
        unknown.discard(nxt[1])
        for s in sets:
            s.add(nxt[1])


def reconcile_live(search_alg: Any, trials: list[Trial]) -> None:
    """Complete, as errored, live ids that are no trial of the controller's (searcher state
    newer than the trial states); forget finished ones still counted."""
    sets = live_sets(search_alg)
    if not sets or not sets[0]:
        return
    by_id = {t.trial_id: t for t in trials}
    for tid in list(sets[0]):
        t = by_id.get(tid)
        if t is None:
            log.warning("resume: the search algorithm had handed out trial %s, which the saved trial "
                        "states do not hold (the driver was lost between Tune's two uploads); its "
                        "configuration is not run again", tid)
            search_alg.on_trial_complete(tid, result=None, error=True)
        elif t.status not in _FINISHED:
            continue
        for s in sets:
            s.discard(tid)


class Reconciling:
    """Mixin: the searcher reconciled with the restored trials (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unknown_restored: set[str] = set()
        self._live_checked = False

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        reconcile_added(tune_controller.search_alg, trial, self._unknown_restored)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        # Ghost ids come only from a restored searcher state: once, after every restored trial
        # was added (Tune restores in the controller's constructor, before the first step),
        # not on every step of the driver loop.
        if not self._live_checked:
            self._live_checked = True
            reconcile_live(tune_controller.search_alg, tune_controller.get_trials())
        return super().choose_trial_to_run(tune_controller)


class ReconcilingFIFO(Reconciling, FIFOScheduler):
    """Tune's default scheduler (first in, first out), reconciling the searcher on resume."""


class ReconcilingASHA(Reconciling, ASHAScheduler):
    """ASHA, reconciling the searcher on resume."""

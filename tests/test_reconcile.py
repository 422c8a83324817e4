"""The searcher state a killed driver left one sync behind its trial states (sweep/reconcile.py):
without reconciliation --resume waits forever or runs a trial twice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import cloudpickle, tune
from ray.tune.experiment import Experiment, Trial
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

from sweep.reconcile import ReconcilingASHA, ReconcilingFIFO, live_sets


def _fn(config):  # the trainable is never run
    pass


def _grid(tmp_path, values=(1, 2, 3)) -> BasicVariantGenerator:
    g = BasicVariantGenerator(max_concurrent=1)
    g.add_configurations([Experiment("e", run=_fn, config={"a": tune.grid_search(list(values))},
                                     storage_path=str(tmp_path))])
    return g


def _saved(g: BasicVariantGenerator) -> bytes:
    return cloudpickle.dumps(g.get_state())  # the searcher state file Tune writes


def _restored(state: bytes) -> BasicVariantGenerator:
    g = BasicVariantGenerator(max_concurrent=1)
    g.set_state(cloudpickle.loads(state))  # what --resume loads
    return g


def _stale_resume(tmp_path):
    """The kill: the bucket's searcher state was saved while trial 0 ran, its trial states after
    trial 0 finished and trial 1 started."""
    g = _grid(tmp_path)
    t0 = g.next_trial()
    stale = _saved(g)
    g.on_trial_complete(t0.trial_id)
    t1 = g.next_trial()
    t0.set_status(Trial.TERMINATED)
    t1.set_status(Trial.PENDING)  # Tune requeues the interrupted trial
    return stale, t0, t1


def _finish(search, trials: list[Trial], sched=None) -> list[str]:
    """Run the controller's loop by hand: each trial the searcher hands out runs to the end.
    Returns the ids run; raises when the searcher neither finishes nor hands out a trial."""
    runner = SimpleNamespace(search_alg=search, get_trials=lambda: trials)
    ran = []
    for _ in range(10):
        if sched is not None:
            sched.choose_trial_to_run(runner)
        live = [t for t in trials if t.status == Trial.PENDING]
        if not live:
            new = search.next_trial()
            if new is None:
                if search.is_finished():
                    return ran
                raise TimeoutError("the searcher waits for a trial that will never finish")
            new.set_status(Trial.PENDING)
            trials.append(new)
            if sched is not None:
                sched.on_trial_add(runner, new)
            continue
        t = live[0]
        t.set_status(Trial.TERMINATED)
        search.on_trial_complete(t.trial_id)
        ran.append(t.config["a"])
    raise AssertionError("no end")


def test_stale_searcher_state_hangs_without_reconciliation(tmp_path):
    stale, t0, t1 = _stale_resume(tmp_path)
    with pytest.raises(TimeoutError):
        _finish(_restored(stale), [t0, t1])


@pytest.mark.parametrize("scheduler", [ReconcilingFIFO, ReconcilingASHA])
def test_resume_with_stale_state_runs_each_variant_once(tmp_path, scheduler):
    stale, t0, t1 = _stale_resume(tmp_path)
    search = _restored(stale)
    sched = scheduler() if scheduler is ReconcilingFIFO else scheduler(metric="m", mode="max", max_t=3)
    runner = SimpleNamespace(search_alg=search, get_trials=lambda: [t0, t1])
    for t in (t0, t1):  # what Tune's resume calls for each restored trial, before the first step
        sched.on_trial_add(runner, t)
    assert search._live_trials == {t1.trial_id}
    assert search.next_trial() is None  # trial 1's variant is not handed out again
    # trial 1 continues, then trial 2 runs and the searcher finishes: 1 and 2 once each
    assert _finish(search, [t0, t1], sched) == [2, 3]


def test_a_live_id_of_no_trial_is_completed_as_errored_with_a_warning(tmp_path, caplog):
    """The other order: the searcher state one sync ahead, holding a trial the trial states lack."""
    g = _grid(tmp_path)
    t0 = g.next_trial()
    t0.set_status(Trial.TERMINATED)
    g.on_trial_complete(t0.trial_id)
    ahead = g.next_trial()  # handed out, never saved as a trial
    search = _restored(_saved(g))
    assert search._live_trials == {ahead.trial_id}
    with caplog.at_level("WARNING", logger="sweep.reconcile"):
        ReconcilingFIFO().choose_trial_to_run(SimpleNamespace(search_alg=search, get_trials=lambda: [t0]))
    assert ahead.trial_id in caplog.text and "not run again" in caplog.text
    assert search._live_trials == set() and search.next_trial().config == {"a": 3}


def test_restored_trials_added_newest_first_are_all_taken_out_of_the_generator(tmp_path):
    """Tune adds restored trials newest first: trial 2 before trial 1. Neither may run again."""
    g = BasicVariantGenerator(max_concurrent=2)
    g.add_configurations([Experiment("e", run=_fn, config={"a": tune.grid_search([1, 2, 3, 4])},
                                     storage_path=str(tmp_path))])
    t0 = g.next_trial()
    stale = _saved(g)
    t1 = g.next_trial()
    g.on_trial_complete(t0.trial_id)
    t2 = g.next_trial()
    search = BasicVariantGenerator(max_concurrent=2)
    search.set_state(cloudpickle.loads(stale))
    t0.set_status(Trial.TERMINATED)
    for t in (t1, t2):
        t.set_status(Trial.PENDING)
    sched = ReconcilingFIFO()
    runner = SimpleNamespace(search_alg=search, get_trials=lambda: [t0, t2, t1])
    for t in (t2, t0, t1):
        sched.on_trial_add(runner, t)
    assert search._live_trials == {t1.trial_id, t2.trial_id}
    search.on_trial_complete(t1.trial_id)
    new = search.next_trial()
    assert new.config == {"a": 4} and new.trial_id not in {t1.trial_id, t2.trial_id}


class _Recording(Searcher):
    def __init__(self):
        super().__init__(metric="m", mode="max")
        self.completed: list[tuple[str, dict | None, bool]] = []

    def suggest(self, trial_id):
        return {"a": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, result, error))


def test_a_finished_trial_the_chain_still_counts_is_completed_through_it():
    """Optuna and sequential sweeps: the limiter forgets the trial and the searchers inside it
    learn its result (a sequential searcher would otherwise wait for it forever)."""
    from ray.tune.search import SearchGenerator

    inner = _Recording()
    limiter = ConcurrencyLimiter(inner, max_concurrent=1)
    limiter.suggest("x_00000")
    chain = SearchGenerator(limiter)
    assert live_sets(chain) == [{"x_00000"}]
    done = Trial("fn", trial_id="x_00000", stub=True)
    done.set_status(Trial.TERMINATED)
    done.run_metadata.last_result = {"m": 0.5, "nested": {"k": 1}}
    ReconcilingFIFO().on_trial_add(SimpleNamespace(search_alg=chain, get_trials=lambda: [done]), done)
    assert limiter.live_trials == set() and limiter.suggest("x_00001") == {"a": 1}
    assert inner.completed == [("x_00000", {"m": 0.5, "nested/k": 1, "trial_id": "x_00000"}, False)]

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


def test_live_ids_of_unknown_trials_are_forgotten(tmp_path):
    """The other order: the searcher state one sync ahead, holding a trial the trial states lack."""
    g = _grid(tmp_path)
    t0 = g.next_trial()
    t0.set_status(Trial.TERMINATED)
    g.on_trial_complete(t0.trial_id)
    ahead = g.next_trial()  # generated, never saved as a trial
    search = _restored(_saved(g))
    assert search._live_trials == {ahead.trial_id}
    ReconcilingFIFO().choose_trial_to_run(SimpleNamespace(search_alg=search, get_trials=lambda: [t0]))
    assert search._live_trials == set() and search.next_trial() is not None


class _Fixed(Searcher):
    def suggest(self, trial_id):
        return {"a": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_live_sets_reach_a_concurrency_limiter_inside_a_generator():
    from ray.tune.search import SearchGenerator

    limiter = ConcurrencyLimiter(_Fixed(metric="m", mode="max"), max_concurrent=1)
    limiter.suggest("x_00000")
    chain = SearchGenerator(limiter)
    assert live_sets(chain) == [{"x_00000"}]
    done = Trial("fn", trial_id="x_00000", stub=True)
    done.set_status(Trial.TERMINATED)
    ReconcilingFIFO().on_trial_add(SimpleNamespace(search_alg=chain, get_trials=lambda: [done]), done)
    assert limiter.live_trials == set() and limiter.suggest("x_00001") == {"a": 1}

"""Every searcher the product builds survives Tune's pickling and --resume with the same
next suggestions.

Tune pickles the search algorithm twice: whole, with Ray's cloudpickle, into ``tuner.pkl``
when the Tuner is made; and as its state, with ``save_to_dir``, at every experiment
checkpoint, which ``Tuner.restore`` (``--resume``) loads into the searcher it unpickled.
optuna 5.1's NSGA-II sampler holds a thread lock, and the default sweep died on the first of
these; this file builds each variant the way ``sweep.tuner`` does and checks both paths.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle

from sweep.spec import parse_spec
from sweep.study import search_generator
from sweep.tuner import PARAMS, build_search

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1},
    "model": {"width": 4},
    "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1"], "n_pairs": 4},
    "train": {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 16},
    "evaluation": {"suites": []},
}
SPACE = {"regularizer.alpha": {"loguniform": [0.1, 10.0]}, "regularizer.th": {"uniform": [0.1, 0.9]},
         "regularizer.loss": {"choice": ["atanh", "mse"]}}


def spec_for(algorithm: str, seeds: int, baseline: bool):
    search = {"algorithm": algorithm, "seed": 0}
    if algorithm == "nsga2":  # the default sweep: NSGA-II is Optuna with two metrics
        search = {"algorithm": "optuna", "seed": 0, "metrics": ["val_acc", "train_loss"], "modes": ["max", "min"]}
    elif algorithm == "tpe":
        search = {"algorithm": "optuna", "seed": 0, "n_startup_trials": 2}
    space = SPACE if algorithm != "grid" else {"regularizer.alpha": {"grid": [0.5, 1.0, 2.0]}}
    raw = {"name": "s", "base": BASE, "space": space, "search": search, "seeds": seeds, "baseline": baseline,
           "metric": "val_acc", "mode": "max", "num_samples": 1 if algorithm == "grid" else 6}
    return parse_spec(raw, default_name="s", source="test")


def fake_result(config: dict) -> dict:
    """A deterministic result for a suggested configuration (no training)."""
    p = config.get(PARAMS, {})
    a, th = float(p.get("regularizer.alpha", 1.0)), float(p.get("regularizer.th", 0.5))
    acc = 1.0 / (1.0 + abs(a - 2.0) + th)
    # val_acc / train_loss: the objectives of these specs; clean_acc / median_l2: the default sweep's.
    return {"val_acc": acc, "train_loss": a * th, "clean_acc": acc, "median_l2": a * th, "training_iteration": 1}


def drive(searcher, start: int, n: int, complete: bool = True) -> list[dict]:
    """Ask for ``n`` suggestions (trial ids ``t<start>``...) and complete them in order."""
    out = []
    for i in range(start, start + n):
        tid = f"t{i}"
        cfg = searcher.suggest(tid)
        assert cfg is not None, f"no suggestion for {tid}"
        out.append(cfg)
        if complete:
            searcher.on_trial_complete(tid, result=fake_result(cfg))
    return out


VARIANTS = [
    (alg, seeds, baseline, storage)
    for alg, seeds, baseline, storage in itertools.product(("tpe", "nsga2"), (1, 2), (True, False), (False, True))
]


def _ids(v) -> str:
    alg, seeds, baseline, storage = v
    return f"{alg}-seeds{seeds}-{'baseline' if baseline else 'nobaseline'}-{'rdb' if storage else 'memory'}"


@pytest.mark.parametrize("variant", VARIANTS, ids=[_ids(v) for v in VARIANTS])
def test_optuna_searchers_round_trip(variant, tmp_path):
    alg, seeds, baseline, use_storage = variant
    spec = spec_for(alg, seeds, baseline)
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}" if use_storage else None

    def build():
        searcher, _, _ = build_search(spec, url, "s")
        gen = search_generator(searcher, max_concurrent=64)
        gen.set_search_properties(None, None, {})
        return gen

    gen = build()
    chain = gen.searcher  # ConcurrencyLimiter -> [BaselineFirst] -> [MeanRepeater] -> OptunaSearch
    # Past the baseline trials and NSGA-II's first (random) generation is not needed: any
    # state with completed trials must travel.
    drive(chain, 0, 4 * seeds + (seeds if baseline else 0))

    blob = cloudpickle.dumps(gen)  # what tune.Tuner writes into tuner.pkl
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    gen.save_to_dir(str(ckpt), session_str="x")  # what every experiment checkpoint writes
    if use_storage:
        shutil.copy2(db, tmp_path / "snapshot.db")

    def restore_db():
        if use_storage:
            shutil.copy2(tmp_path / "snapshot.db", db)

    start = 100
    expected = drive(chain, start, 3 * seeds)

    restore_db()
    unpickled = cloudpickle.loads(blob)
    assert drive(unpickled.searcher, start, 3 * seeds) == expected

    restore_db()
    resumed = build()  # --resume: a searcher as made at the start, then the checkpoint loaded
    resumed.restore_from_dir(str(ckpt))
    assert drive(resumed.searcher, start, 3 * seeds) == expected


@pytest.mark.parametrize("algorithm", ["grid", "random"])
@pytest.mark.parametrize("seeds", [1, 2])
@pytest.mark.parametrize("baseline", [True, False])
def test_grid_and_random_round_trip(algorithm, seeds, baseline, tmp_path):
    """No searcher object: Tune's BasicVariantGenerator walks the pickled trial list."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator

    spec = spec_for(algorithm, seeds, baseline)
    searcher, space, num = build_search(spec)
    assert searcher is None
    assert cloudpickle.loads(cloudpickle.dumps(space)) == space

    def generator():
        g = BasicVariantGenerator(max_concurrent=0)
        g.add_configurations([Experiment("e", run=_trainable, config=space, num_samples=num,
                                         storage_path=str(tmp_path))])
        return g

    gen = generator()
    first = [gen.next_trial().config for _ in range(2)]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    gen.save_to_dir(str(ckpt), session_str="x")
    blob = cloudpickle.dumps(gen)
    rest = [t.config for t in iter(gen.next_trial, None)]
    assert len(first) + len(rest) == spec.num_trials()
    assert [t.config for t in iter(cloudpickle.loads(blob).next_trial, None)] == rest
    resumed = generator()
    resumed.restore_from_dir(str(ckpt))
    assert [t.config for t in iter(resumed.next_trial, None)] == rest


def _trainable(config):  # never run: the generators only need a registered name
    return None


def test_default_sweep_searcher_unpickles_in_a_fresh_process(tmp_path):
    """--resume runs in a new process: the picklable sampler classes must be found by name."""
    from sweep.spec import load_spec

    spec = load_spec("alpha_th.yaml", [])
    searcher, _, _ = build_search(spec, None, "s")
    gen = search_generator(searcher, max_concurrent=2)
    gen.set_search_properties(None, None, {})
    drive(gen.searcher, 0, 4)
    path = tmp_path / "gen.pkl"
    path.write_bytes(cloudpickle.dumps(gen))
    code = ("import sys, ray.cloudpickle as c; g = c.loads(open(sys.argv[1], 'rb').read()); "
            "s = g.searcher.suggest('fresh'); print(type(g.searcher.searcher.searcher.searcher._sampler).__name__)")
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "PicklableNSGAIISampler"


# --- the study as optuna-dashboard reads it (issue 23) ----------------------------------


def _drive_with_epochs(searcher, start: int, n: int, baseline_value: float | None = None) -> list[dict]:
    """Like ``drive``, with two per-epoch reports (val_acc) and the evaluation report first."""
    out = []
    for i in range(start, start + n):
        tid = f"t{i}"
        cfg = searcher.suggest(tid)
        assert cfg is not None
        out.append(cfg)
        res = fake_result(cfg)
        if cfg[PARAMS].get("regularizer.target") == "none" and baseline_value is not None:
            res = {**res, "val_acc": baseline_value, "train_loss": 0.0}
        for epoch in (1, 2):
            searcher.on_trial_result(tid, {"epoch": epoch, "val_acc": res["val_acc"] * epoch / 2,
                                           "training_iteration": epoch})
        searcher.on_trial_result(tid, {**res, "epoch": 2, "evaluated": True, "training_iteration": 3})
        searcher.on_trial_complete(tid, result={**res, "epoch": 2})
    return out


def _study(gen):
    from sweep.study_links import linked_search

    return linked_search(gen)._ot_study


@pytest.mark.parametrize("alg", ["tpe", "nsga2"])
def test_the_sampler_never_sees_the_baseline_trial(alg, monkeypatch):
    """The same suggestions with the baseline's fixed trial in the study as without it
    (NSGA-II: past its first generation of 50, where it crosses over in the intersection
    search space; TPE: past its 2 start-up trials)."""
    from sweep.study_links import LinkedOptunaSearch

    spec = spec_for(alg, 1, True)
    n = 60 if alg == "nsga2" else 12

    def run():
        searcher, _, _ = build_search(spec, None, "s")
        gen = search_generator(searcher, max_concurrent=64)
        gen.set_search_properties(None, None, {})
        configs = _drive_with_epochs(gen.searcher, 0, 1 + n, baseline_value=0.99)
        return configs[1:], _study(gen)

    with_fixed, study = run()
    assert sum("fixed" in t.user_attrs for t in study.trials) == 1
    monkeypatch.setattr(LinkedOptunaSearch, "add_baseline", lambda self, runs: False)
    without, bare = run()
    assert not any("fixed" in t.user_attrs for t in bare.trials)
    assert with_fixed == without


def test_multi_objective_study_names_curves_and_pareto_front():
    """NSGA-II (the default sweep's search): report() is refused for several objectives, so
    the curve is a user attribute; the baseline, when it dominates, is the Pareto front."""
    spec = spec_for("nsga2", 2, True)
    searcher, _, _ = build_search(spec, None, "s")
    gen = search_generator(searcher, max_concurrent=64)
    gen.set_search_properties(None, None, {})
    _drive_with_epochs(gen.searcher, 0, 2 + 3 * 2, baseline_value=1.0)
    study = _study(gen)
    assert study.metric_names == ["val_acc", "train_loss"]
    fixed = [t for t in study.trials if "fixed" in t.user_attrs]
    assert len(fixed) == 1 and fixed[0].values == [1.0, 0.0] and fixed[0].user_attrs["seeds"] == [0, 1]
    assert [t.number for t in study.best_trials] == [fixed[0].number]  # the dashboard's Pareto front
    for t in study.trials:
        if t in fixed:
            continue
        a = t.user_attrs
        assert len(a["ray_trial_ids"]) == 2 and a["seeds"] == [0, 1] and not t.intermediate_values
        acc = t.values[0]
        assert a["val_acc_by_epoch"] == pytest.approx([acc / 2, acc])  # epochs 1, 2; no evaluation step
        assert set(t.params) <= set(SPACE)  # plain dotted names


def test_study_links_survive_pickling_and_resume(tmp_path):
    """Links and reported epochs travel with the searcher's state (Tune's checkpoints)."""
    spec = spec_for("tpe", 2, True)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, _, _ = build_search(spec, url, "s")
    gen = search_generator(searcher, max_concurrent=64)
    gen.set_search_properties(None, None, {})
    _drive_with_epochs(gen.searcher, 0, 2 + 2)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    gen.save_to_dir(str(ckpt), session_str="x")
    resumed, _, _ = build_search(spec, url, "s")
    rgen = search_generator(resumed, max_concurrent=64)
    rgen.set_search_properties(None, None, {})
    rgen.restore_from_dir(str(ckpt))
    _drive_with_epochs(rgen.searcher, 10, 2)
    study = _study(rgen)
    done = [t for t in study.trials if "fixed" not in t.user_attrs]
    assert len(done) == 2 and all(sorted(t.intermediate_values) == [1, 2] for t in done)
    assert [t.user_attrs["ray_trial_ids"] for t in done] == [["t2", "t3"], ["t10", "t11"]]
    assert sum("fixed" in t.user_attrs for t in study.trials) == 1  # not added twice

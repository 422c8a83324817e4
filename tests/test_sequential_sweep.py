"""Sequential seeds in the sweep (sweep.sequential): seeds are added arm by arm as trials
finish, until each declared hypothesis is decided or max is reached; the searcher's state
survives a resume mid-sequence. Driven with synthetic metrics (no training), then once
through Ray on a tiny sweep."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweep.sequential import PARAMS, TRIAL_INDEX, round_of
from sweep.spec import parse_spec
from sweep.tuner import build_search

METRIC = "noise_acc_gaussian_0.4"
BASE = {"data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1}, "model": {"width": 4},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1"], "n_pairs": 4},
        "train": {"epochs": 1, "max_steps_per_epoch": 1, "batch_size": 16},
        "evaluation": {"suites": ["noise"], "noise_types": ["gaussian"], "noise_levels": {"gaussian": [0.0, 0.4]},
                       "noise_n_images": 16, "progress": False}}
# alpha 4: a large true effect (efficacy); alpha 1: none at all with a small spread
# (futility at the first look); alpha 2: half the smallest effect, a wide spread (runs on).
EFFECT = {4.0: 0.30, 1.0: 0.0, 2.0: 0.025}
SPREAD = {4.0: 0.01, 1.0: 0.005, 2.0: 0.05}


def spec_for(algorithm: str = "grid", max_seeds: int = 8):
    space = {"regularizer.alpha": {"grid": sorted(EFFECT)}} if algorithm == "grid" else \
        {"regularizer.alpha": {"choice": sorted(EFFECT)}}
    search = {"algorithm": "grid"} if algorithm == "grid" else {"algorithm": "optuna", "seed": 0}
    raw = {"name": "seq", "base": BASE, "space": space, "search": search, "seeds": {"min": 3, "max": max_seeds},
           "hypotheses": [{"metric": METRIC, "direction": "greater", "smallest_effect": 0.05}],
           "metric": METRIC, "mode": "max", "num_samples": 1 if algorithm == "grid" else 3}
    return parse_spec(raw, default_name="seq", source="test")


def fake_metric(config: dict) -> float:
    p, i = config[PARAMS], int(config.get(TRIAL_INDEX, 0))
    base = 0.2 + 0.05 * np.sin(3.0 * i)  # the seed moves both arms of a pair alike
    if p.get("regularizer.target") == "none":
        return float(base)
    a = float(p["regularizer.alpha"])
    noise = np.random.default_rng([int(a * 10), i]).normal(0, SPREAD[a])
    return float(base + EFFECT[a] + noise)


def run_to_end(searcher, concurrency: int = 2, stop_after: int | None = None, first_id: int = 0,
               budget: int = 500):
    """Tune's loop in miniature: up to ``concurrency`` trials at once, completed oldest first;
    ``budget`` stands for Tune's trial budget, which the searcher must never need."""
    running: list[tuple[str, dict]] = []
    done: list[tuple[str, dict]] = []
    ids = (f"t{i}" for i in itertools.count(first_id))
    while True:
        finished = False
        while len(running) < concurrency:
            tid = next(ids)
            cfg = searcher.suggest(tid)
            if cfg == "FINISHED":
                finished = True
                break
            if cfg is None:
                break
            running.append((tid, cfg))
            assert len(done) + len(running) <= budget, "the searcher never finishes"
        if not running:
            assert finished, "the searcher neither finished nor suggested with nothing running"
            return done
        tid, cfg = running.pop(0)
        searcher.on_trial_complete(tid, result={METRIC: fake_metric(cfg), "training_iteration": 2})
        done.append((tid, cfg))
        if stop_after is not None and len(done) >= stop_after:
            return done


def seeds_per_arm(done) -> dict:
    out: dict = {}
    for _tid, cfg in done:
        p = cfg[PARAMS]
        arm = "none" if p.get("regularizer.target") == "none" else p["regularizer.alpha"]
        out.setdefault(arm, []).append(int(cfg[TRIAL_INDEX]))
    return {k: sorted(v) for k, v in out.items()}


def test_grid_arms_stop_at_their_decisions():
    spec = spec_for("grid")
    searcher, _, bound = build_search(spec)
    done = run_to_end(searcher)
    seeds = seeds_per_arm(done)
    # Every arm got the first round; indices are contiguous (no seed skipped or repeated).
    assert all(v == list(range(len(v))) and len(v) >= 3 for v in seeds.values()), seeds
    assert len(seeds[1.0]) == 3  # futility at the first look: no more seeds
    assert 3 < len(seeds[4.0]) < 8  # efficacy after a second look, before max
    assert len(seeds[2.0]) > len(seeds[1.0])  # undecided runs on
    # The baseline pairs every seed any arm ran, and no more.
    assert seeds["none"] == list(range(max(len(v) for k, v in seeds.items() if k != "none")))
    assert len(done) <= bound
    table = searcher.done_table()
    from analysis.confirmatory import sequential_looks

    looks = sequential_looks(table, spec.to_dict())
    last = looks.groupby("arm").tail(1).set_index("arm")["decision"].to_dict()
    assert last["pixel_th alpha=4"] == "efficacy" and last["pixel_th alpha=1"] == "futility", last


def test_resume_mid_sequence_continues_identically(tmp_path):
    """Tune saves the searcher chain at every experiment checkpoint (save_to_dir); --resume
    builds the searcher anew and loads it (restore_from_dir): the rest is the same."""
    from sweep.study import search_generator

    spec = spec_for("grid")

    def generator():
        g = search_generator(build_search(spec)[0], max_concurrent=64)
        g.set_search_properties(None, None, {})
        return g

    a = generator()
    first = run_to_end(a.searcher, concurrency=1, stop_after=14)  # into the second round
    a.save_to_dir(str(tmp_path), session_str="s")
    rest_a = run_to_end(a.searcher, concurrency=1, first_id=1000)
    b = generator()
    b.restore_from_dir(str(tmp_path))
    rest_b = run_to_end(b.searcher, concurrency=1, first_id=1000)
    assert rest_a and [c for _, c in rest_a] == [c for _, c in rest_b]
    assert any(int(c[TRIAL_INDEX]) >= 3 for _, c in first)  # the save was mid-sequence


def test_optuna_sequential_keeps_extra_seeds_out_of_the_study():
    spec = spec_for("optuna")
    searcher, _, bound = build_search(spec)
    done = run_to_end(searcher)
    study = searcher.searcher.searcher.searcher._ot_study  # Sequential -> BaselineFirst -> Repeater -> Optuna
    searched = [t for t in study.trials if "fixed" not in t.user_attrs]  # the baseline's mean is a fixed trial
    assert len(searched) == 3  # the study's configurations only, not their extra seeds
    assert len(done) <= bound and len(done) >= 3 * 3 + 3


def test_round_of():
    assert [round_of(i, 3) for i in range(6)] == [1, 1, 1, 2, 3, 4]


@pytest.mark.slow
def test_sequential_sweep_through_ray(tmp_path):
    """A real tiny sweep: trials table with rounds, a decisions table, at most max seeds."""
    pytest.importorskip("ray")
    import ray

    from analysis.sql import connect
    from sweep.run import main

    if not ray.is_initialized():
        # "local": a new instance even where a `ray start` left its address file behind (a cluster
        # stopped without `ray stop`), which a bare ray.init would try to join and refuse num_cpus
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    raw = {"name": "seqray", "base": {**BASE, "train": {**BASE["train"], "epochs": 1}},
           "space": {"regularizer.alpha": {"grid": [1.0]}}, "search": {"algorithm": "grid"},
           "seeds": {"min": 2, "max": 3}, "resources": {"cpus_per_trial": 1},
           "hypotheses": [{"metric": METRIC, "direction": "greater", "smallest_effect": 0.05}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--space", str(path), "--storage", str(tmp_path / "res"), "--name", "sq", "--quiet"]) == 0
    con = connect(tmp_path)
    rows = con.execute('SELECT arm, "train.seed", round FROM trials ORDER BY arm, "train.seed"').fetchall()
    per_arm = {}
    for arm, seed, rnd in rows:
        per_arm.setdefault(arm, []).append((seed, rnd))
    assert set(per_arm) == {"none", "pixel_th"} or len(per_arm) == 2, per_arm
    for v in per_arm.values():
        assert v[:2] == [(0, 1), (1, 1)] and len(v) <= 3 and all(r == 2 for _, r in v[2:])
    looks = con.execute("SELECT arm, metric, n, decision FROM decisions ORDER BY n").fetchall()
    assert looks and all(m == METRIC for _, m, _, _ in looks)
    assert Path(tmp_path / "res" / "sq" / "sweep.yaml").is_file()

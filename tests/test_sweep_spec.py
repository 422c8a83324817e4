"""Search-space files -> typed specs and trial lists (pure: no Ray)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from neuroreg.config import ConfigError
from sweep.spec import SPACES_DIR, enumerate_trials, load_spec, parse_spec
from sweep.tuner import optuna_space

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = {
    "data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1},
    "model": {"width": 4},
    "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1", "conv5"]},
    "train": {"epochs": 1, "max_steps_per_epoch": 1},
    "evaluation": {"suites": []},
}


def spec_of(**top):
    raw = {"base": TINY_BASE, **top}
    return parse_spec(raw, default_name="t")


def error_field(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_spec({"base": TINY_BASE, **raw}, default_name="t")
    return e.value.field


# --- mapping ---------------------------------------------------------------------------


def test_space_maps_to_typed_params():
    s = spec_of(
        space={
            "regularizer.alpha": {"loguniform": [0.1, 10]},
            "regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": "pixel_th"}},
            "model.width": {"int": [4, 8]},
            "regularizer.layers": {"choice": [["conv1"], ["conv1", "conv5"]]},
        },
        search={"algorithm": "random", "seed": 3},
        num_samples=4,
        seeds=2,
    )
    kinds = {p.key: (p.type, p.low, p.high, p.values) for p in s.space}
    assert kinds["regularizer.alpha"] == ("loguniform", 0.1, 10.0, None)
    assert kinds["model.width"] == ("int", 4, 8, None)
    assert kinds["regularizer.layers"][3] == [["conv1"], ["conv1", "conv5"]]
    assert s.space[1].when == {"regularizer.target": ["pixel_th"]}
    assert s.seeds == [0, 1] and s.num_trials() == 16  # with a baseline per sampled width
    trials = enumerate_trials(s)
    # Each configuration is repeated with identical sampled values over the seeds.
    for a, b in zip(trials[::2], trials[1::2]):
        assert {k: v for k, v in a.items() if k != "train.seed"} == {k: v for k, v in b.items() if k != "train.seed"}
        assert (a["train.seed"], b["train.seed"]) == (0, 1)
    base = [t for t in trials if t.get("regularizer.target") == "none"]
    assert len(base) == 8 and all("regularizer.alpha" not in t for t in base)
    for t in trials:
        if t in base:
            continue
        assert 0.1 <= t["regularizer.alpha"] <= 10 and 0.1 <= t["regularizer.th"] <= 0.9
        assert t["model.width"] in range(4, 9) and isinstance(t["model.width"], int)
        assert t["regularizer.layers"] in (["conv1"], ["conv1", "conv5"])
    # Reproducible: the same seed draws the same trials; another seed others.
    assert enumerate_trials(s) == trials
    s.search.seed = 4
    assert enumerate_trials(s) != trials


def test_grid_times_seeds_is_the_exact_cartesian_product():
    s = spec_of(
        space={
            "regularizer.target": {"grid": ["none", "pixel", "pixel_th"]},
            "regularizer.n_pairs": {"grid": [4, 8]},
        },
        search={"algorithm": "grid"},
        seeds=[7, 9],
    )
    got = [(t["regularizer.target"], t["regularizer.n_pairs"], t["train.seed"]) for t in enumerate_trials(s)]
    want = [(a, b, c) for a in ["none", "pixel", "pixel_th"] for b in [4, 8] for c in [7, 9]]
    assert sorted(got) == sorted(want) and len(got) == 12


def test_conditional_key_is_dropped_and_deduplicated_in_a_grid():
    s = spec_of(
        space={
            "regularizer.target": {"grid": ["none", "pixel_th"]},
            "regularizer.th": {"grid": [0.2, 0.8], "when": {"regularizer.target": "pixel_th"}},
        },
        search={"algorithm": "grid"},
    )
    assert enumerate_trials(s) == [
        {"regularizer.target": "none"},
        {"regularizer.target": "pixel_th", "regularizer.th": 0.2},
        {"regularizer.target": "pixel_th", "regularizer.th": 0.8},
    ]


class FakeTrial:
    """Optuna's suggest_* interface, answering from a script (no study needed)."""

    def __init__(self, answers):
        self.answers, self.asked = answers, {}

    def _ans(self, name, **kw):
        self.asked[name] = kw
        return self.answers[name]

    def suggest_float(self, name, low, high, log=False):
        return self._ans(name, low=low, high=high, log=log)

    def suggest_int(self, name, low, high):
        return self._ans(name, low=low, high=high)

    def suggest_categorical(self, name, choices):
        return self._ans(name, choices=list(choices))


def test_optuna_define_by_run_respects_conditions_and_list_choices():
    s = spec_of(
        space={
            "regularizer.target": {"choice": ["pixel", "pixel_th"]},
            "regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": "pixel_th"}},
            "regularizer.alpha": {"loguniform": [0.5, 5]},
            "regularizer.layers": {"choice": [["conv1"], ["conv1", "conv5"]]},
        },
        search={"algorithm": "optuna"},
        num_samples=3,
        seeds=2,
    )
    assert s.num_trials() == 6 + 2  # + a baseline per seed
    fn = optuna_space(s)
    t = FakeTrial({"regularizer.target": "pixel", "regularizer.alpha": 1.0,
                   "regularizer.layers": '["conv1", "conv5"]'})
    decoded = fn(t)
    assert "regularizer.th" not in t.asked  # th means nothing for pixel
    assert t.asked["regularizer.alpha"] == {"low": 0.5, "high": 5.0, "log": True}
    assert t.asked["regularizer.layers"]["choices"] == ['["conv1"]', '["conv1", "conv5"]']
    assert decoded == {"regularizer.layers": ["conv1", "conv5"]}
    t2 = FakeTrial({"regularizer.target": "pixel_th", "regularizer.th": 0.3,
                    "regularizer.alpha": 2.0, "regularizer.layers": '["conv1"]'})
    fn(t2)
    assert t2.asked["regularizer.th"] == {"low": 0.1, "high": 0.9, "log": False}


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"spaec": {}}, "spaec"),
        ({"space": {"regularizer.alhpa": {"uniform": [0, 1]}}}, "space.regularizer.alhpa"),
        ({"space": {"regularizer.th": {"uniform": [0.5, 1.0]}}}, "space.regularizer.th"),
        ({"space": {"regularizer.th": {"uniform": [0.0, 0.5]}}}, "space.regularizer.th"),
        ({"space": {"regularizer.alpha": {"uniform": [-1.0, 2.0]}}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.alpha": {"loguniform": [0.0, 2.0]}}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.alpha": {"uniform": [2.0, 1.0]}}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.target": {"grid": []}}, "search": {"algorithm": "grid"}}, "space.regularizer.target"),
        ({"space": {"regularizer.target": {"choice": ["pixel", "nope"]}}}, "space.regularizer.target"),
        ({"space": {"model.width": {"uniform": [4, 8]}}}, "space.model.width"),
        ({"space": {"regularizer.layers": {"choice": [["conv1"], ["conv99"]]}}}, "space.regularizer.layers"),
        ({"space": {"regularizer.alpha": {"uniform": [1, 2], "log": True}}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.alpha": {"uniform": "1-2"}}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.alpha": {"uniform": [1, 2]}}, "search": {"algorithm": "grid"}}, "space.regularizer.alpha"),
        ({"space": {"regularizer.target": {"grid": ["none"]}}, "search": {"algorithm": "optuna"}}, "space.regularizer.target"),
        ({"space": {"regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": "pixel"}}}}, "space.regularizer.th.when"),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm"),
        ({"search": {"sed": 1}}, "search.sed"),
        ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period"),
        ({"scheduler": {"type": "asha"}, "metric": "median_l2"}, "metric"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": 2, "space": {"train.seed": {"grid": [1, 2]}}, "search": {"algorithm": "grid"}}, "space.train.seed"),
        ({"num_samples": "six"}, "num_samples"),
        ({"mode": "maximize"}, "mode"),
        ({"search": {"algorithm": "optuna", "metrics": ["val_acc", "median_l2"], "modes": ["max"]},
          "space": {"regularizer.alpha": {"uniform": [0, 1]}}}, "search.modes"),
        ({"resources": {"cpus_per_trial": 0}}, "resources.cpus_per_trial"),
        ({"base": {"regularizer": {"th": 1.5}}}, "base.regularizer.th"),
        ({"base": {"model": {"widht": 8}}}, "base.model.widht"),
    ],
)
def test_bad_specs_name_the_key(raw, field):
    if "base" in raw:
        with pytest.raises(ConfigError) as e:
            parse_spec(raw, default_name="t")
        assert e.value.field == field
    else:
        assert error_field(raw) == field


def test_shipped_spaces_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREG_DATA_ROOT", str(tmp_path))  # paper spaces need a data root
    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    assert {"alpha_th", "reg_type", "layers", "cifar10_paper", "mnist_paper"} <= set(names)
    counts = {n: load_spec(n, check_files=False).num_trials() for n in names}
    assert counts["alpha_th"] <= 8 and counts["reg_type"] == 12
    assert counts["layers"] == 12  # 5 layer sets + the added baseline, x 2 seeds
    assert counts["cifar10_paper"] == 14 and counts["mnist_paper"] == 14
    cifar = load_spec("cifar10_paper", check_files=False)
    assert cifar.base["data"]["root"] == str(tmp_path.resolve())  # pinned absolute for the workers
    b = cifar.base_config
    assert (b.model.width, b.train.epochs, b.regularizer.alpha, b.regularizer.th) == (64, 40, 10.0, 0.8)
    m = load_spec("mnist_paper", check_files=False).base_config
    assert (m.regularizer.alpha, m.regularizer.th) == (4.0, 0.2)
    # mnist_repro is sequential (seeds {min: 3, max: 12}): its first round is 3 seeds x 2 arms
    assert counts["mnist_repro"] == 6 and counts["cifar10_repro"] == 6 and counts["frequency"] == 4
    assert counts["mnist_investigate"] == 15 and counts["cifar10_investigate"] == 6
    # The conditional grid gives MSE its matched alpha and leaves the atanh arms at the base's 4.
    inv = enumerate_trials(load_spec("mnist_investigate", check_files=False))
    assert {t.get("regularizer.alpha") for t in inv if t.get("regularizer.loss") == "mse"} == {16.0}
    assert all("regularizer.alpha" not in t for t in inv if t.get("regularizer.loss") != "mse")
    rep = load_spec("cifar10_repro", check_files=False)
    assert rep.base["data"]["root"] == str((tmp_path / "cifar10-jpg.tar.gz").resolve())  # $VAR expanded


def test_overrides_and_relative_paths_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    raw = {"base": {**TINY_BASE, "data": {"name": "mnist", "root": "data"}}}
    s = parse_spec(raw, overrides=["regularizer.alpha=3.5"], default_name="t")
    assert s.base["data"]["root"] == str((tmp_path / "data").resolve())
    assert s.base_config.regularizer.alpha == 3.5


def test_bad_yaml_exits_2_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        base: {data: {name: digits}}
        space:
          regularizer.th: {uniform: [0.2, 1.2]}
    """))
    code = (
        "import sys; from sweep.run import main; rc = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules, 'Ray was imported'; sys.exit(rc)"
    )
    p = subprocess.run([sys.executable, "-c", code, "--space", str(bad), "--storage", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "space.regularizer.th" in p.stderr and "(0, 1)" in p.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]  # no experiment folder


def test_dry_run_lists_trials(tmp_path, capsys):
    from sweep.run import main

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({
        "name": "tiny", "base": TINY_BASE,
        "space": {"regularizer.target": {"grid": ["none", "pixel"]}},
        "search": {"algorithm": "grid"}, "seeds": 2,
    }))
    assert main(["--space", str(f), "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trials: 4" in out and "regularizer.target=pixel  train.seed=1" in out
    assert not (tmp_path / "tiny").exists() and not list(tmp_path.glob("tiny-*"))


def test_saved_spec_round_trips():
    s = spec_of(
        space={
            "regularizer.target": {"grid": ["pixel", "pixel_th"]},
            "regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": ["pixel_th"]}},
            "regularizer.layers": {"choice": [["conv1"], ["conv1", "conv5"]]},
        },
        search={"algorithm": "random", "seed": 5},
        scheduler={"type": "asha", "grace_period": 1},
        num_samples=2, seeds=[1, 4], time_budget_s=60,
    )
    again = parse_spec(yaml.safe_load(s.to_yaml()), default_name="other")
    assert again.to_dict() == s.to_dict()
    assert enumerate_trials(again) == enumerate_trials(s)


def test_scheduler_and_searchers_are_built_from_the_spec():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweep.tuner import (
        BaselineFirst,
        MeanRepeater,
        build_scheduler,
        build_search,
        needs_lenient_metrics,
    )

    s = spec_of(space={"regularizer.alpha": {"uniform": [0.5, 2]}}, search={"algorithm": "optuna"},
                scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3}, num_samples=4, seeds=3)
    sched = build_scheduler(s)
    # Horizon epochs + 1: the evaluation report comes after the last epoch.
    assert isinstance(sched, ASHAScheduler) and sched._max_t == s.max_epochs() + 1 == 2
    searcher, space, n = build_search(s)
    assert isinstance(searcher, BaselineFirst) and n == 12 + 3 and space == {}
    rep = searcher.searcher
    assert isinstance(rep, MeanRepeater) and rep.repeat == 3
    assert rep.searcher.metric == "best_val_acc" and not needs_lenient_metrics(s)

    multi = parse_spec({"base": {**TINY_BASE, "evaluation": {"suites": ["clean", "adversarial"]}},
                        "space": {"regularizer.alpha": {"uniform": [0.5, 2]}},
                        "search": {"algorithm": "optuna", "metrics": ["best_val_acc", "median_l2"],
                                   "modes": ["max", "max"]}}, default_name="t")
    searcher, _, n = build_search(multi)
    assert isinstance(searcher, BaselineFirst) and n == 1 + 1
    searcher = searcher.searcher
    assert isinstance(searcher, OptunaSearch) and searcher.metric == ["best_val_acc", "median_l2"]
    assert needs_lenient_metrics(multi) and type(build_scheduler(multi)).__name__ == "ReconcilingFIFO"  # no ASHA

    grid = spec_of(space={"regularizer.target": {"grid": ["none", "pixel"]}}, search={"algorithm": "grid"}, seeds=2)
    searcher, space, n = build_search(grid)
    assert searcher is None and n == 1 and len(space["params"]["grid_search"]) == 4


def test_mean_repeater_averages_every_objective():
    from ray.tune.search import Searcher

    from sweep.tuner import MeanRepeater

    class Inner(Searcher):
        def __init__(self):
            super().__init__(metric=["a", "b"], mode=["max", "min"])
            self.told = []

        def suggest(self, trial_id):
            return {"params": {"x": 1}}

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.told.append((trial_id, result))

    inner = Inner()
    rep = MeanRepeater(inner, repeat=2, set_index=True)
    assert rep.suggest("t1")["__trial_index__"] == 0 and rep.suggest("t2")["__trial_index__"] == 1
    rep.on_trial_complete("t1", {"a": 1.0, "b": 4.0})
    assert inner.told == []
    rep.on_trial_complete("t2", {"a": 3.0, "b": 8.0})
    assert inner.told == [("t1", {"a": 2.0, "b": 6.0})]


def test_trial_config_takes_params_seed_index_and_cpu_share():
    from sweep.trainable import data_key, resolve_trial_config

    s = spec_of(seeds=[11, 22, 33])
    cfg = resolve_trial_config({"params": {"regularizer.alpha": 2.5}, "__trial_index__": 2}, s.base, s.seeds, 2.0)
    assert (cfg.regularizer.alpha, cfg.train.seed, cfg.train.num_threads) == (2.5, 33, 2)
    assert resolve_trial_config({}, s.base, None, 0.5).train.num_threads == 1
    # Trials share the driver's decoded data only when their data settings equal the base's.
    other = resolve_trial_config({"params": {"regularizer.n": 30}}, s.base, None, 1)
    assert data_key(cfg) == data_key(s.base_config) != data_key(other)


def test_cli_flags_reach_the_spec(tmp_path, monkeypatch, capsys):
    from sweep.run import load_for_run, main, parse_args

    f = tmp_path / "o.yaml"
    f.write_text(yaml.safe_dump({
        "name": "opt", "base": {**TINY_BASE, "data": {"name": "mnist"}},
        "space": {"regularizer.alpha": {"uniform": [0.5, 2]}}, "search": {"algorithm": "optuna"}, "seeds": 2,
    }))
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("NEUROREG_DATA_ROOT", "/nonexistent")  # restored after the test
    args = parse_args(["--space", str(f), "--data-root", str(tmp_path / "data"), "--num-samples", "5",
                       "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.25", "--max-concurrent", "3",
                       "--set", "model.width=6"])
    spec, name = load_for_run(args, str(tmp_path))
    assert spec.base["data"]["root"] == str((tmp_path / "data").resolve())
    assert (spec.num_samples, spec.num_trials(), spec.base_config.model.width) == (5, 12, 6)
    r = spec.resources
    assert (r.cpus_per_trial, r.gpus_per_trial, r.max_concurrent) == (0.5, 0.25, 3)
    assert name.startswith("opt-")
    assert main(["--space", str(f), "--data-root", str(tmp_path / "data"), "--cpus-per-trial", "0", "--dry-run"]) == 2
    assert "resources.cpus_per_trial" in capsys.readouterr().err


def test_when_that_can_never_hold():
    from neuroreg.config import ConfigError
    from sweep.spec import parse_spec

    raw = {"name": "w", "base": {"data": {"name": "digits"},
                                 "regularizer": {"target": "pixel", "alpha": 1.0, "n": 500}},
           "space": {"regularizer.target": {"choice": ["pixel", "shuffle"]},
                     "regularizer.th": {"uniform": [0.1, 0.9], "when": {"regularizer.target": "pixel_th"}}},
           "search": {"algorithm": "random"}}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw)
    assert e.value.field == "space.regularizer.th.when" and "never" in str(e.value)
    raw["space"]["regularizer.target"]["choice"].append("pixel_th")
    assert parse_spec(raw).space[1].when == {"regularizer.target": ["pixel_th"]}


def test_validating_a_space_with_hypotheses_imports_neither_pandas_nor_scipy_stats(tmp_path):
    """sweep.run checks a space before Ray starts; pandas and scipy.stats (a second and more)
    are imported by the warm-up thread while Ray starts, not on this path. pairing_mnist
    declares arm / reference selectors, whose check runs analysis.selectors' rule."""
    code = (
        "import sys, sweep.run as R\n"
        f"a = R.parse_args(['--space', 'pairing_mnist', '--storage', {str(tmp_path)!r}, '--data-root', '.'])\n"
        "spec, name = R.load_for_run(a, R.resolve_storage(a.storage))\n"
        "assert spec.hypotheses and spec.hypotheses[0].reference is not None\n"
        "print(sorted(m for m in ('pandas', 'scipy.stats', 'analysis.confirmatory') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"

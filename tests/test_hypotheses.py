"""Declared hypotheses, alpha and sequential seeds in a search-space file (sweep.spec):
parsed into the typed spec, validated with the field named, saved and read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neuroreg.config import ConfigError
from sweep.space import HypothesisSpec, SequentialSpec
from sweep.spec import load_spec, parse_spec

PROJECT = Path(__file__).resolve().parents[1]
BASE = {"data": {"name": "digits", "image_size": 16}, "model": {"width": 4},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 100}, "train": {"epochs": 1},
        "evaluation": {"suites": ["clean", "noise"]}}
HYP = {"metric": "noise_acc_gaussian_0.4", "direction": "greater", "smallest_effect": 0.05}


def raw(**top):
    return {"name": "h", "base": BASE, "space": {"regularizer.alpha": {"grid": [1.0, 2.0]}},
            "search": {"algorithm": "grid"}, **top}


def test_hypotheses_alpha_and_sequential_seeds_are_parsed_and_round_trip():
    s = parse_spec(raw(hypotheses=[HYP, {"metric": "clean_acc", "direction": "less", "smallest_effect": 0.02}],
                       alpha=0.01, seeds={"min": 3, "max": 12}))
    assert s.hypotheses == [HypothesisSpec("noise_acc_gaussian_0.4", "greater", 0.05),
                            HypothesisSpec("clean_acc", "less", 0.02)]
    assert s.alpha == 0.01 and s.sequential == SequentialSpec(3, 12)
    assert s.seeds == [0, 1, 2]  # the first round; later rounds add seeds 3 .. 11
    saved = yaml.safe_load(s.to_yaml())
    assert saved["seeds"] == {"min": 3, "max": 12} and saved["alpha"] == 0.01
    again = parse_spec(saved)
    assert again.to_dict() == s.to_dict()


def test_defaults_without_declarations():
    s = parse_spec(raw(seeds=2))
    assert s.hypotheses == [] and s.alpha == 0.05 and s.sequential is None and s.seeds == [0, 1]
    assert parse_spec(raw(hypotheses=[{"metric": "clean_acc", "smallest_effect": 0.1}])).hypotheses[0].direction == "greater"


@pytest.mark.parametrize(("top", "field", "words"), [
    ({"hypotheses": [{**HYP, "metric": "noise_acc_gaussian_0.45"}]}, "hypotheses[0].metric", "not a metric"),
    ({"hypotheses": [{**HYP, "metric": "median_l2"}]}, "hypotheses[0].metric", "base.evaluation.suites"),
    ({"hypotheses": [{**HYP, "direction": "bigger"}]}, "hypotheses[0].direction", "two-sided"),
    ({"hypotheses": [{**HYP, "smallest_effect": 0}]}, "hypotheses[0].smallest_effect", "> 0"),
    ({"hypotheses": [{k: v for k, v in HYP.items() if k != "smallest_effect"}]}, "hypotheses[0].smallest_effect", "> 0"),
    ({"hypotheses": [{**HYP, "effect": 1}]}, "hypotheses[0]", "unknown key"),
    ({"hypotheses": [HYP, HYP]}, "hypotheses[1].metric", "twice"),
    ({"hypotheses": HYP}, "hypotheses", "list"),
    ({"alpha": 0.5}, "alpha", "(0, 0.5)"),
    ({"alpha": "0.05"}, "alpha", "(0, 0.5)"),
    ({"seeds": {"min": 3}}, "seeds", "{min: 3, max: 12}"),
    ({"seeds": {"min": 5, "max": 3}, "hypotheses": [HYP]}, "seeds", "min <= max"),
    ({"seeds": {"min": 1, "max": 3}, "hypotheses": [HYP]}, "seeds", "2 <= min"),
    ({"seeds": {"min": 3, "max": 12}}, "seeds", "declares none"),
])
def test_bad_declarations_are_refused_with_the_field_named(top, field, words):
    with pytest.raises(ConfigError) as e:
        parse_spec(raw(**top))
    assert e.value.field == field and words in str(e.value)


def test_shipped_spaces_declare_their_hypotheses(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROREG_DATA_ROOT", str(tmp_path))  # mnist_repro needs a data root to parse
    default = load_spec("alpha_th", check_files=False)
    assert [h.metric for h in default.hypotheses] == ["noise_acc_gaussian_0.4"] and default.alpha == 0.05
    repro = load_spec("mnist_repro", check_files=False)
    assert repro.hypotheses == [HypothesisSpec("noise_acc_gaussian_0.4", "greater", 0.05)]
    assert repro.sequential == SequentialSpec(3, 12)
    pairing = load_spec("pairing_mnist", check_files=False)
    assert pairing.hypotheses == [
        HypothesisSpec("noise_acc_gaussian_0.4", "greater", 0.05),
        HypothesisSpec("noise_acc_gaussian_0.4", "equivalent", 0.05, {"regularizer.pairing": "shared"},
                       {"regularizer.pairing": "pairs"})]


def test_cli_exits_2_naming_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw(hypotheses=[{**HYP, "metric": "noise_acc_gausian_0.4"}])))
    r = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(path), "--dry-run"], cwd=PROJECT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "hypotheses[0].metric" in r.stderr and "noise_acc_gausian_0.4" in r.stderr

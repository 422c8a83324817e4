"""Extension points: a suite, a target or an attack is one registration, and validation,
the runner and the sweep's metric check pick it up without another edit."""

from __future__ import annotations

import json

import pytest
import torch

from neuroreg.config import ConfigError, RunConfig
from neuroreg.data import load_dataset
from neuroreg.evaluate.attacks import ATTACKS, Attack, attack_names, build_attacks, register_attack
from neuroreg.evaluate.metrics import reported_metrics
from neuroreg.evaluate.runner import evaluate_model
from neuroreg.evaluate.suite import SUITES, SuiteContext, SuiteOutput, register_suite
from neuroreg.models import create_model
from neuroreg.registry import Registry
from neuroreg.targets import TARGETS, CosineTarget, build_target, register_target, target_params


@pytest.fixture
def scratch():
    """Registrations made in a test are removed afterwards."""
    before = {r: dict(r._entries) for r in (SUITES, TARGETS, ATTACKS)}
    yield
    for r, entries in before.items():
        r._entries = entries


def test_registry_refuses_a_second_entry_and_names_the_field():
    r: Registry[int] = Registry("widget")
    r.add("a", 1)
    with pytest.raises(ValueError, match="twice"):
        r.add("a", 2)
    with pytest.raises(ConfigError) as e:
        r.get("b", "thing.widget")
    assert e.value.field == "thing.widget" and "('a',)" in str(e.value)


def test_a_new_suite_runs_validates_and_is_checked(scratch, tmp_path):
    @register_suite("darkness", metrics=lambda cfg: {"dark_acc"}, headline=("dark_acc",))
    def run(ctx: SuiteContext) -> SuiteOutput:
        """Accuracy on black images (a toy)."""
        x = torch.zeros_like(ctx.x_all[:8])
        acc = float((ctx.model(x.to(ctx.device)).argmax(1).cpu() == ctx.y_all[:8]).float().mean())
        return SuiteOutput({"darkness": [{"accuracy": acc, "n": 8}]}, {"dark_acc": acc})

    cfg = RunConfig.from_dict({"data": {"name": "digits", "image_size": 16, "test_subset": 16},
                               "model": {"width": 4}, "evaluation": {"suites": ["clean", "darkness"],
                                                                     "progress": False}})
    assert "dark_acc" in reported_metrics(cfg) and "seconds_darkness" in reported_metrics(cfg)
    model = create_model("resnet18", 10, 1, width=4).eval()
    summary = evaluate_model(model, cfg, load_dataset(cfg.data, train=False), tmp_path)
    assert 0 <= summary["dark_acc"] <= 1 and "seconds_darkness" in summary
    assert json.loads((tmp_path / "darkness.jsonl").read_text())["n"] == 8
    with pytest.raises(ConfigError, match="darkness"):  # the choices name it
        RunConfig.from_dict({"evaluation": {"suites": ["brightness"]}})


def test_a_new_target_is_validated_and_declares_its_parameters(scratch):
    @register_target("ones", params=("th",))
    def ones(cfg, reg_images):
        return CosineTarget(torch.ones(reg_images.shape[0], 1))

    assert target_params("ones") == ("th",) and target_params("shuffle", "ones") == ("shuffle_of", "th")
    cfg = RunConfig.from_dict({"regularizer": {"target": "ones", "alpha": 1.0}})
    t = build_target(cfg.regularizer, torch.zeros(5, 1, 4, 4, dtype=torch.uint8))
    assert torch.equal(t.matrix(), torch.ones(5, 5))
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"regularizer": {"target": "twos"}})
    assert e.value.field == "regularizer.target" and "ones" in str(e.value)


def test_a_new_attack_is_validated_and_built(scratch):
    class Identity(Attack):
        name, norm = "identity", "l2"

        def run(self, model, x, y, starting_points=None):
            return x

    register_attack("identity", "l2")(lambda ev: Identity())
    assert "identity" in attack_names("l2") and "identity" not in attack_names("linf")
    cfg = RunConfig.from_dict({"evaluation": {"attacks_l2": ["identity"]}})
    assert isinstance(build_attacks("l2", ["identity"], cfg.evaluation)[0], Identity)
    with pytest.raises(ConfigError, match="attacks_linf"):
        RunConfig.from_dict({"evaluation": {"attacks_linf": ["identity"]}})

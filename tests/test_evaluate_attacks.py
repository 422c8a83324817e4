"""Minimal-perturbation ensemble against closed-form answers on linear models.

For a binary linear classifier f(x) = w.x + b the smallest L2 perturbation that flips
the decision has norm |f(x)| / ||w||_2 and the smallest Linf one |f(x)| / ||w||_1, as
long as the optimal points stay inside the [0, 1] box (the images are chosen so).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neuroreg.evaluate.attacks import (
    Attack,
    NormResult,
    PGDBisection,
    build_attacks,
    invariant_violations,
    minimal_perturbations,
    perturbation_norms,
    summarize,
)
from neuroreg.evaluate.config import EvalConfig

CFG = EvalConfig(ddn_steps=100, fmn_steps=100, bb_steps=50)


def _binary_linear(n: int = 8, seed: int = 0):
    """Two logits (w.x + b)/2 and -(w.x + b)/2 over 1 x 6 x 6 images in [0.3, 0.7]."""
    g = torch.Generator().manual_seed(seed)
    d = 36
    w = torch.randn(d, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w / 2, -w / 2]))
        model[1].bias.copy_(torch.tensor([-w.sum() / 4, w.sum() / 4]))  # centre the box at f = 0
    x = 0.3 + 0.4 * torch.rand(400, 1, 6, 6, generator=g)
    with torch.no_grad():
        f = x.flatten(1) @ w - w.sum() / 2
    l2 = f.abs().double() / w.double().norm()
    linf = f.abs().double() / w.double().abs().sum()
    # keep images whose optimal perturbations stay inside [0, 1] with room to spare
    ok = (linf < 0.2) & (l2 * w.abs().max() / w.norm() < 0.2) & (l2 > 0.02)
    idx = ok.nonzero().flatten()[:n]
    y = (f[idx] < 0).long()  # class 0 wins when f > 0
    return model.eval(), x[idx], y, l2[idx], linf[idx]


@pytest.fixture(scope="module")
def linear_run():
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread fixture
    model, x, y, l2, linf = _binary_linear()
    # one more image with a wrong label: a clean misclassification
    x = torch.cat([x, x[:1]])
    y = torch.cat([y, 1 - y[:1]])
    attacks = {"l2": build_attacks("l2", ["ddn", "bb_l2"], CFG),
               "linf": build_attacks("linf", ["fmn_linf", "bb_linf"], CFG)}
    results, checks = minimal_perturbations(model, x, y, attacks, batch_size=5, cross_norm=False,
                                            show_progress=False)
    return model, x, y, l2, linf, results, checks


@pytest.mark.slow  # Brendel-Bethge compiles its numba optimizers once per process (~40 s at -O0, see conftest)
def test_ensemble_finds_closed_form_distances(linear_run):
    model, x, y, l2, linf, results, checks = linear_run
    n = len(l2)
    for norm, ref in (("l2", l2), ("linf", linf)):
        found = results[norm].distances[:n]
        ratio = found / ref
        assert torch.all(ratio >= 1 - 1e-4), f"{norm}: below the true minimum? {ratio}"
        assert torch.all(ratio <= 1.02), f"{norm}: more than 2 % above the minimum: {ratio}"
    assert checks["n_invariant_violations"] == 0


@pytest.mark.slow
def test_misclassified_counts_zero_and_everything_is_verified(linear_run):
    model, x, y, l2, linf, results, checks = linear_run
    for norm, res in results.items():
        assert res.distances[-1] == 0 and res.attack[-1] == "misclassified"
        broken = torch.isfinite(res.distances)
        assert broken.all()
        with torch.no_grad():
            pred = model(res.adversarials).argmax(1)
        assert torch.all(pred != y), "every kept adversarial must change the decision"
        assert res.adversarials.min() >= 0 and res.adversarials.max() <= 1
        recomputed = perturbation_norms(res.adversarials - x, norm)
        assert torch.allclose(recomputed, res.distances, rtol=1e-9, atol=0)
        assert set(res.attack[:-1]) <= {"ddn", "bb_l2", "fmn_linf", "bb_linf"}
        s = summarize(res)
        assert s["success_rate"] == 1.0 and s["n_unbroken"] == 0 and s["n"] == len(x)
        assert s["median"] == pytest.approx(float(np.quantile(res.distances.numpy(), 0.5)), rel=1e-12)
        assert s["seconds"] > 0


def test_pgd_bisection_brackets_the_minimum():
    model, x, y, l2, linf = _binary_linear(n=6, seed=1)
    for norm, ref, grid in (("l2", l2, [0.05, 0.1, 0.2, 0.4, 0.8]), ("linf", linf, [0.005, 0.01, 0.02, 0.04, 0.08])):
        attack = PGDBisection(norm, grid, steps=30, bisection_steps=7)
        res, _ = minimal_perturbations(model, x, y, {norm: [attack]}, show_progress=False)
        ratio = res[norm].distances / ref
        assert torch.all(ratio >= 1 - 1e-4) and torch.all(ratio <= 1.03), ratio


def test_constant_model_is_reported_unbroken_not_crashed():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0, -1.0]))
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(5, dtype=torch.long)
    cfg = EvalConfig(ddn_steps=10, fmn_steps=10, bb_steps=5, pgd_steps=5, pgd_bisection_steps=1,
                     cw_steps=5, cw_binary_search_steps=2)
    attacks = {"l2": build_attacks("l2", ["ddn", "bb_l2", "pgd_l2", "cw_l2"], cfg),
               "linf": build_attacks("linf", ["fmn_linf", "bb_linf", "pgd_linf"], cfg)}
    results, checks = minimal_perturbations(model, x, y, attacks, show_progress=False)
    for res in results.values():
        s = summarize(res)
        assert s["n_unbroken"] == 5 and s["success_rate"] == 0.0 and math.isinf(s["median"])
        assert res.attack == ["none"] * 5
        assert "bb_l2" not in res.seconds and "bb_linf" not in res.seconds  # no starting points: skipped
    assert checks["n_invariant_violations_final"] == 0


class _Liar(Attack):
    """Claims adversarials but returns tiny, harmless perturbations."""

    name, norm = "liar", "l2"

    def run(self, model, x, y, starting_points=None):
        return (x + 1e-3).clamp(0, 1)


def test_unverified_candidates_are_rejected():
    model, x, y, l2, _ = _binary_linear(n=4)
    res, _ = minimal_perturbations(model, x, y, {"l2": [_Liar()]}, show_progress=False)
    r = res["l2"]
    assert torch.all(torch.isinf(r.distances)) and r.n_rejected["liar"] == 4
    assert summarize(r)["n_rejected"] == 4


def test_invariant_check_counts_violations():
    def nr(norm, d):
        d = torch.tensor(d, dtype=torch.float64)
        return NormResult(norm, d, torch.zeros(len(d), 1, 2, 2), ["x"] * len(d))

    # D = 4: L2 / 2 <= Linf <= L2. Image 1 breaks the right side, image 2 the left, image 3 is unbroken.
    res = {"l2": nr("l2", [1.0, 0.5, 1.0, math.inf]), "linf": nr("linf", [0.6, 0.7, 0.4, 0.1])}
    assert invariant_violations(res, 4) == 2


def test_unknown_attack_or_wrong_norm_rejected():
    with pytest.raises(ValueError, match="unknown attack"):
        build_attacks("l2", ["fgsm"], CFG)
    with pytest.raises(ValueError, match="linf attack"):
        build_attacks("l2", ["fmn_linf"], CFG)


def test_quantile_with_unbroken_images():
    import numpy as np

    from neuroreg.evaluate.attacks import quantile

    d = np.array([0.0, 1.0, 2.0, 3.0])
    assert quantile(d, 0.5) == pytest.approx(np.quantile(d, 0.5))
    assert quantile(np.array([1.0, 2.0, math.inf]), 0.5) == 2.0
    assert quantile(np.array([1.0, math.inf]), 0.5) == math.inf
    assert quantile(np.array([math.inf, math.inf]), 0.25) == math.inf


def test_transferred_fgsm_matches_closed_form_on_linear_model():
    from neuroreg.evaluate.transfer import fgsm_transfer

    model, x, y, _, linf = _binary_linear(n=8, seed=2)
    below, above = float(linf.min()) * 0.9, float(linf.max()) * 1.1
    recs = fgsm_transfer(model, model, x, y, [0.0, below, above], batch_size=3, show_progress=False)
    assert [r["epsilon"] for r in recs] == [0.0, below, above]
    # FGSM's sign step is the optimal Linf direction of a linear model: flips iff eps > distance
    assert [r["accuracy"] for r in recs] == [1.0, 1.0, 0.0]
    assert all(r["accuracy"] == r["surrogate_accuracy"] and r["n"] == 8 for r in recs)
    # a surrogate with swapped logits has the opposite gradient: its FGSM pushes the target
    # away from its boundary, so the target stays right where the white-box attack flipped it
    flipped = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with torch.no_grad():
        flipped[1].weight.copy_(model[1].weight.flip(0))
        flipped[1].bias.copy_(model[1].bias.flip(0))
    recs = fgsm_transfer(model, flipped, x, y, [above], show_progress=False)
    assert recs[0]["surrogate_accuracy"] == 0.0 and recs[0]["accuracy"] == 1.0


@pytest.mark.parametrize("attack", ["boundary", "hsj_linf"])
def test_boundary_attack_respects_the_true_minimum(attack):
    from neuroreg.evaluate.boundary import boundary_success

    model, x, y, _, linf = _binary_linear(n=8, seed=3)
    assert set(y.tolist()) == {0, 1}, "the pool needs images of both classes"
    recs, d = boundary_success(model, x, y, x, [float(linf.min()) * 0.5, 1.0], num_classes=2, steps=20,
                               show_progress=False, attack=attack)
    assert torch.all(d >= linf * (1 - 1e-4)), "no verified adversarial can beat the closed-form minimum"
    assert [r["success_rate"] for r in recs] == [0.0, 1.0] and recs[0]["n"] == 8


def test_summary_counts_misclassified_as_zero_and_unbroken_as_inf():
    from neuroreg.evaluate.attacks import quantile

    d = np.array([0.0, 0.0, 0.3, 0.5, 0.9, np.inf, np.inf])
    assert quantile(d, 0.5) == pytest.approx(0.5)  # 7 values: the 4th
    assert quantile(d, 0.25) == pytest.approx(0.0 + (0.3 - 0.0) * 0.5)  # numpy linear rule
    assert quantile(d, 0.75) == np.inf  # its upper neighbour is unbroken
    assert quantile(d[:5], 0.5) == pytest.approx(np.quantile(d[:5], 0.5))
    assert quantile(np.array([np.inf, np.inf]), 0.5) == np.inf

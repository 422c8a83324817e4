"""Random-noise suite: level 0 is clean accuracy, accuracy falls with noise, fixed seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroreg.evaluate.common import accuracy
from neuroreg.evaluate.config import default_noise_levels
from neuroreg.evaluate.noise import add_noise, noise_accuracy


def _digits_model():
    """A softmax regression on sklearn's 8 x 8 digits (offline), fitted in the test, as a torch model."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)  # module fixtures run before conftest's per-test thread fixture
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:]
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(x[tr].flatten(1).numpy(), y[tr].numpy())
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(clf.coef_, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(clf.intercept_, dtype=torch.float32))
    return model.eval(), x[te], y[te]


@pytest.fixture(scope="module")
def trained():
    return _digits_model()


def test_level_zero_equals_clean_accuracy(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean > 0.9
    recs = noise_accuracy(model, x, y, {"gaussian": [0.0, 0.5], "uniform": [0.0], "salt_pepper": [0.0]},
                          seed=3, batch_size=100, show_progress=False)
    zero = [r for r in recs if r["level"] == 0]
    assert len(zero) == 3 and all(r["accuracy"] == clean and r["n"] == len(x) for r in zero)
    noisy = [r for r in recs if r["level"] == 0.5][0]
    assert noisy["accuracy"] < clean - 0.05, "sigma 0.5 must hurt a linear digit classifier"


def test_accuracy_does_not_rise_with_noise(trained):
    model, x, y = trained
    levels = default_noise_levels("digits")
    recs = noise_accuracy(model, x, y, levels, seed=0, batch_size=128, show_progress=False)
    tol = 3 / len(x) + 0.02  # sampling noise of a few hundred images
    for kind in levels:
        acc = [r["accuracy"] for r in recs if r["noise"] == kind]
        assert len(acc) == len(levels[kind])
        for a, b in zip(acc, acc[1:]):
            assert b <= a + tol, f"{kind}: accuracy rose from {a} to {b}"
        assert acc[-1] < acc[0] - 0.2, f"{kind}: the strongest level must hurt"


def test_noise_is_seeded_batched_and_in_range(trained):
    model, x, y = trained
    lv = {"gaussian": [0.3], "salt_pepper": [0.2]}
    a = noise_accuracy(model, x, y, lv, seed=1, batch_size=64, show_progress=False)
    b = noise_accuracy(model, x, y, lv, seed=1, batch_size=64, show_progress=False)
    assert a == b
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    base = torch.full((200, 1, 8, 8), 0.5)
    n1 = add_noise(base, "gaussian", 0.1, g1)
    assert not torch.equal(n1, add_noise(base, "gaussian", 0.1, g2))
    assert abs(float((n1 - base).std()) - 0.1) < 0.01
    u = add_noise(base, "uniform", 0.2, g1)
    assert float((u - base).abs().max()) <= 0.2 + 1e-6 and float((u - base).abs().max()) > 0.19
    sp = add_noise(base, "salt_pepper", 0.3, g1)
    flipped = (sp != 0.5).float().mean()
    assert abs(float(flipped) - 0.3) < 0.02 and set(sp.unique().tolist()) == {0.0, 0.5, 1.0}
    big = add_noise(base, "gaussian", 5.0, g1)
    assert big.min() >= 0 and big.max() <= 1


def test_unknown_noise_rejected():
    with pytest.raises(ValueError, match="unknown noise"):
        add_noise(torch.zeros(1, 1, 2, 2), "poisson", 0.1, torch.Generator())

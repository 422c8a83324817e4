"""Targets against brute-force N x N computations (METHOD.md section 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroreg.config import ConfigError, RegularizerConfig
from neuroreg.pairperm import FeistelPermutation, pair_from_index, pair_index
from neuroreg.targets import (
    CosineTarget,
    ShuffleTarget,
    ThresholdTarget,
    build_target,
    check_matrix,
    neural_unit_vectors,
    pixel_unit_vectors,
    snr_weights,
)
from neuroreg.v1sim import simulate_v1_responses


def _images(n=12, c=3, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.integers(0, 256, size=(n, c, h, w)), dtype=torch.uint8)


def _brute_pixel(images: torch.Tensor) -> np.ndarray:
    x = images.numpy().astype(np.float64) / 255.0
    x = x.mean(axis=1).reshape(len(x), -1)
    x = x - x.mean(axis=0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_pixel_target_matches_brute_force():
    imgs = _images()
    t = build_target(RegularizerConfig(target="pixel", alpha=1.0), imgs)
    assert np.allclose(t.matrix().numpy(), _brute_pixel(imgs), atol=1e-5)


@pytest.mark.parametrize("th", [0.1, 0.3])
def test_pixel_th_target_matches_brute_force(th):
    imgs = _images(n=15, seed=3)
    s = _brute_pixel(imgs)
    ref = np.where(s > th, 1.0, np.where(s < -th, -1.0, 0.0))
    np.fill_diagonal(ref, 1.0)
    t = build_target(RegularizerConfig(target="pixel_th", alpha=1.0, th=th), imgs)
    m = t.matrix().numpy()
    assert np.array_equal(m, ref)
    assert set(np.unique(m)) <= {-1.0, 0.0, 1.0}


def test_pair_index_round_trip_and_bijective():
    n = 37
    i, j = torch.triu_indices(n, n, offset=1)
    k = pair_index(i, j, n)
    assert torch.equal(k, torch.arange(n * (n - 1) // 2))
    assert torch.equal(pair_index(j, i, n), k)  # unordered
    a, b = pair_from_index(k, n)
    assert torch.equal(a, i) and torch.equal(b, j)
    # large n: exact near row boundaries despite float sqrt
    n = 50_000
    rows = torch.tensor([0, 1, 2, 24_999, 49_997, 49_998])
    ks = torch.cat([pair_index(rows, rows + 1, n), pair_index(rows, torch.full_like(rows, n - 1), n)])
    a, b = pair_from_index(ks, n)
    assert torch.equal(pair_index(a, b, n), ks) and bool((a < b).all())


def test_feistel_is_a_permutation_and_depends_on_seed():
    for m in [1, 2, 7, 100, 1000]:
        p = FeistelPermutation(m, seed=5)(torch.arange(m))
        assert torch.equal(torch.sort(p).values, torch.arange(m))
    a = FeistelPermutation(1000, seed=1)(torch.arange(1000))
    b = FeistelPermutation(1000, seed=2)(torch.arange(1000))
    assert not torch.equal(a, b)
    assert (a == torch.arange(1000)).float().mean() < 0.05  # not near identity


def _reference_once(perm: FeistelPermutation, k: torch.Tensor) -> torch.Tensor:
    """One Feistel pass with the round function computed, never looked up in perm's tables."""
    left, right = k >> perm.half, k & perm.half_mask
    for key in perm.keys:
        left, right = right, left ^ perm._round(right, key)
    return (left << perm.half) | right


def _host_loop_perm(perm: FeistelPermutation, k: torch.Tensor) -> torch.Tensor:
    """The permutation as it was before issue 25: cycle walking on the host until every index
    is back in [0, m), reading ``outside.any()`` once per walking step (a GPU sync each)."""
    out = _reference_once(perm, k)
    outside = out >= perm.m
    while bool(outside.any()):
        out = torch.where(outside, _reference_once(perm, out), out)
        outside = out >= perm.m
    return out


def _host_loop_shuffle_matrix(base_matrix: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The shuffle target's N x N matrix as the previous implementation computed it."""
    perm = FeistelPermutation(max(1, n * (n - 1) // 2), seed)
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = ii.reshape(-1), jj.reshape(-1)
    same = i == j
    k = pair_index(i, torch.where(same, (i + 1) % n, j), n)
    a, b = pair_from_index(_host_loop_perm(perm, k.cpu()), n)
    v = base_matrix[a, b]
    return torch.where(same, torch.ones_like(v), v).reshape(n, n)


@pytest.mark.parametrize("n", [2, 3, 17, 40, 300])
@pytest.mark.parametrize("seed", [0, 3])
def test_shuffle_values_identical_to_the_host_loop(n, seed):
    """The fixed-step walk on the device changes no value of the shuffle control."""
    imgs = _images(n=n, seed=seed)
    base = build_target(RegularizerConfig(target="pixel_th", th=0.2, alpha=1.0), imgs)
    sh = build_target(RegularizerConfig(target="shuffle", shuffle_of="pixel_th", th=0.2, alpha=1.0, seed=seed), imgs)
    assert torch.equal(sh.matrix(), _host_loop_shuffle_matrix(base.matrix(), n, seed))


def _walk_lengths(perm: FeistelPermutation) -> torch.Tensor:
    """How many extra Feistel applications each index of [0, m) needs (brute force)."""
    out = _reference_once(perm, torch.arange(perm.m))
    steps = torch.zeros(perm.m, dtype=torch.int64)
    while bool((out >= perm.m).any()):
        outside = out >= perm.m
        steps += outside.long()
        out = torch.where(outside, _reference_once(perm, out), out)
    return steps


def test_round_tables_match_the_computed_rounds(monkeypatch):
    """The table lookup is the computed round function, and above TABLE_MAX_HALF none is made."""
    import neuroreg.pairperm as pairperm

    perm = FeistelPermutation(499_500, seed=2)
    assert perm.tables is not None and len(perm.tables) == 4
    k = torch.randint(0, 1 << (2 * perm.half), (10_000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm._once(k), _reference_once(perm, k))
    monkeypatch.setattr(pairperm, "TABLE_MAX_HALF", perm.half - 1)
    computed = FeistelPermutation(499_500, seed=2)
    assert computed.tables is None and computed.to("meta") is computed
    assert torch.equal(computed._once(k), perm._once(k))
    assert perm.to("meta").tables[0].device.type == "meta" and perm.tables[0].device.type == "cpu"


@pytest.mark.parametrize("m", [1, 3, 780, 124_750, 499_500])
def test_walk_bound_is_the_exact_maximum(m):
    """walk_steps is the longest walk of any index: enough for all, and not one step more."""
    perm = FeistelPermutation(m, seed=1)
    assert perm.exact
    assert perm.walk_steps == int(_walk_lengths(perm).max())
    k = torch.arange(m)
    assert torch.equal(perm(k), _host_loop_perm(perm, k))
    assert int(perm(k).max()) < m


def test_walk_without_an_exact_bound_flags_an_unfinished_index(monkeypatch):
    """Above EXACT_WALK_MAX the bound is probabilistic: values are still the same, and an index
    still outside after walk_steps (forced here by a bound of 0) raises the device flag."""
    import neuroreg.pairperm as pairperm

    monkeypatch.setattr(pairperm, "EXACT_WALK_MAX", 0)
    m = 780
    perm = FeistelPermutation(m, seed=1)
    p, t = 1 - m / 1024, perm.walk_steps  # domain 2^10
    assert not perm.exact and m * p**t <= 2**-40 < m * p ** (t - 1)  # the smallest such t
    k = torch.arange(m)
    out, unfinished = perm.walk(k)
    assert torch.equal(out, _host_loop_perm(perm, k)) and not bool(unfinished)
    needs_walk = _walk_lengths(perm) > 0
    assert bool(needs_walk.any())
    perm.walk_steps = 0
    out, unfinished = perm.walk(k)
    assert bool(unfinished)
    assert torch.equal(out[needs_walk], k[needs_walk])  # a valid index, never one >= m
    with pytest.raises(RuntimeError, match="cycle-walking steps"):
        perm(k)
    # the target keeps the flag on its device until the trainer reads it
    imgs = _images(n=40)
    sh = build_target(RegularizerConfig(target="shuffle", shuffle_of="pixel", alpha=1.0, seed=1), imgs).to("cpu")
    assert sh.incomplete() is not None and not bool(sh.incomplete())
    sh.perm.walk_steps = 0
    sh.pairs(torch.arange(40), torch.arange(40).flip(0))
    assert bool(sh.incomplete())


def test_shuffle_keeps_values_and_symmetry_but_moves_them():
    imgs = _images(n=20, seed=7)
    cfg = RegularizerConfig(target="shuffle", shuffle_of="pixel", alpha=1.0, seed=3)
    base = build_target(RegularizerConfig(target="pixel", alpha=1.0), imgs).matrix().numpy()
    sh = build_target(cfg, imgs).matrix().numpy()
    iu = np.triu_indices(20, 1)
    assert np.allclose(np.sort(sh[iu]), np.sort(base[iu]), atol=1e-6)  # same multiset
    assert np.array_equal(sh, sh.T)
    assert np.all(np.diag(sh) == 1.0)
    assert np.mean(np.isclose(sh[iu], base[iu], atol=1e-7)) < 0.2  # values were moved
    # a fixed permutation: same seed, same target
    assert np.array_equal(sh, build_target(cfg, imgs).matrix().numpy())
    # shuffle of pixel_th: only -1/0/1 and the same counts
    th = build_target(RegularizerConfig(target="shuffle", shuffle_of="pixel_th", th=0.2, alpha=1.0), imgs).matrix()
    ref = build_target(RegularizerConfig(target="pixel_th", th=0.2, alpha=1.0), imgs).matrix()
    assert np.array_equal(np.sort(th.numpy()[iu]), np.sort(ref.numpy()[iu]))


def test_snr_weights_on_known_signal_and_noise():
    rng = np.random.default_rng(0)
    stimuli, repeats = 4000, 5
    sig_sd = np.array([2.0, 1.0, 0.5, 0.0])
    noise_sd = np.array([1.0, 1.0, 1.0, 2.0])
    signal = rng.normal(size=(stimuli, 4)) * sig_sd
    r = signal[None] + rng.normal(size=(repeats, stimuli, 4)) * noise_sd
    w = snr_weights(r).numpy()
    # E[signal estimate] = sig^2 + noise^2 / repeats; E[noise estimate] = noise^2
    expected = (sig_sd**2 + noise_sd**2 / repeats) / noise_sd**2
    assert np.allclose(w, expected, rtol=0.08)
    assert w[0] > w[1] > w[2] > w[3]


def test_neural_target_from_responses_and_matrix(tmp_path):
    rng = np.random.default_rng(1)
    r = rng.poisson(3.0, size=(3, 10, 7)).astype(np.float32)
    p = tmp_path / "r.npy"
    np.save(p, r)
    t = build_target(RegularizerConfig(target="neural", alpha=1.0, neural_responses=str(p)), _images(n=10))
    # brute force: weight, centre over stimuli, unit rows, cosine
    m = r.mean(0).astype(np.float64)
    sig = m.var(0, ddof=1)
    noise = r.astype(np.float64).var(0, ddof=1).mean(0)
    x = m * (sig / noise)
    x = x - x.mean(0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(t.matrix().numpy(), x @ x.T, atol=1e-5)
    # a ready matrix
    mpath = tmp_path / "m.npy"
    np.save(mpath, x @ x.T)
    tm = build_target(RegularizerConfig(target="neural", alpha=1.0, neural_matrix=str(mpath)), _images(n=10))
    assert np.allclose(tm.pairs(torch.tensor([1, 2]), torch.tensor([3, 2])).numpy(), [(x @ x.T)[1, 3], 1.0], atol=1e-6)
    # wrong size
    with pytest.raises(ConfigError, match="regularizer.n"):
        build_target(RegularizerConfig(target="neural", alpha=1.0, neural_responses=str(p)), _images(n=11))


def test_matrix_checks_name_the_problem():
    good = np.eye(4)
    check_matrix(good, 4, "regularizer.neural_matrix")
    asym = np.eye(4)
    asym[0, 1] = 0.5
    with pytest.raises(ConfigError, match="not symmetric"):
        check_matrix(asym, 4, "regularizer.neural_matrix")
    with pytest.raises(ConfigError, match="square"):
        check_matrix(np.zeros((3, 4)), 3, "regularizer.neural_matrix")
    bad = np.eye(4)
    bad[2, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        check_matrix(bad, 4, "regularizer.neural_matrix")
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        check_matrix(2 * np.eye(4), 4, "regularizer.neural_matrix")
    with pytest.raises(ConfigError, match="regularizer.n = 4"):
        check_matrix(good, 5, "regularizer.neural_matrix")


def test_simulated_v1_responses_format_and_snr():
    imgs = _images(n=30, c=1, h=16, w=16, seed=2)
    r = simulate_v1_responses(imgs, n_neurons=40, n_repeats=3, seed=0)
    assert r.shape == (3, 30, 40) and r.dtype == np.float32
    assert np.all(r >= 0) and np.all(r == np.round(r))  # spike counts
    assert np.array_equal(r, simulate_v1_responses(imgs, n_neurons=40, n_repeats=3, seed=0))
    u = neural_unit_vectors(r)
    assert torch.allclose(u.norm(dim=1), torch.ones(30), atol=1e-5)
    assert float(snr_weights(r).mean()) > 0


def test_threshold_and_cosine_agree_on_pairs_and_device_copy():
    u = pixel_unit_vectors(_images(n=8))
    base = CosineTarget(u)
    t = ThresholdTarget(base, 0.2)
    i, j = torch.tensor([0, 1, 5]), torch.tensor([0, 4, 2])
    v = base.pairs(i, j)
    assert t.pairs(i, j)[0] == 1.0
    assert torch.equal(t.pairs(i, j)[1:], torch.where(v[1:] > 0.2, 1.0, torch.where(v[1:] < -0.2, -1.0, 0.0)))
    sh = ShuffleTarget(base, seed=0)
    assert torch.equal(sh.to("cpu").pairs(i, j), sh.pairs(i, j))


def test_v1sim_cli_writes_responses_matching_the_run_config(tmp_path):
    from neuroreg.config import RunConfig
    from neuroreg.train import train
    from neuroreg.v1sim import main as v1sim_main

    sets = ["data.image_size=16", "data.val_fraction=0.2", "regularizer.n=60", "model.width=4"]
    out = tmp_path / "r.npy"
    assert v1sim_main(["--set", *sets[:1], "--set", sets[1], "--set", sets[2], "--neurons", "30", "--out", str(out)]) == 0
    r = np.load(out)
    assert r.shape == (4, 60, 30)
    # the trainer accepts it for the same config
    cfg = RunConfig.from_dict({
        "data": {"image_size": 16, "val_fraction": 0.2},
        "model": {"width": 4},
        "regularizer": {"target": "neural", "alpha": 1.0, "n": 60, "neural_responses": str(out), "layers": ["conv1"]},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
    })
    res = train(cfg, tmp_path / "run")
    assert res.history[-1]["pairs_per_s"] > 0
    assert v1sim_main(["--set", "regularizer.n=-1", "--out", str(out)]) == 2


def test_features_target_runs_on_the_given_device(tmp_path):
    """The frozen network and its unit vectors live on ``device`` (meta here: a stand-in for a
    GPU that runs no arithmetic), not on the CPU."""
    import torchvision

    weights = tmp_path / "squeezenet.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    cfg = RegularizerConfig(target="features", alpha=1.0, features_weights=str(weights),
                            features_arch="squeezenet1_1", features_layer="features.3")
    t = build_target(cfg, _images(n=6, h=32, w=32), device="meta")
    assert t.unit.device.type == "meta" and t.unit.shape[0] == 6
    on_cpu = build_target(cfg, _images(n=6, h=32, w=32))
    assert on_cpu.unit.device.type == "cpu" and bool(torch.isfinite(on_cpu.unit).all())

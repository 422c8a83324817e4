"""Frequency analysis: spectra, half-power frequency, hybrid images, reversal frequency, plots."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from neuroreg.config import ConfigError
from neuroreg.evaluate.frequency import (
    cumulative_power,
    frequency_grid,
    group_corruptions,
    half_power_frequency,
    hybrid,
    hybrid_curves,
    hybrid_pairs,
    lowpass_mask,
    power_spectrum,
    power_within,
    radial_profile,
    reversal_frequency,
    run_frequency,
    spectrum_records,
)


def _grating(size: int, cycles_x: int, cycles_y: int = 0, phase: float = 0.0) -> torch.Tensor:
    """size x size cosine with whole numbers of cycles (no spectral leakage)."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.cos(2 * math.pi * (cycles_x * x + cycles_y * y) / size + phase)


def _f05(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    spec = power_spectrum(delta)
    centres, power = radial_profile(spec, n_bins=25, f_max=0.5)
    cum = cumulative_power(power.double(), power_within(spec, 0.5))
    return centres, power, half_power_frequency(centres, cum)


# --- spectra ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cycles_x", "cycles_y", "peak_bin", "expected_f05"),
    [
        (8, 0, 12, 0.25),  # |f| = 0.25, bin [0.24, 0.26)
        (4, 4, 8, 0.17),  # |f| = 0.177 on the diagonal, bin [0.16, 0.18)
        (0, 3, 4, 0.09),  # |f| = 0.094, bin [0.08, 0.10)
    ],
)
def test_sinusoid_peaks_in_its_bin_and_sets_f05(cycles_x, cycles_y, peak_bin, expected_f05):
    # Several images and channels with random amplitudes and phases: power stays at |f|.
    g = torch.Generator().manual_seed(0)
    delta = torch.stack(
        [
            torch.stack(
                [
                    float(torch.rand(1, generator=g)) * _grating(32, cycles_x, cycles_y, float(p))
                    for p in torch.rand(3, generator=g) * 6
                ]
            )
            for _ in range(4)
        ]
    )
    centres, power, f05 = _f05(delta)
    assert int(power.argmax()) == peak_bin
    f_true = math.hypot(cycles_x, cycles_y) / 32
    assert abs(float(centres[peak_bin]) - f_true) <= 0.01
    assert power[peak_bin] / power.sum() > 0.999
    # All power in one bin: cumulative jumps 0 -> 1 across it, so f05 is its centre.
    assert f05 == pytest.approx(expected_f05, abs=1e-6)


def test_f05_interpolates_between_two_sinusoids():
    # Power 3 : 1 at |f| = 2/32 (bin 3, [0.06, 0.08)) and 12/32: cumulative reaches 0.75
    # at 0.08, so 50 % is 2/3 of the way through bin 3.
    delta = (math.sqrt(3) * _grating(32, 2) + _grating(32, 12, phase=1.0))[None, None]
    _, power, f05 = _f05(delta)
    assert float(power[3] / power.sum()) == pytest.approx(0.75, abs=1e-4)
    assert f05 == pytest.approx(0.06 + 0.02 * 0.5 / 0.75, abs=1e-5)


@pytest.mark.parametrize("size", [20, 50, 100])
def test_frequency_on_a_bin_edge_lands_in_the_bin_above(size):
    # |f| = 0.1 is the lower edge of bin 5 ([0.10, 0.12)); rounding must not drop it to bin 4.
    spec = torch.zeros(size, size)
    spec[size // 2, size // 2 + size // 10] = 1.0
    _, power = radial_profile(spec)
    assert int(power.argmax()) == 5 and float(power.sum()) == 1.0


def test_power_spectrum_obeys_parseval_and_centres_dc():
    delta = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    spec = power_spectrum(delta)
    assert spec.shape == (8, 8)
    # Parseval: sum |F|^2 = H W sum x^2 per image and channel; the spectrum is their mean.
    assert float(spec.sum()) == pytest.approx(64 * float((delta**2).sum()) / 15, rel=1e-5)
    const = torch.full((1, 1, 8, 8), 0.3)
    assert int(power_spectrum(const).argmax()) == 4 * 8 + 4  # DC at the centre after fftshift


def test_corner_power_is_outside_the_profile_and_f05_nan_with_reason():
    checker = _grating(16, 8, 8)[None, None]  # |f| = 0.707: beyond the last bin
    recs = spectrum_records("linf", checker)
    summary = [r for r in recs if r["kind"] == "summary"][0]
    assert math.isnan(summary["f05"]) and "never reaches 50" in summary["reason"]
    assert max(r["power"] for r in recs if r["kind"] == "spectrum") < 1e-9
    assert "f05" in summary["definition"] and "cumulative" in summary["definition"]


def test_spectrum_records_drop_zero_and_nonfinite_perturbations():
    good = _grating(16, 4)[None, None]
    delta = torch.cat([good, torch.zeros_like(good), torch.full_like(good, math.inf)])
    recs = spectrum_records("l2", delta)
    summary = recs[-1]
    assert summary["n"] == 1
    assert summary["f05"] == pytest.approx(0.25, abs=1e-6)  # 4/16 = 0.25, bin centre 0.25
    spec = [r for r in recs if r["kind"] == "spectrum"]
    assert len(spec) == 25 and spec[-1]["cumulative"] == pytest.approx(1.0, abs=1e-6)
    assert spec[11]["cumulative"] < 1e-9 and spec[12]["cumulative"] > 0.999  # 0.25 in bin 12
    assert spec[0]["f_upper"] == pytest.approx(0.02) and spec[-1]["f_upper"] == pytest.approx(0.5)
    assert len([r for r in recs if r["kind"] == "spectrum2d"]) == 16 * 16
    assert all(math.isfinite(r["power"]) for r in recs if r["kind"] != "summary")


# --- hybrids ---------------------------------------------------------------------


def test_hybrid_endpoints_are_the_source_images():
    g = torch.Generator().manual_seed(2)
    x_low, x_high = torch.rand(2, 3, 3, 16, 16, generator=g)
    # c = 0: |f| <= 0 is the DC alone, so the high image with the low image's mean
    dc = x_high - x_high.mean(dim=(-2, -1), keepdim=True) + x_low.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(hybrid(x_low, x_high, 0.0), dc.clamp(0, 1), atol=1e-6)
    assert torch.allclose(hybrid(x_low, x_high, 1.0), x_low, atol=1e-6)
    mid = hybrid(x_low, x_high, 0.5)
    assert not torch.allclose(mid, x_low, atol=1e-2) and not torch.allclose(mid, x_high, atol=1e-2)


def test_hybrid_takes_low_frequencies_from_one_image_and_high_from_the_other():
    # Sources with small contrast around 0.5 so that clipping does not act.
    low_src = 0.5 + 0.1 * _grating(32, 2) + 0.1 * _grating(32, 12)
    high_src = 0.5 - 0.1 * _grating(32, 2) - 0.1 * _grating(32, 12)
    h = hybrid(low_src[None, None], high_src[None, None], 0.5)[0, 0]  # cut at |f| = 0.25
    assert torch.allclose(h, 0.5 + 0.1 * _grating(32, 2) - 0.1 * _grating(32, 12), atol=1e-5)


def test_lowpass_mask_is_radial_and_grows_with_c():
    areas = [float(lowpass_mask(32, 32, c).sum()) for c in (0.0, 0.25, 0.5, 0.99, 1.0)]
    assert areas[0] == 1 and areas[-1] == 32 * 32  # c = 0: |f| <= 0 is the DC alone (METHOD.md)
    assert areas == sorted(areas)
    # Radial: the disc |f| < 0.25 has about pi r^2 of the 32 x 32 grid's cells.
    assert areas[2] == pytest.approx(math.pi * (0.25 * 32) ** 2, rel=0.05)
    with pytest.raises(ValueError, match="c must be >= 0"):
        lowpass_mask(8, 8, -0.1)
    # |f| <= c * Nyquist, not <: the ring at exactly |f| = 0.25 (8 cycles on 32 px) is inside
    grid = frequency_grid(32, 32)
    on_circle = torch.isclose(grid, torch.tensor(0.25, dtype=grid.dtype))
    assert on_circle.any() and bool((lowpass_mask(32, 32, 0.5)[on_circle] == 1).all())


def test_f05_of_white_noise_is_normalised_within_nyquist():
    # METHOD.md: 50 % of the power within |f| <= 0.5. White noise has a flat spectrum, so
    # f0.5 is the radius holding half the disc's cells: about 0.348 at 28 px; normalising
    # by the total power (corners beyond Nyquist included) would give about 0.396.
    delta = torch.randn(400, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rec = [r for r in spectrum_records("l2", delta) if r["kind"] == "summary"][0]
    assert rec["f05"] == pytest.approx(0.348, abs=0.01)


def test_hybrid_pairs_have_different_labels_and_depend_on_seed():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    lo, hi = hybrid_pairs(labels, 25, seed=3)
    assert len(lo) == 25 and (labels[lo] != labels[hi]).all()
    lo2, hi2 = hybrid_pairs(labels, 25, seed=3)
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2)
    lo3, _ = hybrid_pairs(labels, 25, seed=4)
    assert not torch.equal(lo, lo3)
    with pytest.raises(ValueError, match="two classes"):
        hybrid_pairs(torch.zeros(5, dtype=torch.long), 3, 0)


def test_reversal_frequency_interpolates_and_reports_missing_crossing():
    cs = [0.0, 0.25, 0.5, 0.75, 1.0]
    rev = reversal_frequency(cs, [0.0, 0.1, 0.3, 0.8, 1.0], [1.0, 0.8, 0.2, 0.1, 0.0])
    # d = -0.7 at 0.25, +0.1 at 0.5 -> crossing at 0.25 + 0.25 * 0.7 / 0.8.
    assert rev.f_rev == pytest.approx(0.25 + 0.25 * 0.7 / 0.8) and rev.reason == ""
    none = reversal_frequency(cs, [1.0] * 5, [0.0] * 5)
    assert math.isnan(none.f_rev) and "p_low > p_high" in none.reason
    below = reversal_frequency(cs, [0.0] * 5, [1.0] * 5)
    assert math.isnan(below.f_rev) and "p_low < p_high" in below.reason
    with pytest.raises(ValueError, match="increasing"):
        reversal_frequency([0.5, 0.2], [0, 1], [1, 0])


class _Threshold(nn.Module):
    """Class 1 when a fixed frequency band's energy is high: which band is set by `kernel`."""

    def __init__(self, kernel: torch.Tensor, threshold: float):
        super().__init__()
        self.kernel, self.threshold = kernel, threshold

    def forward(self, x):
        score = (x - 0.5).flatten(1) @ self.kernel.flatten()
        return torch.stack([self.threshold - score, score - self.threshold], 1)


def test_hybrid_curves_follow_the_band_a_model_reads():
    # Class = sign of a 1-cycle grating (|f| = 1/16 = 0.125 Nyquist) or of a 6-cycle one
    # (0.375 cyc/px = 0.75 Nyquist); a model reading the low grating must switch to the low
    # source's class as soon as c passes 0.125, one reading the high grating only past 0.75.
    s = torch.tensor([1.0, -1.0] * 8)
    low, high = _grating(16, 1), _grating(16, 6)
    images = (0.5 + 0.2 * s[:, None, None] * (low + high))[:, None]
    labels = (s > 0).long()
    cs = [0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 1.0]
    for band, expected in ((low, (0.1, 0.2)), (high, (0.7, 0.8))):
        p_low, p_high = hybrid_curves(_Threshold(band, 0.0), images, labels, cs, n_pairs=8, seed=0)
        assert torch.allclose(p_low + p_high, torch.ones(len(cs)))  # two classes
        assert float(p_low[0]) == 0.0 and float(p_low[-1]) == 1.0
        f_rev = reversal_frequency(cs, p_low.tolist(), p_high.tolist()).f_rev
        assert expected[0] < f_rev < expected[1]


# --- corruptions -----------------------------------------------------------------


def test_group_corruptions_weighs_corruptions_equally():
    recs = [
        {"corruption": "fog", "severity": 1, "frequency": "low", "accuracy": 0.9},
        {"corruption": "fog", "severity": 2, "frequency": "low", "accuracy": 0.7},
        {"corruption": "contrast", "severity": 1, "frequency": "low", "accuracy": 0.4},
        {"corruption": "gaussian_noise", "severity": 1, "frequency": "high", "accuracy": 0.2},
    ]
    groups = group_corruptions(recs)
    assert groups["low"] == pytest.approx((0.8 + 0.4) / 2)  # not (0.9 + 0.7 + 0.4) / 3
    assert groups["high"] == pytest.approx(0.2)
    assert math.isnan(groups["mid"])
    with pytest.raises(ValueError, match="frequency 'medium'"):
        group_corruptions([{"corruption": "x", "frequency": "medium", "accuracy": 1.0}])
    with pytest.raises(ValueError, match="lacks 'accuracy'"):
        group_corruptions([{"corruption": "x", "frequency": "low"}])


# --- run_frequency ---------------------------------------------------------------


def _toy_records(kernel_cycles: int, seed: int) -> list[dict]:
    s = torch.tensor([1.0, -1.0] * 6)
    images = (0.5 + 0.2 * s[:, None, None] * (_grating(16, 1) + _grating(16, 6)))[:, None]
    labels = (s > 0).long()
    model = _Threshold(_grating(16, kernel_cycles), 0.0)
    g = torch.Generator().manual_seed(seed)
    delta = 0.01 * torch.randn(12, 1, 16, 16, generator=g) + 0.05 * _grating(16, kernel_cycles)
    cfg = SimpleNamespace(
        frequency_cs=[0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 1.0], hybrid_pairs=6, seed=seed
    )
    corr = [{"corruption": "fog", "severity": 1, "frequency": "low", "accuracy": 0.5 + 0.01 * seed}]
    return run_frequency(model, images, labels, {"l2": delta, "linf": None}, cfg, "cpu", corr)


def test_run_frequency_writes_every_record_kind():
    recs = _toy_records(kernel_cycles=1, seed=0)
    kinds = {r["kind"] for r in recs}
    assert kinds == {"spectrum", "spectrum2d", "summary", "hybrid", "corruption_group"}
    json.dumps(recs)  # plain Python values only
    summaries = {(r["metric"], r.get("norm")): r for r in recs if r["kind"] == "summary"}
    assert summaries[("f05", "l2")]["f05"] < 0.1  # delta is mostly the 1-cycle grating
    assert math.isnan(summaries[("f05", "linf")]["f05"])
    assert summaries[("f05", "linf")]["reason"] == "attack did not run"
    assert 0.1 < summaries[("f_rev", None)]["f_rev"] < 0.2
    hyb = [r for r in recs if r["kind"] == "hybrid"]
    assert [r["c"] for r in hyb] == [0.0, 0.1, 0.2, 0.5, 0.7, 0.8, 1.0]


def test_run_frequency_rejects_bad_settings_before_work():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("model must not run")

    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    for bad in ([0.5, 0.2], [0.0, 1.5], []):
        with pytest.raises(ConfigError, match="evaluation.frequency_cs"):
            run_frequency(Boom(), images, labels, {}, SimpleNamespace(frequency_cs=bad))
    with pytest.raises(ConfigError, match="evaluation.hybrid_pairs"):
        run_frequency(Boom(), images, labels, {}, SimpleNamespace(hybrid_pairs=0))
    with pytest.raises(ValueError, match="floats"):
        run_frequency(Boom(), (images * 255).to(torch.uint8), labels, {}, SimpleNamespace())


# --- plots -----------------------------------------------------------------------


def test_plots_are_written(tmp_path):
    pd = pytest.importorskip("pandas")
    from analysis import frequency_plots as fp

    frames = []
    for i, (group, cycles) in enumerate([("base", 6), ("base", 5), ("blur", 1), ("blur", 2)]):
        frames.append(
            pd.DataFrame(_toy_records(cycles, seed=i)).assign(group=group, trial_id=f"t{i}")
        )
    freq = pd.concat(frames, ignore_index=True)
    adv = pd.DataFrame(
        [
            {"trial_id": f"t{i}", "group": g, "norm": "l2", "median": 0.1 * (i + 1)}
            for i, g in enumerate(["base", "base", "blur", "blur"])
        ]
    )
    corr = freq[freq["kind"] == "corruption_group"].assign(corruption="fog")
    written = []
    written += fp.plot_spectrum_heatmaps(freq, "group", tmp_path / "heat", norm="l2")
    written += fp.plot_radial_profiles(freq, "group", tmp_path / "radial", norm="l2")
    written += fp.plot_hybrid_curves(freq, "group", tmp_path / "hybrid")
    written += fp.plot_distance_vs_f05(freq, adv, "group", tmp_path / "dist_f05", norm="l2")
    written += fp.plot_corruption_vs_frev(freq, corr, "group", tmp_path / "corr_frev")
    assert len(written) == 15  # PNG, SVG and PDF of each
    assert sorted({p.suffix for p in written}) == [".pdf", ".png", ".svg"]
    for p in written:
        assert p.exists() and p.stat().st_size > 1000, p
    with pytest.raises(ValueError, match="lack column 'model'"):
        fp.plot_hybrid_curves(freq, "model", tmp_path / "x")
    with pytest.raises(ValueError, match="norm='linf'"):
        fp.plot_radial_profiles(freq, "group", tmp_path / "y", norm="linf")


# --- blur front end lowers f_rev and f0.5 on a low-frequency task ----------------

_S = 16
_X = torch.arange(_S).float()
_LOW = torch.cos(2 * math.pi * _X / _S)[None, :].expand(_S, _S)
# A Hann window keeps the high cue away from the borders, where the blur's reflect
# padding would otherwise leak it through to a blurred model.
_HIGH = (torch.cos(2 * math.pi * 6 * _X / _S) * torch.sin(math.pi * (_X + 0.5) / _S) ** 2)[None, :]


def _grating_task(
    n: int, g: torch.Generator, low_agrees: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told by the sign of a 1-cycle grating (0.125 Nyquist; its sign matches the
    class in a fraction `low_agrees` of images) and of a 6-cycle shortcut (0.75 Nyquist;
    always matches), plus white noise. The labels need only the low grating (test images
    use low_agrees=1); in training an unblurred CNN can take the more reliable shortcut,
    a blurred one cannot see it."""
    y = torch.randint(0, 2, (n,), generator=g)
    s = 2 * y.float() - 1
    s_low = torch.where(torch.rand(n, generator=g) < low_agrees, s, -s)
    x = 0.5 + 0.1 * s_low[:, None, None] * _LOW + 0.25 * s[:, None, None] * _HIGH
    x = x + 0.08 * torch.randn(n, _S, _S, generator=g)
    return x.clamp(0, 1)[:, None], y


def _train_tiny(blur_sigma: float, steps: int = 120) -> nn.Module:
    from neuroreg.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, in_chans=1, width=4, blur_sigma=blur_sigma)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = _grating_task(64, g, low_agrees=0.8)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _input_gradient_f05(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """f0.5 of the margin's input gradient: the direction of a first-order minimal perturbation."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, 1 - y[:, None])).sum()
    (grad,) = torch.autograd.grad(margin, x)
    return _f05(grad)[2]


@pytest.mark.slow
def test_blur_front_end_lowers_reversal_and_half_power_frequency():
    x_test, y_test = _grating_task(256, torch.Generator().manual_seed(123), low_agrees=1.0)
    cs = [round(0.05 * k, 2) for k in range(21)]
    out = {}
    for sigma in (0.0, 2.0):
        model = _train_tiny(sigma)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        assert acc > 0.9, f"blur_sigma={sigma}: the tiny model did not learn the task (acc {acc})"
        p_low, p_high = hybrid_curves(model, x_test, y_test, cs, n_pairs=128, seed=0)
        rev = reversal_frequency(cs, p_low.tolist(), p_high.tolist())
        out[sigma] = (rev.f_rev, _input_gradient_f05(model, x_test, y_test))
    print(f"\nf_rev / gradient f0.5: no blur {out[0.0]}, blur sigma 2 {out[2.0]}")
    (rev_plain, f05_plain), (rev_blur, f05_blur) = out[0.0], out[2.0]
    # The blurred model reads the 0.125-Nyquist grating, the plain one the 0.75 shortcut.
    assert rev_blur < 0.3 < 0.6 < rev_plain
    assert f05_blur < f05_plain

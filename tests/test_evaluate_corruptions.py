"""Corruptions keep shape, range and dtype, are deterministic per seed, and grow with severity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroreg.evaluate.corruptions import CORRUPTIONS, FREQUENCY, corrupt

# Corruptions that draw random numbers (the others are deterministic filters).
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}


def _smooth_images(n: int = 12) -> torch.Tensor:
    """Natural-ish uint8 RGB images: upscaled sklearn digits on colour ramps (offline)."""
    from sklearn.datasets import load_digits

    d = torch.tensor(load_digits().images[:n] / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(d, size=(32, 32), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0.1, 0.5, 32)
    rgb = torch.cat([0.2 + 0.7 * x, 0.1 + 0.5 * x + 0.3 * ramp[None, None, :, None],
                     0.9 - 0.6 * x * ramp[None, None, None, :]], 1)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


def _mean_abs_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def _structure_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - Pearson correlation per image, averaged."""
    a, b = a.float().flatten(1), b.float().flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-9)).mean())


def test_all_fifteen_with_frequency_tags():
    assert len(CORRUPTIONS) == 15
    assert set(FREQUENCY) == set(CORRUPTIONS)
    assert set(FREQUENCY.values()) == {"low", "mid", "high"}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_range_determinism(name, channels):
    x = _smooth_images(6)[:, :channels].contiguous()
    a = corrupt(x, name, 3, seed=0)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, corrupt(x, name, 3, seed=0)), "same seed must give the same images"
    assert not torch.equal(a, x), "severity 3 must change the images"
    if name in RANDOM:
        assert not torch.equal(a, corrupt(x, name, 3, seed=1)), "another seed must draw other noise"
    # float outputs of the corruption itself stay in [0, 1] before the uint8 conversion
    xf = x.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255
    y = CORRUPTIONS[name](xf, 5, np.random.default_rng(0))
    assert y.shape == xf.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_five_changes_more_than_one(name):
    x = _smooth_images()
    s1, s5 = corrupt(x, name, 1, seed=0), corrupt(x, name, 5, seed=0)
    if name == "elastic_transform":
        # Hendrycks' CIFAR parameters shrink the random affine part with severity (2.6 ... 1.0 px)
        # while the elastic displacement grows from none (alpha = 0 at severity 1): the pixel
        # change is not monotonic in the original either. Both must change the images, differently.
        assert _mean_abs_change(s1, x) > 1 and _mean_abs_change(s5, x) > 1
        assert not torch.equal(s5, s1)
        return
    # frost blends a bright texture: the pixel change saturates, the loss of structure grows
    measure = _structure_change if name == "frost" else _mean_abs_change
    assert measure(s5, x) > measure(s1, x), f"{name}: severity 5 should change images more than 1"


def test_gaussian_noise_uses_hendrycks_sigma():
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    for sev, sigma in ((1, 0.04), (5, 0.10)):
        d = (corrupt(x, "gaussian_noise", sev, seed=0).float() - 128) / 255
        assert abs(float(d.std()) - sigma) < 0.01 * sigma + 0.005


def test_contrast_is_exact():
    x = _smooth_images(4)
    y = corrupt(x, "contrast", 5, seed=0).float() / 255
    xf = x.float() / 255
    m = xf.mean(dim=(2, 3), keepdim=True)
    ref = ((xf - m) * 0.15 + m).clamp(0, 1)
    assert (y - ref).abs().max() <= 1 / 255 + 1e-6


def test_rgb_then_gray():
    x = _smooth_images(4)
    g = corrupt(x, "fog", 2, seed=0, to_gray=True)
    assert g.shape == (4, 1, 32, 32) and g.dtype == torch.uint8
    rgb = corrupt(x, "fog", 2, seed=0)
    assert torch.equal(g, rgb.float().mean(1, keepdim=True).round().to(torch.uint8))


def test_bad_input_is_rejected():
    x = _smooth_images(2)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.float(), "fog", 1)

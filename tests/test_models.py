"""ResNets: shapes, tap points, features() vs hooks, blur front end, normalisation, registry."""

from __future__ import annotations

import copy

import pytest
import torch

from neuroreg.config import ConfigError
from neuroreg.models import (
    GaussianBlur,
    available_models,
    create_model,
    gaussian_kernel1d,
    register_model,
    tap_points,
)

EXPECTED_TAPS = {
    "resnet18": ["conv1", "conv5", "conv9", "conv13", "conv17"],
    "resnet34": ["conv1", "conv7", "conv15", "conv27", "conv33"],
}


def test_registry_lists_models_and_taps():
    assert {"resnet18", "resnet34"} <= set(available_models())
    for name, taps in EXPECTED_TAPS.items():
        assert tap_points(name) == taps
        torch.manual_seed(0)
        assert create_model(name, num_classes=3, width=4).tap_names == taps


def test_registry_rejects_unknown_name():
    with pytest.raises(ConfigError, match="model.name.*resnet18"):
        create_model("resnet19", num_classes=10)
    with pytest.raises(ConfigError, match="model.name"):
        tap_points("vgg")


def test_register_model_adds_a_factory_and_refuses_duplicates():
    @register_model(taps=["conv1"], name="_tiny_test_model")
    def _tiny(**kwargs):
        return torch.nn.Linear(1, kwargs["num_classes"])

    assert "_tiny_test_model" in available_models()
    assert tap_points("_tiny_test_model") == ["conv1"]
    assert create_model("_tiny_test_model", num_classes=7).out_features == 7
    with pytest.raises(ValueError, match="already registered"):
        register_model(taps=["conv1"], name="_tiny_test_model")(_tiny)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.parametrize("stem", ["3x3", "7x7"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_output_and_tap_shapes(name, stem, in_chans):
    torch.manual_seed(0)
    width = 8 if name == "resnet18" else 4
    model = create_model(name, num_classes=10, in_chans=in_chans, width=width, stem=stem).eval()
    x = torch.rand(2, in_chans, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        feats = model.features(x, model.tap_names)
    assert model.conv1.kernel_size == ((3, 3) if stem == "3x3" else (7, 7))
    expected = [(width, 16), (width, 16), (2 * width, 8), (4 * width, 4), (8 * width, 2)]
    for tap, (c, s) in zip(model.tap_names, expected, strict=True):
        assert feats[tap].shape == (2, c, s, s), tap


def test_features_path_accepts_any_input_size():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=4).eval()
    with torch.no_grad():
        f = model.features(torch.rand(1, 1, 13, 21), ["conv17"])["conv17"]
        logits = model(torch.rand(1, 1, 13, 21))
    assert f.shape == (1, 32, 2, 3)
    assert logits.shape == (1, 10)


def test_width_multiplier_scales_channels():
    torch.manual_seed(0)
    m16 = create_model("resnet18", num_classes=10, width=16)
    assert [m16.layer1[0].conv1.out_channels, m16.layer2[0].conv1.out_channels] == [16, 32]
    assert [m16.layer3[0].conv1.out_channels, m16.layer4[0].conv1.out_channels] == [64, 128]
    assert m16.fc.in_features == 128


def _hooked_activations(model, x):
    """Reference: outputs of stem ReLU and each stage, captured on the full forward."""
    captured = {}
    modules = {
        "stage1": model.layer1,
        "stage2": model.layer2,
        "stage3": model.layer3,
        "stage4": model.layer4,
    }
    handles = [
        m.register_forward_hook(lambda _m, _i, o, k=k: captured.__setitem__(k, o))
        for k, m in modules.items()
    ]
    # The stem has no module boundary after its ReLU: the input of layer1 is its output.
    handles.append(
        model.layer1.register_forward_pre_hook(lambda _m, i: captured.__setitem__("stem", i[0]))
    )
    with torch.no_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    return logits, [captured[k] for k in ("stem", "stage1", "stage2", "stage3", "stage4")]


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_features_equal_hooked_intermediate_activations(name):
    torch.manual_seed(1)
    model = create_model(name, num_classes=5, in_chans=1, width=4, blur_sigma=0.8)
    # Train-mode BN would change running stats between calls; eval makes both paths comparable.
    model.eval()
    x = torch.rand(3, 1, 16, 16)
    _, ref = _hooked_activations(model, x)
    with torch.no_grad():
        feats = model.features(x, list(reversed(model.tap_names)))
    assert list(feats) == list(reversed(model.tap_names))  # order of the request kept
    for tap, r in zip(model.tap_names, ref, strict=True):
        torch.testing.assert_close(feats[tap], r, rtol=0, atol=0)


def test_features_stop_at_the_deepest_requested_tap():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=4).eval()
    called = []
    for n in ("layer1", "layer2", "layer3", "layer4", "fc"):
        getattr(model, n).register_forward_hook(lambda *_a, n=n: called.append(n))
    with torch.no_grad():
        out = model.features(torch.rand(1, 1, 8, 8), ["conv1", "conv9"])
    assert set(out) == {"conv1", "conv9"}
    assert called == ["layer1", "layer2"]
    with pytest.raises(ValueError, match="conv2"):
        model.features(torch.rand(1, 1, 8, 8), ["conv2"])


def test_init_is_deterministic_given_the_global_seed():
    torch.manual_seed(123)
    a = create_model("resnet18", num_classes=10, width=4)
    torch.manual_seed(123)
    b = create_model("resnet18", num_classes=10, width=4)
    torch.manual_seed(124)
    c = create_model("resnet18", num_classes=10, width=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_normalisation_lives_inside_the_model():
    torch.manual_seed(0)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    model = create_model("resnet18", num_classes=10, in_chans=3, width=4, mean=mean, std=std).eval()
    core = copy.deepcopy(model)
    core.mean.fill_(0.0)
    core.std.fill_(1.0)
    x = torch.rand(2, 3, 8, 8)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), core((x - m) / s))
        # ... and normalisation actually changes the output (the test can fail).
        assert not torch.allclose(model(x), core(x))
    # Defaults 0.5 / 0.25; the constants travel in the state_dict.
    default = create_model("resnet18", num_classes=10, in_chans=1, width=4)
    assert default.mean.flatten().tolist() == [0.5] and default.std.flatten().tolist() == [0.25]
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    with pytest.raises(ConfigError, match="mean"):
        create_model("resnet18", num_classes=10, in_chans=3, width=4, mean=[0.5, 0.5])


def test_blur_zero_sigma_adds_nothing():
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=10, width=4)
    assert plain.blur is None
    torch.manual_seed(0)
    blurred = create_model("resnet18", num_classes=10, width=4, blur_sigma=1.5)
    assert isinstance(blurred.blur, GaussianBlur)
    # The kernel is derived from sigma, not stored: checkpoints of both load alike.
    assert set(plain.state_dict()) == set(blurred.state_dict())
    assert not any(p.requires_grad for p in blurred.blur.parameters())
    with pytest.raises(ConfigError, match="model.blur_sigma"):
        create_model("resnet18", num_classes=10, blur_sigma=-1.0)


def test_blur_preserves_constants_and_removes_high_frequencies():
    blur = GaussianBlur(channels=2, sigma=1.5)
    assert blur.radius == 5
    const = torch.full((1, 2, 12, 12), 0.37)
    torch.testing.assert_close(blur(const), const)
    # A checkerboard is the highest spatial frequency: blur must nearly erase it.
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((yy + xx) % 2).float()[None, None].repeat(1, 2, 1, 1)
    hf = checker - checker.mean()
    out = blur(checker)
    assert ((out - out.mean()) ** 2).sum() < 1e-3 * (hf**2).sum()
    # A smooth ramp (low frequency) keeps most of its energy away from the borders.
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).repeat(1, 2, 16, 1)
    torch.testing.assert_close(blur(ramp)[..., 6:10], ramp[..., 6:10], atol=1e-5, rtol=0)


def test_blur_matches_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    for sigma in (0.5, 1.5):
        k = 2 * int(torch.tensor(3 * sigma).ceil()) + 1
        ref = gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        torch.testing.assert_close(GaussianBlur(3, sigma)(x), ref, atol=1e-5, rtol=0)
    assert torch.isclose(gaussian_kernel1d(1.0).sum(), torch.tensor(1.0))


def test_blur_front_end_runs_before_normalisation():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=4, blur_sigma=1.0).eval()
    x = torch.rand(1, 1, 12, 12)
    expected = (GaussianBlur(1, 1.0)(x) - 0.5) / 0.25
    torch.testing.assert_close(model.preprocess(x), expected)


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="model.stem"):
        create_model("resnet18", num_classes=10, stem="5x5")
    with pytest.raises(ConfigError, match="model.width"):
        create_model("resnet18", num_classes=10, width=0)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=4)
    with pytest.raises(ValueError, match="1 x H x W"):
        model(torch.rand(1, 3, 8, 8))


def test_gradients_reach_the_input_through_blur_and_normalisation():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=4, blur_sigma=1.0)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

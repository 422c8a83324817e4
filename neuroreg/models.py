"""CIFAR-style ResNets with named tap points, behind a small timm-like registry.

A model takes **[0, 1] pixels**: the optional blur front end and the input
normalisation live inside it, so attacks and noise act in pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroreg.errors import ConfigError

__all__ = [
    "BasicBlock",
    "GaussianBlur",
    "ResNet",
    "available_models",
    "create_model",
    "gaussian_kernel1d",
    "register_model",
    "tap_points",
]

_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TAPS: dict[str, list[str]] = {}


def register_model(taps: Sequence[str], name: str | None = None) -> Callable[[_Factory], _Factory]:
    """Register a factory ``fn(num_classes, in_chans, width, stem, blur_sigma, mean, std)``.

    ``taps`` are the tap-point names the model's ``features`` accepts; they are kept
    beside the factory so ``tap_points`` answers without building a model.
    """

    def deco(fn: _Factory) -> _Factory:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        _TAPS[key] = list(taps)
        return fn

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def tap_points(name: str) -> list[str]:
    """Tap-point names of a registered model, shallow to deep."""
    _check_name(name)
    return list(_TAPS[name])


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    width: int = 64,
    stem: str = "3x3",
    blur_sigma: float = 0.0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> nn.Module:
    """Build a registered model; its init is deterministic given torch's global seed."""
    _check_name(name)
    return _REGISTRY[name](
        num_classes=num_classes,
        in_chans=in_chans,
        width=width,
        stem=stem,
        blur_sigma=blur_sigma,
        mean=mean,
        std=std,
    )


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(
            "model.name", f"unknown model {name!r}; choose one of {available_models()}"
        )


# --- blur front end --------------------------------------------------------------


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of radius ceil(3 sigma) (same taps as torchvision's)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


class GaussianBlur(nn.Module):
    """Fixed (non-trainable) Gaussian blur, depthwise, reflect padding.

    Hand-written rather than calling torchvision's ``gaussian_blur`` per batch: the
    kernel is a buffer (moves with ``.to(device)``, built once) and the blur is
    separable (two 1-D passes: 2k instead of k^2 multiply-adds per pixel).
    """

    def __init__(self, channels: int, sigma: float):
        super().__init__()
        if sigma <= 0:
            raise ConfigError("model.blur_sigma", f"GaussianBlur needs sigma > 0, got {sigma}")
        self.channels = channels
        self.sigma = float(sigma)
        k = gaussian_kernel1d(sigma)
        self.radius = (k.numel() - 1) // 2
        # Derived from sigma, so not part of the state_dict.
        self.register_buffer("kernel", k, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        r = self.radius
        # Reflect padding needs pad < size; tiny inputs fall back to edge replication.
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
        kx = self.kernel.to(x.dtype).view(1, 1, 1, -1).expand(self.channels, 1, 1, -1)
        ky = self.kernel.to(x.dtype).view(1, 1, -1, 1).expand(self.channels, 1, -1, 1)
        x = F.conv2d(x, kx, groups=self.channels)
        return F.conv2d(x, ky, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, sigma={self.sigma}, radius={self.radius}"


# --- ResNet ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _per_channel(
    value: Sequence[float] | float | None, default: float, in_chans: int, field: str
) -> Tensor:
    if value is None:
        vals = [default] * in_chans
    elif isinstance(value, (int, float)):
        vals = [float(value)] * in_chans
    else:
        vals = [float(v) for v in value]
        if len(vals) == 1:
            vals = vals * in_chans
    if len(vals) != in_chans:
        raise ConfigError(field, f"needs 1 or in_chans={in_chans} values, got {len(vals)}")
    if field == "std" and not all(0 < v < math.inf for v in vals):
        # Checked on the Python values, so a model can be built on the "meta" device.
        raise ConfigError("std", "normalisation std must be finite and > 0")
    return torch.tensor(vals, dtype=torch.float32).view(1, in_chans, 1, 1)


class ResNet(nn.Module):
    """CIFAR-style ResNet: stride-1 stem, no max-pool, four stages, avg pool + linear head.

    Tap points are the stem output (after BN + ReLU) and the end of each stage, named
    ``conv<i>`` with i counting convolutions along the main path (stem = 1, two per block).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        in_chans: int = 1,
        width: int = 64,
        stem: str = "3x3",
        blur_sigma: float = 0.0,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError("num_classes", f"must be a positive integer, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError("in_chans", f"must be a positive integer, got {in_chans!r}")
        if not isinstance(width, int) or width < 1:
            raise ConfigError("model.width", f"must be a positive integer, got {width!r}")
        if stem not in ("3x3", "7x7"):
            raise ConfigError("model.stem", f"must be '3x3' or '7x7', got {stem!r}")
        if not 0 <= blur_sigma < math.inf:
            raise ConfigError("model.blur_sigma", f"must be a finite number >= 0 (0 = no blur), got {blur_sigma}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.width = width
        self.stem_kind = stem

        # sigma 0 adds no module at all (no cost, no state_dict keys).
        self.blur: nn.Module | None = GaussianBlur(in_chans, blur_sigma) if blur_sigma > 0 else None
        # Persistent, so a checkpoint restores the data set's constants.
        self.register_buffer("mean", _per_channel(mean, 0.5, in_chans, "mean"))
        self.register_buffer("std", _per_channel(std, 0.25, in_chans, "std"))

        k = 3 if stem == "3x3" else 7
        self.conv1 = nn.Conv2d(in_chans, width, k, stride=1, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width, 8 * width]
        layers = []
        in_planes = width
        for i, (p, n) in enumerate(zip(planes, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(n):
                stage.append(BasicBlock(in_planes, p, stride if b == 0 else 1))
                in_planes = p
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(in_planes, num_classes)

        self.tap_names: list[str] = _taps(blocks)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def preprocess(self, x: Tensor) -> Tensor:
        """[0, 1] pixels -> network input: blur (if any), then normalisation."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected N x {self.in_chans} x H x W pixels, got shape {tuple(x.shape)}"
            )
        if self.blur is not None:
            x = self.blur(x)
        return (x - self.mean) / self.std

    def _stages(self) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            return F.relu(self.bn1(self.conv1(x)))

        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, x: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Activations at the named tap points; runs only as deep as the deepest one."""
        names = list(self.tap_names if names is None else names)
        bad = [n for n in names if n not in self.tap_names]
        if bad:
            raise ValueError(f"unknown tap point(s) {bad}; choose from {self.tap_names}")
        if not names:
            return {}
        wanted = set(names)
        deepest = max(self.tap_names.index(n) for n in names)
        out: dict[str, Tensor] = {}
        h = self.preprocess(x)
        for tap, stage in zip(self.tap_names[: deepest + 1], self._stages(), strict=False):
            h = stage(h)
            if tap in wanted:
                out[tap] = h
        return {n: out[n] for n in names}

    def forward(self, x: Tensor) -> Tensor:
        h = self.preprocess(x)
        for stage in self._stages():
            h = stage(h)
        return self._classify(h)

    def forward_with_features(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the activations at the named tap points from one pass (regularizer.pairing:
        shared, whose similarity pairs come from the classification batch itself)."""
        bad = [n for n in names if n not in self.tap_names]
        if bad:
            raise ValueError(f"unknown tap point(s) {bad}; choose from {self.tap_names}")
        wanted = set(names)
        out: dict[str, Tensor] = {}
        h = self.preprocess(x)
        for tap, stage in zip(self.tap_names, self._stages(), strict=True):
            h = stage(h)
            if tap in wanted:
                out[tap] = h
        return self._classify(h), {n: out[n] for n in names}

    def _classify(self, h: Tensor) -> Tensor:
        if h.is_cuda and torch.are_deterministic_algorithms_enabled():
            # adaptive_avg_pool2d has no deterministic CUDA backward (train.deterministic would
            # raise at the first step); the mean is the same pooling. CPU keeps the original op,
            # so CPU runs stay bit-identical.
            h = h.mean(dim=(2, 3))
        else:
            h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(h)


RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)


def _taps(blocks: Sequence[int]) -> list[str]:
    """Stem + stage ends, numbered by convs along the main path (stem 1, two per block)."""
    ends = [1]
    for n in blocks:
        ends.append(ends[-1] + 2 * n)
    return [f"conv{i}" for i in ends]


@register_model(taps=_taps(RESNET18_BLOCKS))
def resnet18(**kwargs) -> ResNet:
    return ResNet(RESNET18_BLOCKS, **kwargs)


@register_model(taps=_taps(RESNET34_BLOCKS))
def resnet34(**kwargs) -> ResNet:
    return ResNet(RESNET34_BLOCKS, **kwargs)

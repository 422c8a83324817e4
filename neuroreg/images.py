"""Images as tensors: the labelled uint8 set, pixel conversions and batch augmentation.

A leaf module (torch only): the data sources, the corruptions and the evaluation use
these helpers without importing the config tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from neuroreg.errors import ConfigError


@dataclass
class ImageData:
    """A labelled image set: ``images`` uint8 N x C x H x W, ``labels`` int64 N."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of length {self.images.shape[0]}, got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, index: Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index], list(self.classes))


@dataclass
class Splits:
    train: ImageData
    val: ImageData
    test: ImageData


# --- pixel helpers -------------------------------------------------------------------


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def to_grayscale(images: Tensor) -> Tensor:
    """uint8 N x C x H x W -> N x 1 x H x W, the mean over colour channels (METHOD.md)."""
    if images.shape[1] == 1:
        return images
    return to_uint8(images.to(torch.float32).mean(dim=1, keepdim=True))


def resize_uint8(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear resize with antialias of a uint8 batch to size x size, in chunks."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].to(torch.float32)
        y = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[s : s + chunk] = to_uint8(y)
    return out


# --- augmentation ----------------------------------------------------------------------


def augment_batch(
    x: Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (reflect padding) + horizontal flip, vectorised over the batch.

    Random draws, in this order from ``generator`` (CPU): row offsets ``randint(0, 2p+1, (N,))``,
    column offsets (same), then flips ``rand(N) < 0.5`` (only when ``hflip``).
    The flip is folded into the column gather index, so one advanced-indexing gather
    does both.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects N x C x H x W, got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if padding < 0:
        raise ConfigError("data.crop_padding", "must be >= 0")
    if padding >= min(h, w):
        raise ConfigError(
            "data.crop_padding",
            f"reflect padding {padding} must be smaller than the image ({h}x{w})",
        )
    if n == 0:
        return x
    p = padding
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    cols = torch.arange(w)
    col_idx = dx[:, None] + cols[None, :]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        col_idx = torch.where(flip[:, None], dx[:, None] + cols.flip(0)[None, :], col_idx)
    row_idx = dy[:, None] + torch.arange(h)[None, :]
    padded = F.pad(x, (p, p, p, p), mode="reflect") if p > 0 else x
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        row_idx.to(dev, non_blocking=True)[:, None, :, None],
        col_idx.to(dev, non_blocking=True)[:, None, None, :],
    ]

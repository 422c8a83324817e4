"""Targets of ``regularizer.pairing: shared``: pair similarities of the classification
batch's own images, computed on the fly as the network sees them (neuroreg.targets builds
them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neuroreg.images import to_float
from neuroreg.similarity import pair_cosines
from neuroreg.target_kinds import ShuffleTarget, Target


@dataclass
class SharedImages:
    """What a shared-pairing target is built from: the classification training split (uint8)
    and the positions in it of the N regularization images (the first n of a fixed
    permutation), over which pixels and features are centred, as METHOD.md defines."""

    train: torch.Tensor
    reg_index: torch.Tensor

    def reg_images(self) -> torch.Tensor:
        return self.train[self.reg_index.to(self.train.device)]


class BatchTarget:
    """Pair similarities of images the trainer holds (``regularizer.pairing: shared``).

    ``batch_pairs(x, index, i, j)``: ``x`` are the classification batch's images exactly as
    the network's input (float [0, 1], after augmentation; the model's own blur and
    normalisation come after), ``index`` their positions in the training split (a device
    tensor, or None where the target does not read it), and (i, j) pairs of rows of ``x``.
    Always fp32, whatever autocast the caller is in.
    """

    def batch_pairs(self, x: torch.Tensor, index: torch.Tensor | None, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> BatchTarget:
        return self

    def incomplete(self) -> torch.Tensor | None:
        return None


def grey_vectors(x: torch.Tensor) -> torch.Tensor:
    """N x D grey pixel vectors of [0, 1] images: colour averaged, flattened (METHOD.md's pixel)."""
    return x.float().mean(dim=1).flatten(1)


def _threshold(v: torch.Tensor, th: float) -> torch.Tensor:
    return torch.where(v > th, 1.0, torch.where(v < -th, -1.0, 0.0)).to(v.dtype)


class ImageBatchTarget(BatchTarget):
    """Cosine similarity of the batch images' centred embeddings (grey pixels, or a frozen
    network's features), thresholded at ``th`` for pixel_th.

    Centred by the embedding's mean over the N regularization images, fixed when built, as
    in pairing: pairs: a batch's own mean (64 images) would be a noisy centre and would make
    a pair's target depend on which other images share its batch. With data.augment the
    batch images are shifted and flipped copies, whose mean is a slightly blurred version of
    that centre; the target still describes the images the network sees.
    """

    def __init__(self, embed: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, th: float | None = None):
        self.embed, self.mean, self.th = embed, mean, th

    def batch_pairs(self, x, index, i, j):
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            z = F.normalize(self.embed(x) - self.mean, dim=1, eps=1e-12)
            v = pair_cosines(z, i, j).clamp(-1.0, 1.0)
            if self.th is None:
                return v
            return torch.where(i == j, torch.ones_like(v), _threshold(v, self.th))

    def to(self, device):
        return ImageBatchTarget(self.embed, self.mean.to(device), self.th)


class PixelIndexTarget(Target):
    """Pixel similarity of training images by index, computed per pair from the stored uint8
    images and the regularization set's centre (the base a shared shuffle permutes: its pairs
    are pairs of the whole training split)."""

    def __init__(self, images: torch.Tensor, mean: torch.Tensor):
        self.images, self.mean, self.n = images, mean, images.shape[0]

    def _unit(self, k: torch.Tensor) -> torch.Tensor:
        return F.normalize(grey_vectors(to_float(self.images[k])) - self.mean, dim=1, eps=1e-12)

    def pairs(self, i, j):
        i, j = i.to(self.images.device), j.to(self.images.device)
        with torch.no_grad():
            return (self._unit(i) * self._unit(j)).sum(dim=1).clamp(-1.0, 1.0)

    def to(self, device):
        return PixelIndexTarget(self.images.to(device), self.mean.to(device))


class ShuffledBatchTarget(BatchTarget):
    """The shuffle control under pairing: shared: a batch pair's value is the base value of
    another pair of training images, by a fixed seeded permutation of all N(N-1)/2 pairs of the
    training split (so it reads the batch's positions, not its pixels)."""

    def __init__(self, shuffle: ShuffleTarget):
        self.shuffle = shuffle

    def batch_pairs(self, x, index, i, j):
        if index is None:
            raise ValueError("the shuffled target needs the batch images' positions in the training split")
        with torch.no_grad():
            return self.shuffle.pairs(index[i], index[j]).float()

    def incomplete(self):
        return self.shuffle.incomplete()

    def to(self, device):
        return ShuffledBatchTarget(self.shuffle.to(device))


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """Mean grey pixel vector (D, fp32) of uint8 images, accumulated in fp64."""
    return grey_vectors(to_float(images)).double().mean(dim=0).float()


# --- the registry: one entry per target, declaring the regularizer fields it reads ------------

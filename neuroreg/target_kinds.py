"""The kinds of similarity target over the regularization set (METHOD.md section 1): pair
values ``pairs(i, j)`` from unit vectors (cosine, thresholded), a given matrix, or a
shuffle of another target. neuroreg.targets registers and builds them."""

from __future__ import annotations

import torch

from neuroreg.pairperm import FeistelPermutation, pair_from_index, pair_index


class Target:
    """Pair similarities over a regularization set of ``n`` images."""

    n: int

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Target:
        return self

    def incomplete(self) -> torch.Tensor | None:
        """A 0-d bool tensor on the target's device, True once a pair lookup could not be
        completed (read with the trainer's finiteness check); None where that cannot happen."""
        return None

    def matrix(self) -> torch.Tensor:
        """The full N x N matrix (for tests and small N only)."""
        ii, jj = torch.meshgrid(torch.arange(self.n), torch.arange(self.n), indexing="ij")
        return self.pairs(ii.reshape(-1), jj.reshape(-1)).reshape(self.n, self.n)


# --- unit-vector targets --------------------------------------------------------


def centred_unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Centre every column by its mean over rows, then scale every row to unit length."""
    x = x.double()
    x = x - x.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(x, dim=1, eps=eps).float()


def pixel_unit_vectors(images: torch.Tensor) -> torch.Tensor:
    """N x D unit vectors of images (uint8 or [0, 1] float), colour averaged to grey."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = x.mean(dim=1)  # grey
    return centred_unit_rows(x.flatten(1))


class CosineTarget(Target):
    """S = R R^T computed per pair from the unit vectors R (pixel, neural, features)."""

    def __init__(self, unit: torch.Tensor):
        self.unit = unit
        self.n = unit.shape[0]

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        i, j = i.to(self.unit.device), j.to(self.unit.device)
        return (self.unit[i] * self.unit[j]).sum(dim=1).clamp(-1.0, 1.0)

    def to(self, device):
        return CosineTarget(self.unit.to(device))


class ThresholdTarget(Target):
    """Attias et al.: 1 above Th, -1 below -Th, 0 between; diagonal 1."""

    def __init__(self, base: Target, th: float):
        self.base, self.th, self.n = base, th, base.n

    def pairs(self, i, j):
        v = self.base.pairs(i, j)
        out = torch.where(v > self.th, 1.0, torch.where(v < -self.th, -1.0, 0.0)).to(v.dtype)
        return torch.where(i.to(v.device) == j.to(v.device), torch.ones_like(out), out)

    def to(self, device):
        return ThresholdTarget(self.base.to(device), self.th)


class MatrixTarget(Target):
    """A ready N x N matrix handed by the user."""

    def __init__(self, m: torch.Tensor):
        self.m = m
        self.n = m.shape[0]

    def pairs(self, i, j):
        return self.m[i.to(self.m.device), j.to(self.m.device)]

    def to(self, device):
        return MatrixTarget(self.m.to(device))


# --- shuffle control --------------------------------------------------------------


class ShuffleTarget(Target):
    """The base target's off-diagonal values assigned to the wrong pairs.

    A fixed random permutation of the N(N-1)/2 unordered pairs: the value of pair p is
    the base value of pair perm(p). Symmetric by construction (unordered pairs) and keeps
    the multiset of values; the diagonal stays 1. Permuting image indices jointly would
    keep the structure and is no control.

    Everything runs on the indices' device (no host round trip in a training step). Where
    the permutation's walk bound is not exact, ``unfinished`` (a 0-d bool tensor on the
    target's device) turns True once a lookup could not be completed; ``incomplete()``
    hands it to the trainer, which reads it with the finiteness check and stops the run.
    """

    def __init__(self, base: Target, seed: int, perm: FeistelPermutation | None = None,
                 device: torch.device | str = "cpu"):
        self.base, self.n, self.seed = base, base.n, seed
        self.perm = perm or FeistelPermutation(max(1, base.n * (base.n - 1) // 2), seed)
        self.unfinished = None if self.perm.exact else torch.zeros((), dtype=torch.bool, device=device)

    def pairs(self, i, j):
        i, j = i.long(), j.long()
        same = i == j
        k = pair_index(i, torch.where(same, (i + 1) % self.n, j), self.n)
        p, unfinished = self.perm.walk(k)
        if unfinished is not None:
            self.unfinished |= unfinished.to(self.unfinished.device, non_blocking=True)
        a, b = pair_from_index(p, self.n)
        v = self.base.pairs(a, b)
        return torch.where(same.to(v.device), torch.ones_like(v), v)

    def incomplete(self) -> torch.Tensor | None:
        return self.unfinished

    def to(self, device):
        return ShuffleTarget(self.base.to(device), self.seed, self.perm.to(device), device)


# --- neural target ------------------------------------------------------------------

"""A seeded permutation of the N(N-1)/2 unordered pairs of N images (the shuffle control).

The pairs are numbered row by row in the upper triangle (``pair_index`` / ``pair_from_index``);
``FeistelPermutation`` permutes the numbers on the fly on the indices' own device, without a
host sync, so a 1.25e9-pair permutation (N = 50,000) needs no table.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch


def pair_index(i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    """Linear index of the unordered pair {i, j}, i != j, in the upper triangle (row-major)."""
    a, b = torch.minimum(i, j), torch.maximum(i, j)
    return a * n - a * (a + 1) // 2 + (b - a - 1)


def pair_from_index(k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pair_index``: the pair (a < b) with linear index k."""
    kf = k.double()
    t = 2 * n - 1
    a = torch.floor((t - torch.sqrt((t * t - 8 * kf).clamp_min(0))) / 2).long()
    # The float estimate can be off by one near row boundaries; correct it exactly.
    start = a * n - a * (a + 1) // 2
    a = torch.where(start > k, a - 1, a)
    start = a * n - a * (a + 1) // 2
    nxt = start + (n - a - 1)
    a = torch.where(k >= nxt, a + 1, a)
    start = a * n - a * (a + 1) // 2
    b = k - start + a + 1
    return a, b


_MASK32 = 0xFFFFFFFF


EXACT_WALK_MAX = 1 << 24
"""Up to this many pairs (N <= 5,793) the cycle-walking bound is computed exactly, over every
index, when the permutation is made (N = 1,000: 0.1 s on a CPU core; N = 5,000: about 3 s); above it the bound
holds with a failure probability below 2^-40 and a device-side flag catches the rest."""
_WALK_CHUNK = 1 << 22
TABLE_MAX_HALF = 20
"""Round functions are looked up in tables up to this half width (bits of the domain / 2)."""


@functools.lru_cache(maxsize=32)
def _exact_walk_bound(perm: FeistelPermutation) -> int:
    """The most extra Feistel applications any index in [0, m) needs to walk back into [0, m)."""
    worst = 0
    for start in range(0, perm.m, _WALK_CHUNK):
        out = perm._once(torch.arange(start, min(start + _WALK_CHUNK, perm.m), dtype=torch.int64))
        steps = 0
        out = out[out >= perm.m]  # host tensors at construction: this loop is no step's
        while out.numel():
            steps += 1
            out = perm._once(out)
            out = out[out >= perm.m]
        worst = max(worst, steps)
    return worst


def _probable_walk_bound(m: int, domain: int) -> int:
    """Steps t with m * p^t <= 2^-40, p = 1 - m / domain the share of the domain outside [0, m):
    for a random permutation, the chance that any of the m starting indices walks longer."""
    p = 1.0 - m / domain
    return math.ceil((-40 * math.log(2) - math.log(m)) / math.log(p)) if p > 0 else 0


class FeistelPermutation:
    """A seeded bijection of [0, m) evaluated elementwise on int64 tensors.

    Hand-written because the shuffle control permutes N(N-1)/2 off-diagonal pairs:
    1.25e9 of them for N = 50,000, whose torch.randperm alone would take 10 GB. A
    4-round Feistel network on the smallest even bit width >= log2(m), with cycle-walking
    back into [0, m), is a true permutation computed on the fly.

    The walk runs on the indices' own device in a fixed number of steps (``walk_steps``),
    each a ``torch.where``, so a training step never reads a value back to the host (a
    ``while outside.any()`` loop would, once per walking step). The domain 2^bits is below
    4m, so each step leaves an index outside with probability < 3/4; ``walk_steps`` is the
    exact maximum over all m indices up to EXACT_WALK_MAX (``exact``), else a bound that
    holds but with probability 2^-40, and ``walk`` then also returns a device flag telling
    whether any index was still outside (the trainer reads it with the finiteness check).

    Each step is a few dozen tiny kernels, so their launch cost is what a step pays: up to
    a half width of TABLE_MAX_HALF bits (N <= 1.4 million) the round functions are tables
    (2^half int32 values per round, 16 MiB at most) and a round is one gather and one xor
    instead of eleven integer operations. ``to(device)`` moves the tables.
    """

    def __init__(self, m: int, seed: int, rounds: int = 4):
        if m < 1:
            raise ValueError("m must be >= 1")
        self.m = m
        bits = max(2, math.ceil(math.log2(max(m, 2))))
        bits += bits % 2
        self.half = bits // 2
        self.half_mask = (1 << self.half) - 1
        rng = np.random.default_rng(seed)
        self.keys = [int(k) for k in rng.integers(1, 2**31 - 1, size=rounds)]
        self.tables: list[torch.Tensor] | None = None
        if self.half <= TABLE_MAX_HALF:
            domain = torch.arange(1 << self.half, dtype=torch.int64)
            self.tables = [self._round(domain, key).to(torch.int32) for key in self.keys]
        self.exact = m <= EXACT_WALK_MAX
        self.walk_steps = _exact_walk_bound(self) if self.exact else _probable_walk_bound(m, 1 << bits)

    def __hash__(self) -> int:  # the walk bound's cache key: what the permutation is made of
        return hash((self.m, self.half, tuple(self.keys)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeistelPermutation) and (self.m, self.half, self.keys) == (
            other.m, other.half, other.keys)

    def _round(self, r: torch.Tensor, key: int) -> torch.Tensor:
        # A multiply-xorshift mix kept within 32 bits so int64 products never overflow.
        x = (r ^ key) & _MASK32
        x = (x * 0x45D9F3B) & _MASK32
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & _MASK32
        x = x ^ (x >> 16)
        return x & self.half_mask

    def _once(self, k: torch.Tensor) -> torch.Tensor:
        left, right = k >> self.half, k & self.half_mask
        for r, key in enumerate(self.keys):
            mixed = self.tables[r][right] if self.tables is not None else self._round(right, key)
            left, right = right, left ^ mixed
        return (left << self.half) | right

    def to(self, device: torch.device | str) -> FeistelPermutation:
        """The same permutation with its round tables on ``device``."""
        if self.tables is None:
            return self
        moved = copy.copy(self)
        moved.tables = [t.to(device) for t in self.tables]
        return moved

    def walk(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """perm(k) for indices k in [0, m), on k's device without a host sync, and (where the
        bound is not exact) a 0-d bool tensor: True if some index had not walked back into
        [0, m) (its value then is k itself, a valid index, and must not be used)."""
        out = self._once(k)
        for _ in range(self.walk_steps):  # a fixed count: no value is read back
            out = torch.where(out >= self.m, self._once(out), out)
        if self.exact:
            return out, None
        outside = out >= self.m
        return torch.where(outside, k, out), outside.any()

    def __call__(self, k: torch.Tensor) -> torch.Tensor:
        out, unfinished = self.walk(k)
        if unfinished is not None and bool(unfinished):  # a sync, but __call__ is no step's
            raise RuntimeError(f"the Feistel permutation of {self.m} needs more than {self.walk_steps} "
                               "cycle-walking steps for some index")
        return out

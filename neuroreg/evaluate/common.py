"""Small helpers shared by the evaluation suites: batched prediction, progress bars, subsets."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """tqdm on stderr, silent when disabled or when stderr is no terminal (logs, CI)."""
    from tqdm.auto import tqdm

    disable = not enabled or not sys.stderr.isatty()
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, leave=False))


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """Predicted labels (cpu int64) of images (float in [0, 1] or uint8), in batches."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        if xb.dtype == torch.uint8:
            xb = xb.float() / 255.0  # per batch, so a uint8 set is never held as float
        out.append(model(xb).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> float:
    if len(x) == 0:
        return float("nan")
    return int((predict(model, x, batch_size, device) == y.cpu()).sum()) / len(x)


def subset_index(n_total: int, n: int | None, seed: int) -> Tensor:
    """A deterministic subset of ``n`` indices (sorted), or all when n is None or >= n_total."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[:n].sort().values

"""Similarity loss (METHOD.md section 1)."""

from __future__ import annotations

import torch


def soft_atanh(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """d(x) = log(1 + x + eps) - log(1 - x + eps): 2 atanh(x) for small eps, finite at +-1.

    This is the reference code's convention (no factor 1/2, no clipping), so the
    published alpha values transfer.
    """
    return torch.log1p(x + eps) - torch.log1p(-x + eps)


def similarity_loss(
    s_cnn: torch.Tensor, s_target: torch.Tensor, kind: str = "atanh", eps: float = 1e-5
) -> torch.Tensor:
    """Mean over pairs of (d(S_cnn) - d(S_target))^2, or of (S_cnn - S_target)^2 for 'mse'."""
    s_target = s_target.to(s_cnn.dtype)
    if kind == "atanh":
        return (soft_atanh(s_cnn, eps) - soft_atanh(s_target, eps)).pow(2).mean()
    if kind == "mse":
        return (s_cnn - s_target).pow(2).mean()
    raise ValueError(f"unknown similarity loss {kind!r}; use 'atanh' or 'mse'")


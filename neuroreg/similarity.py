"""Model similarity S_cnn (METHOD.md section 1).

Per layer k: centre the feature map by a per-channel mean mu_k, flatten, cosine
similarity between images; S_cnn = sum_k softmax(w)_k s_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def channel_mean(f: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over images and positions of an N x C x ... feature map."""
    dims = [0] + list(range(2, f.dim()))
    return f.mean(dim=dims)


def unit_vectors(f: torch.Tensor, mu: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Centre ``f`` (N x C x ...) by the per-channel mean ``mu`` (C), flatten, unit-normalise."""
    shape = (1, -1) + (1,) * (f.dim() - 2)
    z = (f - mu.reshape(shape)).flatten(1)
    return F.normalize(z, dim=1, eps=eps)


def pair_cosines(z: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of rows i and j of the unit vectors z.

    With more pairs than images (pairing=batch: K(K-1)/2 pairs of K images) one K x K Gram
    matmul is far cheaper than gathering two P x D copies; with few pairs the gather is.
    """
    if len(i) > z.shape[0]:
        return (z @ z.T)[i, j]
    return (z[i] * z[j]).sum(dim=1)


def upper_pairs(k: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All K(K-1)/2 index pairs (i < j) among K items."""
    idx = torch.triu_indices(k, k, offset=1, device=device)
    return idx[0], idx[1]


class SimilarityHead(nn.Module):
    """Layer weights and running channel means of the similarity path.

    Holds no part of the CNN: ``forward`` takes the tap feature maps of a pair batch.
    ``centering='running'`` follows the reference code: an EMA (factor ``beta``) of the
    per-channel batch mean, updated without gradient before it is used; it starts at
    the first batch's mean rather than at zero so early steps are not biased.
    """

    def __init__(
        self,
        layers: Sequence[str],
        channels: Sequence[int],
        centering: str = "running",
        beta: float = 0.9,
        train_weights: bool = True,
    ):
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError("one channel count per layer expected")
        self.layers = list(layers)
        self.centering = centering
        self.beta = beta
        self.layer_logits = nn.Parameter(torch.zeros(len(layers)), requires_grad=train_weights)
        for name, c in zip(self.layers, channels):
            self.register_buffer(f"mu_{name}", torch.zeros(c))
        self.register_buffer("mu_initialised", torch.zeros((), dtype=torch.bool))

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def running_mean(self, name: str) -> torch.Tensor:
        return getattr(self, f"mu_{name}")

    def _centre(self, name: str, f: torch.Tensor, update: bool) -> torch.Tensor:
        if self.centering == "batch":
            return channel_mean(f)
        mu = self.running_mean(name)
        if not update and not bool(self.mu_initialised):
            return channel_mean(f.detach())  # nothing seen yet: this batch is the best estimate
        if update:
            with torch.no_grad():
                m = channel_mean(f.detach())
                # torch.where instead of `if bool(mu_initialised)`: no host sync per step on CUDA.
                mu.copy_(torch.where(self.mu_initialised, mu * self.beta + m * (1 - self.beta), m))
        return mu

    def layer_unit_vectors(self, feats: dict[str, torch.Tensor], update: bool = True) -> list[torch.Tensor]:
        out = [unit_vectors(feats[n], self._centre(n, feats[n], update)) for n in self.layers]
        if update and self.centering == "running":
            self.mu_initialised.fill_(True)
        return out

    def forward(
        self,
        feats: dict[str, torch.Tensor],
        i: torch.Tensor,
        j: torch.Tensor,
        update: bool = True,
    ) -> torch.Tensor:
        """S_cnn for the image pairs (i, j) of the batch whose tap features are ``feats``."""
        zs = self.layer_unit_vectors(feats, update=update)
        s = torch.stack([pair_cosines(z, i, j) for z in zs], dim=1)  # P x L
        return s @ self.layer_weights()

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

    def _centre(self, name: str, f: torch.Tensor, update: bool, mean: torch.Tensor | None = None) -> torch.Tensor:
        """The per-channel centre of ``f``; ``mean``: ``channel_mean(f)`` when the caller has it."""
        if self.centering == "batch":
            return channel_mean(f) if mean is None else mean
        mu = self.running_mean(name)
        if not update and not bool(self.mu_initialised):
            # nothing seen yet: this batch is the best estimate
            return channel_mean(f.detach()) if mean is None else mean.detach()
        if update:
            with torch.no_grad():
                m = channel_mean(f.detach()) if mean is None else mean.detach()
                # torch.where instead of `if bool(mu_initialised)`: no host sync per step on CUDA.
                mu.copy_(torch.where(self.mu_initialised, mu * self.beta + m * (1 - self.beta), m))
        return mu

    def gram_cosines(self, name: str, f: torch.Tensor, update: bool = True) -> torch.Tensor:
        """All N x N cosines of the centred feature maps of layer ``name``, from one Gram matmul.

        (f_i - mu).(f_j - mu) = f_i.f_j - mu.s_i - mu.s_j + HW |mu|^2, with s_i the channel
        sums of image i: the same numbers as ``unit_vectors`` up to rounding (post-ReLU
        features have |f|^2 / |f - mu|^2 of about 1.5, so the cancellation costs a few ulps),
        without materialising the centred and normalised N x D copies, whose elementwise
        passes forward and backward cost more than the convolutions of a narrow network.
        """
        n, c = f.shape[:2]
        hw = f[0, 0].numel()
        flat = _flat(f)
        if self.centering == "batch":  # mu is a function of f: autograd through the sums
            sums = f.sum(dim=tuple(range(2, f.dim())))  # N x C
            mu = self._centre(name, f, update, mean=sums.sum(dim=0) / (n * hw))
            a = sums @ mu
            g = _Gram.apply(flat) - a[:, None] - a[None, :] + hw * (mu @ mu)
            norm = g.diagonal().clamp_min(1e-24).sqrt().clamp_min(1e-12)
            return g / (norm[:, None] * norm[None, :])
        with torch.no_grad():  # a running mean is a constant of this step
            sums = f.detach().sum(dim=tuple(range(2, f.dim())))
            mu = self._centre(name, f, update, mean=sums.sum(dim=0) / (n * hw))
            # mu repeated along the flat rows, in their order (channels fastest in channels_last);
            # always a copy: a view of the running buffer would change under the saved tensor
            m = mu.repeat(hw) if _is_nhwc(f) else mu.repeat_interleave(hw, output_size=c * hw)
        # fp32 even inside an autocast region: the centring cancels large terms (METHOD.md)
        with torch.autocast(f.device.type, enabled=False):
            return _CentredCosines.apply(flat.float(), m.float(), (sums @ mu).float(), (hw * (mu @ mu)).float())

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
        """S_cnn for the image pairs (i, j) of the batch whose tap features are ``feats``.

        More pairs than images (pairing batch or shared): every pair's cosine from one Gram
        matmul per layer; few pairs (the papers' 16 pairs of 32 images): unit vectors
        gathered per pair."""
        n = next(iter(feats.values())).shape[0]
        if len(i) > n:
            # The layers' N x N cosines weighted first, then one gather of the pairs.
            w = self.layer_weights()
            c = sum(w[k] * self.gram_cosines(name, feats[name], update) for k, name in enumerate(self.layers))
            if update and self.centering == "running":
                self.mu_initialised.fill_(True)
            return c[i, j]
        else:
            zs = self.layer_unit_vectors(feats, update=update)
            s = torch.stack([pair_cosines(z, i, j) for z in zs], dim=1)  # P x L
        return s @ self.layer_weights()


class _CentredCosines(torch.autograd.Function):
    """Cosines of the rows of X centred by the constant row m, from the Gram matrix:
    G = X X^T - a 1^T - 1 a^T + |m|^2 with a = X m, cos = G / sqrt(diag G diag G^T).

    Written out, not left to autograd, because the step is what pairing=shared costs over a
    baseline step: its backward is one matmul and one rank-one update in place,
    dX = S X - (S 1) m^T with S = dG + dG^T, where autograd would also run the sums' backward
    (a broadcast add over N x D) and a dozen small N x N operations per layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, a: torch.Tensor, mm: torch.Tensor) -> torch.Tensor:
        g = torch.addmm(mm - a[:, None] - a[None, :], x, x.T)
        d = g.diagonal()
        inv = d.clamp_min(1e-24).rsqrt().clamp_max(1e12)  # = 1 / max(|x_i - m|, 1e-12)
        cos = g * inv[:, None] * inv[None, :]
        # where the norm was clamped, it is a constant (no gradient through it), as autograd has it
        ctx.save_for_backward(x, m, inv, cos, torch.where(d > 1e-24, 0.5 / d, torch.zeros_like(d)))
        return cos

    @staticmethod
    def backward(ctx, dcos: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, m, inv, cos, half_inv_d = ctx.saved_tensors
        dg = dcos * inv[:, None] * inv[None, :]
        # through the norms: d cos_ij / d G_ii = -cos_ij / (2 G_ii)
        dc = dcos * cos
        dg.diagonal().sub_((dc.sum(dim=1) + dc.sum(dim=0)) * half_inv_d)
        sym = dg + dg.T
        dx = sym @ x
        dx.addr_(sym.sum(dim=1), m, alpha=-1)
        return dx, None, None, None


class _Gram(torch.autograd.Function):
    """X X^T whose backward is one matmul, (dG + dG^T) X, where autograd's mm backward
    would run two (dG X and X^T dG). For centering: batch, whose mean depends on X; the
    running centring takes _CentredCosines."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def _is_nhwc(f: torch.Tensor) -> bool:
    return f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()


def _flat(f: torch.Tensor) -> torch.Tensor:
    """N x D rows of a feature map, a view in its own layout (channels_last: NHWC order). A
    cosine does not depend on the order of the D entries, only on both rows using the same."""
    if _is_nhwc(f):
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1)
    return f.reshape(f.shape[0], -1)

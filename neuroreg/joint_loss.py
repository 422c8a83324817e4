"""The joint loss of one optimizer step, L = L_task + alpha * L_sim (METHOD.md section 1),
and the pairs it is computed on: random pairs of the regularization set (``pairs``), or pairs
of the classification batch itself (``shared``); and the fixed-pair similarity loss the
validation reports."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neuroreg.config import RunConfig
from neuroreg.data import to_float
from neuroreg.loss import similarity_loss
from neuroreg.pairperm import pair_from_index
from neuroreg.precision import FP32, Precision
from neuroreg.similarity import SimilarityHead, upper_pairs
from neuroreg.targets import BatchTarget, Target


def sample_pairs(
    cfg: RunConfig, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images to forward and the pairs among them: (image indices, i, j) with i, j into the batch.

    pairing=pairs: P random pairs of distinct images (2P images forwarded, P pairs);
    pairing=batch: K distinct images, all K(K-1)/2 pairs (K forwarded). The batch form
    gets far more pairs per forward pass, but its pairs share images, so they are
    correlated and the per-step gradient is not that of K(K-1)/2 independent pairs.
    """
    r = cfg.regularizer
    if r.pairing == "pairs":
        a = torch.randint(0, n, (r.n_pairs,), generator=gen)
        b = (a + torch.randint(1, n, (r.n_pairs,), generator=gen)) % n  # b != a
        idx = torch.cat([a, b])
        ar = torch.arange(r.n_pairs)
        return idx, ar, ar + r.n_pairs
    k = min(r.batch_k, n)
    idx = torch.randperm(n, generator=gen)[:k]
    i, j = upper_pairs(k)
    return idx, i, j


def shared_pairs(
    b: int, n_pairs: int | None, gen: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i < j) among the b images of a classification batch (pairing=shared): all
    b(b-1)/2, or ``n_pairs`` of them without replacement, drawn on the CPU generator (the
    same pairs on every device, exact on resume) and copied without waiting on the device."""
    total = b * (b - 1) // 2
    if n_pairs is None or n_pairs >= total:
        return upper_pairs(b, device)
    k = torch.randperm(total, generator=gen)[:n_pairs]
    i, j = pair_from_index(k, b)
    return i.to(device, non_blocking=True), j.to(device, non_blocking=True)


def joint_loss(
    model: nn.Module,
    head: SimilarityHead | None,
    target: Target | None,
    cfg: RunConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    x_reg: torch.Tensor | None,
    gen_pairs: torch.Generator,
    precision: Precision = FP32,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    index: torch.Tensor | None = None,
    forward_taps: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One step's loss: (total, task, similarity, logits, pairs used).

    Without a head (alpha = 0 or target = none) no pair batch is drawn or forwarded.
    The pair images go through the CNN only as far as the deepest selected layer; with
    pairing=shared there are none: the pairs are pairs of ``x`` (positions ``index`` in the
    training split), their tap features come from the classification pass itself.
    Only the CNN runs under ``precision``'s autocast: its tap features are cast back to
    fp32 before centring and cosines, and both losses are computed in fp32.
    ``forward`` replaces ``model`` for the classification pass (a compiled model);
    ``forward_taps`` replaces ``model.forward_with_features`` for pairing=shared.
    """
    reg = cfg.regularizer
    if head is not None and reg.pairing == "shared":
        return _shared_loss(model, head, target, cfg, x, y, gen_pairs, precision, index, forward_taps)
    with precision.autocast():
        logits = (model if forward is None else forward)(x)
    loss_task = F.cross_entropy(logits.float(), y)
    if head is None:
        return loss_task, loss_task, torch.zeros((), device=x.device), logits, 0
    ridx, i, j = sample_pairs(cfg, len(x_reg), gen_pairs)
    # Drawn on the CPU generator (the same pairs on every device); non_blocking keeps the
    # host-to-device copy from waiting on the GPU queue.
    ridx, i, j = (t.to(x.device, non_blocking=True) for t in (ridx, i, j))
    s_t = target.pairs(ridx[i], ridx[j])
    with precision.autocast():
        feats = model.features(precision.layout(to_float(x_reg[ridx])), reg.layers)
    s_cnn = head({k: v.float() for k, v in feats.items()}, i, j)
    loss_sim = similarity_loss(s_cnn, s_t, reg.loss, reg.eps)
    return loss_task + reg.alpha * loss_sim, loss_task, loss_sim, logits, len(i)


def _shared_loss(
    model: nn.Module, head: SimilarityHead, target: BatchTarget, cfg: RunConfig, x: torch.Tensor, y: torch.Tensor,
    gen_pairs: torch.Generator, precision: Precision, index: torch.Tensor | None,
    forward_taps: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """pairing=shared: one forward pass gives the logits and the tap features of the batch."""
    reg = cfg.regularizer
    with precision.autocast():
        logits, feats = (forward_taps or model.forward_with_features)(x, reg.layers)
    loss_task = F.cross_entropy(logits.float(), y)
    i, j = shared_pairs(len(x), reg.n_pairs, gen_pairs, x.device)
    # The target sees x exactly as the network's input: [0, 1] pixels after augmentation.
    # METHOD.md defines the pixel target on [0, 1] pixels averaged to grey; the model's
    # normalisation (and the blur baseline's blur) are part of the model, which pairing=pairs'
    # targets never see either. Augmentation, by contrast, changes the image whose features
    # are compared, so the target must be the augmented image's, or a shifted digit's
    # features would be pulled towards the similarities of the unshifted one.
    s_t = target.batch_pairs(x, index, i, j)
    s_cnn = head({k: v.float() for k, v in feats.items()}, i, j)
    loss_sim = similarity_loss(s_cnn, s_t, reg.loss, reg.eps)
    return loss_task + reg.alpha * loss_sim, loss_task, loss_sim, logits, len(i)


def fixed_pair_similarity_loss(
    model: nn.Module,
    head: SimilarityHead,
    target: Target,
    x_reg: torch.Tensor,
    cfg: RunConfig,
    n_pairs: int = 256,
    seed: int = 12345,
    reg_index: torch.Tensor | None = None,
) -> float:
    """Similarity loss on a fixed set of pairs, eval mode, running means frozen.

    The per-step loss is noisy (16 fresh pairs a step); this one is comparable across
    epochs and runs, so it shows whether the regularizer is doing its job. The pairs are
    pairs of regularization images whatever the pairing, so pairing=pairs and shared runs
    report the same pairs with the same pixel / pixel_th / features values; a shared target
    computes them from the images (``reg_index``: their positions in the training split,
    which the shuffle reads).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(x_reg)
    a = torch.randint(0, n, (n_pairs,), generator=gen)
    b = (a + torch.randint(1, n, (n_pairs,), generator=gen)) % n
    idx = torch.cat([a, b])
    model.eval()
    with torch.no_grad():
        feats = model.features(to_float(x_reg[idx.to(x_reg.device)]), cfg.regularizer.layers)
        ar = torch.arange(n_pairs, device=x_reg.device)
        s_cnn = head(feats, ar, ar + n_pairs, update=False)
        if isinstance(target, BatchTarget):
            pos = reg_index[idx].to(x_reg.device) if reg_index is not None else None
            s_t = target.batch_pairs(to_float(x_reg[idx.to(x_reg.device)]), pos, ar, ar + n_pairs)
        else:
            s_t = target.pairs(a.to(x_reg.device), b.to(x_reg.device))
        return similarity_loss(s_cnn, s_t, cfg.regularizer.loss, cfg.regularizer.eps).item()

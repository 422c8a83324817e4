"""Similarity and loss against hand-written references (METHOD.md section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroreg.loss import similarity_loss, soft_atanh
from neuroreg.models import create_model
from neuroreg.similarity import SimilarityHead, upper_pairs


def _reference_cos(fa: np.ndarray, fb: np.ndarray, mu: np.ndarray) -> float:
    a = (fa - mu[:, None, None]).ravel()
    b = (fb - mu[:, None, None]).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_soft_atanh_matches_definition_and_is_finite_at_one():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0], dtype=torch.float64)
    eps = 1e-5
    ref = torch.tensor([math.log(1 + v + eps) - math.log(1 - v + eps) for v in x.tolist()], dtype=torch.float64)
    assert torch.allclose(soft_atanh(x, eps), ref, atol=1e-12)
    assert abs(soft_atanh(torch.tensor(1.0, dtype=torch.float64), eps).item() - 12.2) < 0.05
    small = torch.tensor([0.1, -0.2], dtype=torch.float64)
    assert torch.allclose(soft_atanh(small, 1e-9), 2 * torch.atanh(small), atol=1e-7)


def test_similarity_loss_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(16, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.randint(-1, 2, (16,), generator=g).double()
    eps = 1e-5
    d = lambda v: np.log(1 + v + eps) - np.log(1 - v + eps)  # noqa: E731
    ref = np.mean((d(s.numpy()) - d(t.numpy())) ** 2)
    assert similarity_loss(s, t, "atanh", eps).item() == pytest.approx(ref, rel=1e-10)
    assert similarity_loss(s, t, "mse").item() == pytest.approx(np.mean((s.numpy() - t.numpy()) ** 2), rel=1e-10)


def test_head_matches_reference_with_batch_and_running_means():
    g = torch.Generator().manual_seed(1)
    feats = {"a": torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(6, 5, 2, 2, generator=g, dtype=torch.float64)}
    i, j = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    head = SimilarityHead(["a", "b"], [3, 5], centering="batch").double()
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.3, -0.4], dtype=torch.float64))
    gam = np.exp([0.3, -0.4]) / np.exp([0.3, -0.4]).sum()
    out = head(feats, i, j)
    for p in range(3):
        ref = sum(
            gam[k] * _reference_cos(feats[n][i[p]].numpy(), feats[n][j[p]].numpy(), feats[n].mean(dim=(0, 2, 3)).numpy())
            for k, n in enumerate(["a", "b"])
        )
        assert out[p].item() == pytest.approx(ref, abs=1e-10)

    # running: first batch initialises mu; the second is an EMA with beta 0.9, updated before use
    run = SimilarityHead(["a"], [3], centering="running", beta=0.9).double()
    run(feats, i, j)
    m1 = feats["a"].mean(dim=(0, 2, 3))
    assert torch.allclose(run.running_mean("a"), m1)
    f2 = {"a": torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)}
    out2 = run(f2, i, j)
    mu = 0.9 * m1 + 0.1 * f2["a"].mean(dim=(0, 2, 3))
    assert torch.allclose(run.running_mean("a"), mu)
    ref = _reference_cos(f2["a"][0].numpy(), f2["a"][3].numpy(), mu.numpy())
    assert out2[0].item() == pytest.approx(ref, abs=1e-10)
    # the update carries no gradient
    assert not run.running_mean("a").requires_grad


def test_upper_pairs_counts():
    i, j = upper_pairs(5)
    assert len(i) == 10 and bool((i < j).all())
    assert len({(a, b) for a, b in zip(i.tolist(), j.tolist())}) == 10


def test_gradients_reach_cnn_and_layer_weights():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=4)
    layers = ["conv1", "conv5", "conv9"]
    x = torch.rand(8, 1, 16, 16)
    feats = model.features(x, layers)
    head = SimilarityHead(layers, [feats[n].shape[1] for n in layers])
    i, j = upper_pairs(8)
    s = head(feats, i, j)
    loss = similarity_loss(s, torch.sign(torch.randn(len(i))), "atanh")
    loss.backward()
    assert head.layer_logits.grad is not None and head.layer_logits.grad.abs().sum() > 0
    stem = next(model.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    # uniform weights at start
    assert torch.allclose(head.layer_weights(), torch.full((3,), 1 / 3))


def test_gram_and_gather_paths_agree():
    from neuroreg.similarity import pair_cosines

    z = torch.nn.functional.normalize(torch.randn(7, 30, dtype=torch.float64), dim=1)
    i, j = upper_pairs(7)  # 21 pairs > 7 images: Gram path
    ref = torch.tensor([float(z[a] @ z[b]) for a, b in zip(i.tolist(), j.tolist())], dtype=torch.float64)
    assert torch.allclose(pair_cosines(z, i, j), ref, atol=1e-12)
    assert torch.allclose(pair_cosines(z, i[:3], j[:3]), ref[:3], atol=1e-12)  # gather path


@pytest.mark.parametrize("centering", ["running", "batch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_head_gram_path_matches_the_unit_vector_path(centering, channels_last):
    """With more pairs than images the head takes every cosine from one Gram matmul of the raw
    features, centred algebraically; same S_cnn, gradients and running means as centring,
    normalising and gathering, over two steps (the EMA), in either memory layout."""
    torch.manual_seed(0)
    feats = {"a": torch.relu(torch.randn(12, 6, 8, 8) + 0.3), "b": torch.relu(torch.randn(12, 4, 4, 4))}
    if channels_last:
        feats = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    for v in feats.values():
        v.requires_grad_(True)
    gram = SimilarityHead(["a", "b"], [6, 4], centering)
    gram.layer_logits.data = torch.tensor([0.4, -0.3])
    ref = SimilarityHead(["a", "b"], [6, 4], centering)
    ref.layer_logits.data = torch.tensor([0.4, -0.3])
    i, j = upper_pairs(12)  # 66 pairs > 12 images: the Gram path
    for _ in range(2):
        s = gram(feats, i, j)
        zs = ref.layer_unit_vectors(feats)
        s_ref = torch.stack([(z[i] * z[j]).sum(dim=1) for z in zs], dim=1) @ ref.layer_weights()
        assert torch.allclose(s, s_ref, atol=1e-6)
        assert torch.allclose(gram.mu_a, ref.mu_a, atol=1e-6) and torch.equal(gram.mu_initialised, ref.mu_initialised)
        g = torch.autograd.grad(s.pow(3).sum(), [*feats.values(), gram.layer_logits])
        g_ref = torch.autograd.grad(s_ref.pow(3).sum(), [*feats.values(), ref.layer_logits])
        for a, b in zip(g, g_ref):
            assert torch.allclose(a, b, atol=1e-5 * b.abs().max().item()), (a - b).abs().max()


def test_centred_cosines_backward_is_autograds():
    """The hand-written backward of the running-centred Gram cosines against torch.autograd's
    numerical gradient (float64), in both memory layouts' row orders."""
    from neuroreg.similarity import _CentredCosines

    torch.manual_seed(1)
    x = torch.relu(torch.randn(6, 20, dtype=torch.float64)).requires_grad_(True)
    m = torch.rand(20, dtype=torch.float64) * 0.3
    a = (x.detach() @ m)
    assert torch.autograd.gradcheck(lambda x: _CentredCosines.apply(x, m, x @ m, m @ m), (x,))
    cos = _CentredCosines.apply(x, m, a, m @ m)
    z = torch.nn.functional.normalize(x - m, dim=1)
    assert torch.allclose(cos, z @ z.T, atol=1e-12)

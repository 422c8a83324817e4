"""Memory per trial (issue 25, item 5), tested without a GPU: the footprint estimate, the
sweep's refusal of a packing that cannot fit, and the per-process cap of a fractional share."""

from __future__ import annotations

import pytest
import ray

from neuroreg.config import ConfigError, RunConfig
from neuroreg.footprint import (
    GIB,
    Footprint,
    estimate,
    estimate_for,
    gpu_memory_of,
    packing_problem,
)
from sweep.ray_session import check_resources
from sweep.trainable import gpu_memory_share


def _cfg(data: dict, **over) -> RunConfig:
    d = {"data": data, "model": {"width": 64}, "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 5000},
         "train": {"batch_size": 128}}
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return RunConfig.from_dict(d, validate=False)


# --- the estimate ------------------------------------------------------------------------------


def test_data_part_is_the_uint8_images_and_labels():
    """CIFAR-10 in colour: 50,000 x 3 x 32 x 32 bytes + int64 labels, plus 5,000 regularization images
    (the issue's 152 MB for the training images)."""
    f = estimate_for(_cfg({"name": "cifar10", "grayscale": False, "image_size": None}))
    assert f.data == 50_000 * (3 * 32 * 32 + 8) + 5_000 * 3 * 32 * 32
    grey = estimate_for(_cfg({"name": "cifar10", "grayscale": True, "image_size": None}))
    assert grey.data == 50_000 * (32 * 32 + 8) + 5_000 * 32 * 32
    sub = estimate_for(_cfg({"name": "cifar10", "grayscale": True, "image_size": 16, "subset": 1000}))
    assert sub.data == 1000 * (16 * 16 + 8) + 1000 * 16 * 16  # the regularization set is drawn from the subset


def test_model_and_activations_scale_with_width_batch_and_pairs():
    base = dict(n_train=0, channels=1, size=32, n_reg=0, reg_channels=1, reg_size=32, model="resnet18")
    a = estimate(**base, width=64, batch=128, pair_images=0)
    assert a.model == int(11.2e6 * 12)  # weights, gradients, momentum in fp32
    assert estimate(**base, width=32, batch=128, pair_images=0).model == int(11.2e6 / 4 * 12)
    assert estimate(**base, width=64, batch=256, pair_images=0).activations == 2 * a.activations
    with_pairs = estimate(**base, width=64, batch=128, pair_images=32)
    assert with_pairs.activations == a.activations * (128 + 32) // 128
    assert estimate(**{**base, "model": "resnet34"}, width=64, batch=128, pair_images=0).model > a.model


@pytest.mark.parametrize("model", ["resnet18", "resnet34"])
def test_activations_cover_what_backward_keeps(model):
    """Against the real model: the bytes autograd saves per image (two batch sizes apart, so
    the weights it also saves cancel) are covered by the estimate, with less than 2x to spare."""
    import torch

    from neuroreg.models import create_model

    width, size = 16, 16
    net = create_model(model, num_classes=10, in_chans=1, width=width).train()

    def saved(batch: int) -> int:
        seen: dict[tuple, int] = {}

        def pack(t):
            seen[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.rand(batch, 1, size, size))
        return sum(seen.values())

    per_image = (saved(8) - saved(4)) / 4
    est = estimate(n_train=0, channels=1, size=size, n_reg=0, reg_channels=1, reg_size=size, model=model,
                   width=width, batch=1, pair_images=0).activations
    assert per_image <= est < 2 * per_image


def test_pairs_follow_the_pairing():
    pairs = estimate_for(_cfg({"name": "mnist"}, regularizer__n_pairs=16))
    batch = estimate_for(_cfg({"name": "mnist"}, regularizer__pairing="batch", regularizer__batch_k=64))
    none = estimate_for(_cfg({"name": "mnist"}, regularizer__target="none"))
    assert none.activations < pairs.activations < batch.activations
    assert none.data == 60_000 * (32 * 32 + 8)  # no regularization set on the GPU


def test_unknown_data_size_gives_no_estimate():
    assert estimate_for(_cfg({"name": "imagefolder", "root": "/x", "image_size": 64})) is None
    f = estimate_for(_cfg({"name": "imagefolder", "root": "/x", "image_size": 64, "subset": 100, "grayscale": False}))
    assert f is not None and f.data == 100 * (3 * 64 * 64 + 8) + 100 * 3 * 64 * 64


# --- the refusal before Ray starts ------------------------------------------------------------------


def test_gpu_memory_from_the_accelerator_type():
    assert gpu_memory_of({"GPU": 1.0, "accelerator_type:T4": 1.0}) == 16 * GIB
    assert gpu_memory_of({"GPU": 8.0, "accelerator_type:A100": 1.0}) == 80 * GIB  # the larger variant
    assert gpu_memory_of({"GPU": 8.0, "accelerator_type:A100-40G": 1.0}) == 40 * GIB
    assert gpu_memory_of({"GPU": 1.0, "accelerator_type:A10G": 1.0}) == 24 * GIB
    assert gpu_memory_of({"GPU": 1.0}) is None


def test_packing_problem_names_the_numbers_and_the_share_that_fits():
    f = Footprint(data=int(5 * GIB), model=int(0.5 * GIB), activations=int(1.5 * GIB), context=int(1 * GIB))
    t4 = [{"CPU": 8.0, "GPU": 1.0, "accelerator_type:T4": 1.0}]
    assert packing_problem(f, 0.5, t4) is None  # 8 GiB of 16
    msg = packing_problem(f, 0.25, t4)  # 4 GiB of 16
    assert "8.00 GiB" in msg and "data 5.00" in msg and "4.00 GiB" in msg and "--gpus-per-trial 0.5 or more" in msg
    assert "larger" not in msg
    big = Footprint(data=int(20 * GIB), model=0, activations=0, context=0)
    assert "GPUs with more memory" in packing_problem(big, 1.0, t4)
    assert packing_problem(f, 0.25, [{"GPU": 1.0}]) is None  # memory unknown: not judged
    assert packing_problem(f, 0.25, t4 + [{"GPU": 1.0, "accelerator_type:H100": 1.0}]) is None  # fits the H100


def test_check_resources_refuses_a_packing_that_cannot_fit(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0, "accelerator_type:T4": 1.0}}]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    f = Footprint(data=int(5 * GIB), model=int(0.5 * GIB), activations=int(1.5 * GIB), context=int(1 * GIB))
    assert check_resources(1, 0.5, f) == {"CPU": 8.0, "GPU": 1.0}
    with pytest.raises(ConfigError, match="--gpus-per-trial 0.5 or more") as e:
        check_resources(1, 0.25, f)
    assert e.value.field == "--gpus-per-trial"
    assert check_resources(1, 0.25) == {"CPU": 8.0, "GPU": 1.0}  # no estimate: as before
    assert check_resources(1, 0, f) == {"CPU": 8.0, "GPU": 1.0}  # CPU trials: GPU memory is no concern


# --- the cap in the trial ------------------------------------------------------------------------------


class FakeCuda:
    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.calls.append((fraction, device))


@pytest.mark.parametrize(("device", "assigned", "expected"), [
    ("auto", {"CPU": 1.0, "GPU": 0.25}, [(0.25, 0)]),
    ("cuda", {"GPU": 0.5}, [(0.5, 0)]),
    ("cuda:0", {"GPU": 0.3}, [(0.3, 0)]),
    ("auto", {"GPU": 1.0}, []),  # a whole GPU: no cap
    ("auto", {"GPU": 2.0}, []),
    ("cpu", {"GPU": 0.25}, []),  # logical GPUs only packing CPU trials
    ("auto", {"CPU": 2.0}, []),
])
def test_fractional_share_caps_the_allocator(device, assigned, expected):
    cuda = FakeCuda()
    share = gpu_memory_share(device, assigned, cuda)
    assert cuda.calls == expected
    assert share == (expected[0][0] if expected else None)

"""How much GPU memory one training run needs, estimated before it starts (issue 25, item 5).

A sweep packs trials onto GPUs by fraction (``--gpus-per-trial 0.25``); each trial keeps its
own CUDA context and its own device copy of the decoded training and regularization images.
``estimate`` adds up those parts from a few numbers, so the sweep can refuse a packing
that cannot fit before Ray starts. It is an estimate, deliberately on the high side:

- data: the training split (uint8 N x C x H x W plus int64 labels) and the regularization
  set (uint8 n x C x H x W), both kept on the device by the trainer;
- model: fp32 parameters, gradients and SGD momentum (12 bytes a parameter); a CIFAR-style
  ResNet18 has 11.2 M parameters at width 64, ResNet34 21.3 M, scaling with width^2;
- activations: what backward keeps, in fp32, for every image forwarded in a step (the
  classification batch plus the pair images): ``ACTIVATIONS[model]`` tensors of width x H x W
  per image (stride-1 stem, no max-pool);
- the CUDA context, cuDNN and cuBLAS workspaces and the caching allocator's slack.

``estimate_for(cfg)`` fills the numbers from a RunConfig for the data sets whose sizes are
known (digits, mnist, fashion_mnist, cifar10, cifar100, synthetic); an image folder's size
is known only from its ``data.subset``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuroreg.config import DataConfig, RunConfig

GIB = 1 << 30

PARAMS_AT_64 = {"resnet18": 11.2e6, "resnet34": 21.3e6}
"""Parameters of the CIFAR-style ResNet at width 64 (10 classes); they scale with width^2."""
ACTIVATIONS = {"resnet18": 28.0, "resnet34": 48.0}
"""fp32 tensors of width x H x W per forwarded image: backward keeps 18.0 (ResNet18) and
30.5 (ResNet34) of them (measured with torch.autograd.graph.saved_tensors_hooks; stage k
has width 2^k and 1/4^k of the area), times about 1.5 for backward's own transient
gradients. bf16 / fp16 autocast would halve part of it; the estimate stays at fp32."""
BYTES_PER_PARAM = 12
"""fp32 weight, gradient and SGD momentum."""
CONTEXT_BYTES = 768 << 20
"""CUDA context, cuDNN / cuBLAS workspaces and allocator slack per process (a measured
context alone is 300-500 MiB on recent drivers)."""

KNOWN_DATA = {
    # name: (training images, channels, native height = width)
    "digits": (1437, 1, 8),  # 80 % of sklearn's 1,797
    "mnist": (60_000, 1, 28),
    "fashion_mnist": (60_000, 1, 28),
    "cifar10": (50_000, 3, 32),
    "cifar100": (50_000, 3, 32),
    "synthetic": (256, 1, 16),
}


@dataclass(frozen=True)
class Footprint:
    """Estimated bytes of one run on its GPU, by part."""

    data: int
    model: int
    activations: int
    context: int = CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.data + self.model + self.activations + self.context

    def describe(self) -> str:
        parts = (("data", self.data), ("model + optimizer", self.model), ("activations", self.activations),
                 ("CUDA context", self.context))
        return f"{self.total / GIB:.2f} GiB (" + ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts) + ")"

    def share_needed(self, gpu_bytes: float) -> float:
        """The smallest fraction of a GPU of ``gpu_bytes`` that holds this run."""
        return self.total / gpu_bytes


def estimate(
    *, n_train: int, channels: int, size: int, n_reg: int, reg_channels: int, reg_size: int,
    model: str, width: int, batch: int, pair_images: int,
) -> Footprint:
    """The footprint from plain numbers (``size``: image height = width in pixels; ``pair_images``:
    regularization images forwarded per step, 2 x n_pairs or batch_k; 0 when unregularized or shared)."""
    data = n_train * (channels * size * size + 8) + n_reg * reg_channels * reg_size * reg_size
    params = PARAMS_AT_64.get(model, max(PARAMS_AT_64.values())) * (width / 64) ** 2
    per_image = ACTIVATIONS.get(model, max(ACTIVATIONS.values())) * width * 4
    activations = per_image * (batch * size * size + pair_images * reg_size * reg_size)
    return Footprint(data=int(data), model=int(params * BYTES_PER_PARAM), activations=int(activations))


def _images_of(d: DataConfig) -> tuple[int, int, int] | None:
    """(training images, channels, size) of a data config, or None when not known up front."""
    known = KNOWN_DATA.get(d.name)
    if known is None and d.subset is None:
        return None
    n, channels, native = known if known is not None else (d.subset, 3, d.image_size or 0)
    if not native and not d.image_size:
        return None
    n = min(n, d.subset) if d.subset is not None else n
    return n, (1 if d.grayscale else channels), d.image_size or native


def estimate_for(cfg: RunConfig) -> Footprint | None:
    """The footprint of a run config, or None when its data set's size is not known up front."""
    train = _images_of(cfg.data)
    reg = cfg.regularizer
    reg_images = _images_of(reg.data if reg.data is not None else cfg.data)
    if train is None or reg_images is None:
        return None
    pair_images = 0
    if reg.active:
        # shared pairing takes its pairs from the classification batch: no extra images
        pair_images = {"pairs": 2 * (reg.n_pairs or 0), "batch": reg.batch_k, "shared": 0}[reg.pairing]
    return estimate(
        n_train=train[0], channels=train[1], size=train[2],
        n_reg=min(reg.n, reg_images[0]) if reg.active else 0, reg_channels=reg_images[1], reg_size=reg_images[2],
        model=cfg.model.name, width=cfg.model.width, batch=cfg.train.batch_size, pair_images=pair_images,
    )


GPU_MEMORY_GIB = {
    "T4": 16, "V100": 32, "P100": 16, "A10G": 24, "A10": 24, "L4": 24, "L40S": 48, "L40": 48,
    "A100": 80, "H100": 80, "H200": 141, "B200": 192, "A40": 48,
}
"""Memory of the GPUs Ray names in a node's ``accelerator_type:<name>`` resource, the largest
variant of each (an A100 may have 40 or 80 GiB): a packing is refused only when it cannot fit."""


def gpu_memory_of(resources: dict[str, float]) -> float | None:
    """Bytes of one GPU of a Ray node, from its accelerator_type resource; None when unknown."""
    for key in resources:
        if key.startswith("accelerator_type:"):
            name = key.split(":", 1)[1].upper()
            size = re.search(r"-(\d+)G$", name)  # Ray's A100-40G / A100-80G
            if size:
                return int(size.group(1)) * GIB
            for model in sorted(GPU_MEMORY_GIB, key=len, reverse=True):  # A100 before A10
                if name.startswith(model):
                    return GPU_MEMORY_GIB[model] * GIB
    return None


def packing_problem(footprint: Footprint, gpus_per_trial: float, nodes: list[dict[str, float]]) -> str | None:
    """Why trials of ``footprint`` at ``gpus_per_trial`` cannot fit any of ``nodes`` (Ray resource
    dicts of the nodes that can hold a trial), or None. Not judged (None) when some node's GPU
    memory is unknown: the trial may fit there."""
    memories = [gpu_memory_of(n) for n in nodes]
    if not memories or any(m is None for m in memories):
        return None
    share = min(gpus_per_trial, 1.0)  # a trial with several GPUs trains on one of them
    largest = max(m for m in memories if m is not None)
    if footprint.total <= share * largest:
        return None
    need = footprint.share_needed(largest)
    fix = (f"use --gpus-per-trial {math.ceil(need * 20) / 20:g} or more" if need <= 1
           else "use GPUs with more memory, or a smaller train.batch_size, model.width or data set")
    return (f"a trial needs about {footprint.describe()} of GPU memory, but {gpus_per_trial:g} of the largest "
            f"GPU the cluster reports ({largest / GIB:.0f} GiB) is {share * largest / GIB:.2f} GiB; {fix} (each "
            "trial keeps its own CUDA context and its own copy of the images on the GPU)")

"""Data sources decoded once into uint8 tensors in memory, and their splits.

Every loader returns an ``ImageData`` (uint8 N x C x H x W, int64 labels). Options of
``DataConfig`` apply in this order: grayscale, resize, ``subset`` / ``test_subset``.
Grayscale and resize act per image, so where it saves work the subset is selected
first; the result is the same.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neuroreg.config import DataConfig, RegularizerConfig, data_root
from neuroreg.errors import ConfigError
from neuroreg.imagefolder import load_imagefolder
from neuroreg.images import (
    ImageData,
    Splits,
    augment_batch,
    resize_uint8,
    to_float,
    to_grayscale,
    to_uint8,
)

# The tensor helpers live in neuroreg.images; they stay importable from here.
__all__ = [
    "ImageData",
    "Splits",
    "augment_batch",
    "load_dataset",
    "load_regularization_set",
    "load_splits",
    "resize_uint8",
    "to_float",
    "to_grayscale",
]

# Fixed seeds of splits that are part of a data set's definition, not of a run.
_DIGITS_SPLIT_SEED = 0
_SYNTHETIC_SEEDS = {True: 1, False: 2}


def _channels_and_size(images: Tensor, cfg: DataConfig) -> Tensor:
    if cfg.grayscale:
        images = to_grayscale(images)
    elif images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    if cfg.image_size is not None:
        images = resize_uint8(images, cfg.image_size)
    return images


def _fixed_subset(n_total: int, n: int | None, seed: int, field: str, what: str) -> Tensor | None:
    """Sorted indices of a fixed random subset of size n (None = all)."""
    if n is None:
        return None
    if n > n_total:
        raise ConfigError(
            field, f"asks for {n} images but the {what} has only {n_total}; lower it or use null"
        )
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[:n].sort().values


# --- data sets ---------------------------------------------------------------------------


def load_dataset(cfg: DataConfig, train: bool, field: str = "data") -> ImageData:
    """One split of the data set ``cfg.name`` with grayscale, resize and subset applied.

    ``field`` is the config path used in error messages (``regularizer.data`` for the
    regularization set).
    """
    name = cfg.name
    if name == "digits":
        data = _load_digits(train)
    elif name == "synthetic":
        data = _load_synthetic(train)
    elif name in _TORCHVISION:
        data = _load_torchvision(cfg, train, field)
    elif name == "imagefolder":
        # Decoding is the expensive part; it caches its own (grey, resized) result.
        data = load_imagefolder(cfg, train, field, _require_root(cfg, field))
    else:
        raise ConfigError(f"{field}.name", f"unknown data set {name!r}")
    if train:
        idx = _fixed_subset(
            len(data), cfg.subset, cfg.split_seed, f"{field}.subset", f"{name} training set"
        )
    else:
        idx = _fixed_subset(
            len(data), cfg.test_subset, cfg.split_seed, f"{field}.test_subset", f"{name} test set"
        )
    if idx is not None:
        data = data.select(idx)
    # Per-image ops commute with the subset selection, so doing them last is equivalent and cheaper.
    return ImageData(_channels_and_size(data.images, cfg), data.labels, data.classes)


def load_splits(cfg: DataConfig, field: str = "data") -> Splits:
    """Train / validation / test; validation is ``val_fraction`` of the (subset) training set."""
    train, val = _train_val(cfg, field)
    return Splits(train=train, val=val, test=load_dataset(cfg, train=False, field=field))


def _train_val(cfg: DataConfig, field: str) -> tuple[ImageData, ImageData]:
    full = load_dataset(cfg, train=True, field=field)
    n = len(full)
    n_val = round(cfg.val_fraction * n)
    if cfg.val_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= n:
        raise ConfigError(
            f"{field}.val_fraction",
            f"holds out {n_val} of {n} training images, leaving none to train on",
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    return full.select(perm[n_val:].sort().values), full.select(perm[:n_val].sort().values)


def load_regularization_set(
    reg_cfg: RegularizerConfig, data_cfg: DataConfig, train_split: ImageData | None = None
) -> ImageData:
    """The first ``reg_cfg.n`` images of a fixed permutation (``reg_cfg.seed``), or in the
    data set's own order when ``reg_cfg.order == "file"``, of the regularization data: ``reg_cfg.data``'s training set, or else the classification
    training split (validation images excluded).

    ``train_split``: the classification training split when the caller has it already
    (``load_splits(data_cfg).train``), to skip loading it again; used only when
    ``reg_cfg.data`` is None.
    """
    if reg_cfg.data is None:
        source = train_split if train_split is not None else _train_val(data_cfg, "data")[0]
        what = "classification training split"
    else:
        source = load_dataset(reg_cfg.data, train=True, field="regularizer.data")
        what = f"regularizer.data ({reg_cfg.data.name}) training set"
    return source.select(regularization_indices(reg_cfg, len(source), what))


def regularization_indices(reg_cfg: RegularizerConfig, n_source: int,
                           what: str = "classification training split") -> torch.Tensor:
    """Positions in the source of the regularization images: the first ``reg_cfg.n`` of a
    permutation seeded by ``reg_cfg.seed``, or the first n (``order: file``). Shared pairing
    (neuroreg.train) centres its targets over the same images."""
    if reg_cfg.n > n_source:
        raise ConfigError("regularizer.n", f"asks for {reg_cfg.n} images but the {what} has only {n_source}")
    if reg_cfg.order == "file":
        return torch.arange(reg_cfg.n)
    return torch.randperm(n_source, generator=torch.Generator().manual_seed(reg_cfg.seed))[: reg_cfg.n]


# --- digits and synthetic ---------------------------------------------------------------


def _load_digits(train: bool) -> ImageData:
    images, labels = (torch.from_numpy(a) for a in _digits_arrays())
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    n_train = int(0.8 * len(labels))
    idx = (perm[:n_train] if train else perm[n_train:]).sort().values
    # Indexing copies: the cached arrays never reach a caller.
    return ImageData(images[idx].contiguous(), labels[idx], [str(i) for i in range(10)])


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as uint8 images (N x 1 x 8 x 8, 0..255) and int64 labels, decoded
    once per process: a sweep's checks and its shared data load them several times.

    The CSV that ``sklearn.datasets.load_digits`` parses is read the same way (np.loadtxt)
    without importing sklearn, which costs a second or more of every sweep's start-up."""
    path = _digits_csv()
    if path is None:  # another sklearn layout: its own loader
        from sklearn.datasets import load_digits

        d = load_digits()
        raw, target = d.images, d.target
    else:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = np.loadtxt(f, delimiter=",")
        raw, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, target.astype(np.int64)


def _digits_csv() -> Path | None:
    """sklearn's bundled digits.csv.gz, found without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


_SYNTH_CLASSES = 4
_SYNTH_SIZE = 16
_SYNTH_COUNT = {True: 64 * _SYNTH_CLASSES, False: 16 * _SYNTH_CLASSES}


def _load_synthetic(train: bool) -> ImageData:
    """Oriented gratings, one orientation per class (0, 45, 90, 135 degrees), with
    random phase, frequency and pixel noise from a fixed seed per split."""
    g = torch.Generator().manual_seed(_SYNTHETIC_SEEDS[train])
    n = _SYNTH_COUNT[train]
    labels = torch.arange(n) % _SYNTH_CLASSES
    theta = labels.to(torch.float64) * (math.pi / _SYNTH_CLASSES)
    freq = 0.15 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(
        torch.arange(_SYNTH_SIZE, dtype=torch.float64),
        torch.arange(_SYNTH_SIZE, dtype=torch.float64),
        indexing="ij",
    )
    proj = torch.cos(theta)[:, None, None] * xx + torch.sin(theta)[:, None, None] * yy
    img = 0.5 + 0.4 * torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    img = img + 0.05 * torch.randn(img.shape, generator=g, dtype=torch.float64)
    images = to_uint8((img * 255).float())[:, None]
    classes = [f"grating_{round(180 * k / _SYNTH_CLASSES)}deg" for k in range(_SYNTH_CLASSES)]
    return ImageData(images, labels.to(torch.int64), classes)


# --- torchvision sets ------------------------------------------------------------------------

_TORCHVISION = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def _require_root(cfg: DataConfig, field: str) -> Path:
    root = data_root(cfg, f"{field}.root")
    if root is None:
        raise ConfigError(
            f"{field}.root",
            f"data set {cfg.name!r} needs a data root: set {field}.root or $NEUROREG_DATA_ROOT"
            + (
                " (or download: true to fetch it with torchvision)"
                if cfg.name in _TORCHVISION
                else ""
            ),
        )
    p = Path(root).expanduser()
    if not p.exists() and not (cfg.download and cfg.name in _TORCHVISION):
        raise ConfigError(
            f"{field}.root",
            f"{p} does not exist; set {field}.root or $NEUROREG_DATA_ROOT to the data folder"
            + (" or set download: true" if cfg.name in _TORCHVISION else ""),
        )
    return p


def _load_torchvision(cfg: DataConfig, train: bool, field: str) -> ImageData:
    import torchvision.datasets as tvd

    root = _require_root(cfg, field)
    cls = getattr(tvd, _TORCHVISION[cfg.name])
    # CIFAR batches are pickles, but torchvision checks every file's MD5 against the official
    # release before unpickling it, so a planted file is refused, not loaded (MNIST is IDX).
    try:
        ds = cls(root=str(root), train=train, download=cfg.download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
        raise ConfigError(
            f"{field}.root",
            f"{cfg.name} not found under {root} ({e}); point {field}.root / $NEUROREG_DATA_ROOT at the "
            "folder holding it, or set download: true",
        ) from e
    # The classes expose the whole decoded array; no per-image PIL round trip.
    data = torch.as_tensor(np.asarray(ds.data))
    images = data[:, None] if data.dim() == 3 else data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageData(images.contiguous(), labels, list(ds.classes))



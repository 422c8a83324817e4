"""Data sets decoded once into uint8 tensors in memory, splits, and batch augmentation.

Every loader returns an ``ImageData`` (uint8 N x C x H x W, int64 labels). Options of
``DataConfig`` apply in this order: grayscale, resize, ``subset`` / ``test_subset``.
Grayscale and resize act per image, so where it saves work the subset is selected
first; the result is the same.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neuroreg.atomic import atomic_write
from neuroreg.config import ConfigError, DataConfig, RegularizerConfig, data_root

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
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class ImageData:
    """A labelled image set: ``images`` uint8 N x C x H x W, ``labels`` int64 N."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of length {self.images.shape[0]}, got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, index: Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index], list(self.classes))


@dataclass
class Splits:
    train: ImageData
    val: ImageData
    test: ImageData


# --- pixel helpers -------------------------------------------------------------------


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {x.dtype}")
    return x.to(torch.float32).div_(255.0)


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def to_grayscale(images: Tensor) -> Tensor:
    """uint8 N x C x H x W -> N x 1 x H x W, the mean over colour channels (METHOD.md)."""
    if images.shape[1] == 1:
        return images
    return _to_uint8(images.to(torch.float32).mean(dim=1, keepdim=True))


def resize_uint8(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear resize with antialias of a uint8 batch to size x size, in chunks."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].to(torch.float32)
        y = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[s : s + chunk] = _to_uint8(y)
    return out


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


# --- augmentation ----------------------------------------------------------------------


def augment_batch(
    x: Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (reflect padding) + horizontal flip, vectorised over the batch.

    Random draws, in this order from ``generator`` (CPU): row offsets ``randint(0, 2p+1, (N,))``,
    column offsets (same), then flips ``rand(N) < 0.5`` (only when ``hflip``).
    The flip is folded into the column gather index, so one advanced-indexing gather
    does both.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects N x C x H x W, got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if padding < 0:
        raise ConfigError("data.crop_padding", "must be >= 0")
    if padding >= min(h, w):
        raise ConfigError(
            "data.crop_padding",
            f"reflect padding {padding} must be smaller than the image ({h}x{w})",
        )
    if n == 0:
        return x
    p = padding
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    cols = torch.arange(w)
    col_idx = dx[:, None] + cols[None, :]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        col_idx = torch.where(flip[:, None], dx[:, None] + cols.flip(0)[None, :], col_idx)
    row_idx = dy[:, None] + torch.arange(h)[None, :]
    padded = F.pad(x, (p, p, p, p), mode="reflect") if p > 0 else x
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        row_idx.to(dev, non_blocking=True)[:, None, :, None],
        col_idx.to(dev, non_blocking=True)[:, None, None, :],
    ]


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
        data = _load_imagefolder(cfg, train, field)
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
    if reg_cfg.n > len(source):
        raise ConfigError(
            "regularizer.n", f"asks for {reg_cfg.n} images but the {what} has only {len(source)}"
        )
    if reg_cfg.order == "file":
        return source.select(torch.arange(reg_cfg.n))
    perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(reg_cfg.seed))
    return source.select(perm[: reg_cfg.n])


# --- digits and synthetic ---------------------------------------------------------------


def _load_digits(train: bool) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    n_train = int(0.8 * len(labels))
    idx = (perm[:n_train] if train else perm[n_train:]).sort().values
    return ImageData(images[idx].contiguous(), labels[idx], [str(i) for i in range(10)])


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
    images = _to_uint8((img * 255).float())[:, None]
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


# --- image folders and archives ---------------------------------------------------------


def _cache_home() -> Path:
    env = os.environ.get("NEUROREG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neuroreg"


def _key(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _archive_stem(p: Path) -> str:
    name = p.name
    for s in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def extract_archive(archive: Path) -> Path:
    """Extract a .tar / .tar.gz once into the cache folder; returns the extracted tree.

    The cache is $NEUROREG_CACHE or ~/.cache/neuroreg, never beside the archive: data
    folders are often shared and read-only (and a root process would not notice).
    Keyed by path, size and mtime, so a changed archive is extracted again. The
    extraction goes to a temporary folder renamed into place, so a crash or a
    concurrent process never sees a half-written tree.
    """
    archive = archive.resolve()
    st = archive.stat()
    cache = _cache_home()
    final = cache / f"{_archive_stem(archive)}-{_key(archive, st.st_size, st.st_mtime_ns)}"
    if final.is_dir():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache))
    except OSError as e:
        raise ConfigError(
            "data.root",
            f"cannot extract {archive}: cache folder {cache} is not writable ({e}); "
            "set $NEUROREG_CACHE to a writable folder",
        ) from e
    try:
        _extract_files(archive, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # only a finished tree of a concurrent process is fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract_files(archive: Path, dest: Path) -> None:
    """Write the archive's regular files under ``dest``.

    Hand-written instead of ``TarFile.extractall(filter="data")``: that sets mode, owner
    and times per member and is 2x slower on 60,000 small JPEGs (CIFAR-10: ~22 s vs ~10 s).
    Only regular files are written, links and devices are skipped, and names that are
    absolute or climb out with ``..`` are refused, so nothing lands outside ``dest``.
    """
    with tarfile.open(archive) as tf:
        for m in tf:
            if not m.isfile():
                continue
            rel = Path(os.path.normpath(m.name))
            if rel.is_absolute() or rel.parts[:1] == ("..",) or not rel.parts:
                raise ConfigError("data.root", f"{archive} holds an unsafe member name {m.name!r}")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                continue
            with open(target, "wb") as f:
                shutil.copyfileobj(src, f)


def _decode(path: str) -> np.ndarray:
    """One image file -> uint8 H x W x 3 RGB, with PIL as ImageFolder's loader does."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _decode_chunk(paths: Sequence[str], grayscale: bool, size: int | None) -> list[Tensor]:
    """Decode a chunk of files; grey + resize as one batch when the sizes agree."""
    arrays = [_decode(p) for p in paths]
    groups = (
        [np.stack(arrays)] if len({a.shape for a in arrays}) == 1 else [a[None] for a in arrays]
    )
    out: list[Tensor] = []
    for g in groups:
        x = torch.from_numpy(g).permute(0, 3, 1, 2)
        if grayscale:
            x = to_grayscale(x)
        if size is not None:
            x = resize_uint8(x, size)
        out.extend(x.contiguous().unbind(0))
    return out


def _load_imagefolder(cfg: DataConfig, train: bool, field: str) -> ImageData:
    from torchvision.datasets import ImageFolder

    root = _require_root(cfg, field)
    if root.is_file():
        if not _is_archive(root):
            raise ConfigError(
                f"{field}.root",
                f"{root} is a file but not a .tar/.tar.gz/.tgz archive of class folders",
            )
        base = extract_archive(root)
    else:
        base = root
    sub = cfg.train_dir if train else cfg.test_dir
    sub_field = f"{field}.train_dir" if train else f"{field}.test_dir"
    if not train and not sub:
        # No test split in this folder: an empty test set of the right shape.
        classes = (
            ImageFolder(str(base / cfg.train_dir)).classes
            if (base / cfg.train_dir).is_dir()
            else []
        )
        c = 1 if cfg.grayscale else 3
        hw = cfg.image_size or 0
        return ImageData(
            torch.zeros((0, c, hw, hw), dtype=torch.uint8),
            torch.zeros(0, dtype=torch.int64),
            classes,
        )
    split_dir = base / sub if sub else base
    if not split_dir.is_dir():
        raise ConfigError(
            sub_field,
            f"{split_dir} is not a folder; set {sub_field} to the split's sub-folder of {root}",
        )
    try:
        ds = ImageFolder(str(split_dir))
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(
            f"{field}.root", f"no class folders with images in {split_dir}: {e}"
        ) from e
    paths = [p for p, _ in ds.samples]
    labels = torch.tensor([t for _, t in ds.samples], dtype=torch.int64)
    # Names, sizes and mtimes in the key: an edited folder is decoded again.
    listing = _key(*(f"{os.path.relpath(p, split_dir)}:{_stat_key(p)}" for p in paths))
    key = _key(split_dir.resolve(), cfg.image_size, cfg.grayscale, listing)
    cache_name = f"{base.name}-{sub or 'root'}-decoded-{key}.npy"
    # In the cache folder, never in the user's folder (a stray folder there would even
    # become an ImageFolder class).
    cached = _cache_home() / cache_name
    try:
        images = torch.from_numpy(np.load(cached, allow_pickle=False))
        if images.dtype == torch.uint8 and images.dim() == 4 and images.shape[0] == len(labels):
            return ImageData(images, labels, list(ds.classes))
    except (OSError, ValueError):
        pass  # absent or unreadable: decode

    images = _decode_all(paths, cfg.grayscale, cfg.image_size, field, sub_field)
    try:
        atomic_write(cached, lambda fh: np.save(fh, images.numpy(), allow_pickle=False))
    except OSError:
        pass  # an unwritable cache only costs speed on the next load
    return ImageData(images, labels, list(ds.classes))


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _decode_all(
    paths: Sequence[str], grayscale: bool, size: int | None, field: str, split_field: str
) -> Tensor:
    if not paths:
        raise ConfigError(split_field, "the split holds no images")
    chunk = 256
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    workers = max(1, min(8, (os.cpu_count() or 1), len(chunks)))
    # PIL and torch release the GIL while decoding / resizing, so threads run in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        imgs = [
            im
            for part in pool.map(lambda c: _decode_chunk(c, grayscale, size), chunks)
            for im in part
        ]
    shapes = {tuple(im.shape) for im in imgs}
    if len(shapes) > 1:
        raise ConfigError(
            f"{field}.image_size", f"images differ in size {sorted(shapes)[:3]}...; set image_size"
        )
    return torch.stack(imgs)

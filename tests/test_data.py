"""Data loading, splits, regularization set and batch augmentation."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import neuroreg.imagefolder as data_mod
from neuroreg.config import ConfigError, DataConfig, RegularizerConfig
from neuroreg.data import (
    ImageData,
    augment_batch,
    load_dataset,
    load_regularization_set,
    load_splits,
    resize_uint8,
    to_float,
    to_grayscale,
)

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _rows(d: ImageData) -> list[tuple[bytes, int]]:
    return sorted(
        (img.numpy().tobytes(), int(lab)) for img, lab in zip(d.images, d.labels, strict=True)
    )


# --- digits and synthetic ------------------------------------------------------------


def test_digits_shapes_dtype_and_range():
    t0 = time.perf_counter()
    train = load_dataset(DataConfig(name="digits", image_size=32), train=True)
    test = load_dataset(DataConfig(name="digits", image_size=32), train=False)
    print(f"digits load (train+test, 32x32): {time.perf_counter() - t0:.2f} s")
    assert (len(train), len(test)) == (1437, 360)  # fixed 80/20 of sklearn's 1797
    assert train.images.shape == (1437, 1, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.classes == [str(i) for i in range(10)]
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    native = load_dataset(DataConfig(name="digits", image_size=None), train=True)
    assert native.images.shape[-2:] == (8, 8)
    # 0..16 scaled to 0..255: every pixel is a multiple of 255/16 after rounding.
    vals = native.images.unique().double()
    assert torch.allclose(vals, (vals * 16 / 255).round() * 255 / 16, atol=0.5)
    # The train/test split is fixed and a partition of the 1797 images.
    again = load_dataset(DataConfig(name="digits", image_size=None), train=True)
    assert torch.equal(native.images, again.images)
    from sklearn.datasets import load_digits

    assert len(native) + len(
        load_dataset(DataConfig(name="digits", image_size=None), train=False)
    ) == len(load_digits().target)


def test_digits_equal_sklearns_loader_without_importing_sklearn():
    """The CSV read directly gives sklearn's load_digits images and labels exactly, and a
    process that only loads digits never imports sklearn (seconds of a sweep's start-up)."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from neuroreg.data import _digits_arrays, _digits_csv

    assert _digits_csv() is not None  # else the fallback (sklearn's loader) is what runs
    images, labels = _digits_arrays()
    d = load_digits()
    assert np.array_equal(images, np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    assert np.array_equal(labels, d.target.astype(np.int64)) and labels.dtype == np.int64
    # Callers get copies: changing what they got leaves the cached arrays (and the next load) alone.
    a = load_dataset(DataConfig(name="digits", image_size=None), train=True)
    a.images.zero_()
    a.labels.zero_()
    b = load_dataset(DataConfig(name="digits", image_size=None), train=True)
    assert int(b.images.max()) == 255 and set(b.labels.tolist()) == set(range(10))
    code = ("import sys; from neuroreg.data import load_dataset; from neuroreg.config import DataConfig; "
            "load_dataset(DataConfig(name='digits'), train=True); print('sklearn' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_grayscale_false_expands_grey_to_three_equal_channels():
    d = load_dataset(DataConfig(name="digits", image_size=None, grayscale=False), train=False)
    assert d.images.shape[1] == 3
    assert torch.equal(d.images[:, 0], d.images[:, 1]) and torch.equal(
        d.images[:, 1], d.images[:, 2]
    )


def test_synthetic_is_deterministic_and_class_dependent():
    a = load_dataset(DataConfig(name="synthetic", image_size=None), train=True)
    b = load_dataset(DataConfig(name="synthetic", image_size=None), train=True)
    t = load_dataset(DataConfig(name="synthetic", image_size=None), train=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(a.classes) == 4 and set(a.labels.tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a.images[: len(t)], t.images)
    # Orientation is the class: horizontal vs vertical gradient energy separates class 0 from 2.
    x = to_float(a.images)
    gx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    gy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    ratio = gx / gy
    assert ratio[a.labels == 0].min() > ratio[a.labels == 2].max()


# --- options: grayscale, resize, subset ----------------------------------------------------


def test_to_float_and_grayscale_and_resize_helpers():
    x = torch.tensor([[[[0, 255]], [[255, 255]], [[30, 0]]]], dtype=torch.uint8)  # 1 x 3 x 1 x 2
    assert torch.equal(to_float(x)[0, :, 0, 1], torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(TypeError):
        to_float(x.float())
    assert torch.equal(to_grayscale(x), torch.tensor([[[[95, 170]]]], dtype=torch.uint8))
    const = torch.full((2, 1, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(const, 13), torch.full((2, 1, 13, 13), 77, dtype=torch.uint8))
    # Antialiased downsampling of a checkerboard gives (about) flat grey, not aliasing.
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (((yy + xx) % 2) * 255).to(torch.uint8)[None, None]
    small = resize_uint8(checker, 8).float()
    assert (small - 127.5).abs().max() < 3


def test_subset_and_test_subset_sizes_are_fixed_by_split_seed():
    cfg = DataConfig(name="digits", image_size=None, subset=100, test_subset=50, split_seed=3)
    a, b = load_dataset(cfg, train=True), load_dataset(cfg, train=True)
    assert len(a) == 100 and torch.equal(a.images, b.images)
    assert len(load_dataset(cfg, train=False)) == 50
    other = load_dataset(
        DataConfig(name="digits", image_size=None, subset=100, split_seed=4), train=True
    )
    assert not torch.equal(a.images, other.images)
    full = {r for r in _rows(load_dataset(DataConfig(name="digits", image_size=None), train=True))}
    assert all(r in full for r in _rows(a))
    with pytest.raises(ConfigError, match="data.subset.*1437"):
        load_dataset(DataConfig(name="digits", subset=5000), train=True)


def test_splits_are_deterministic_disjoint_and_cover_the_training_set():
    cfg = DataConfig(name="digits", image_size=None, subset=200, val_fraction=0.1, split_seed=5)
    s1, s2 = load_splits(cfg), load_splits(cfg)
    assert (len(s1.train), len(s1.val), len(s1.test)) == (180, 20, 360)
    assert torch.equal(s1.val.images, s2.val.images) and torch.equal(
        s1.train.labels, s2.train.labels
    )
    # train + val is exactly the subset (as a multiset), so they are disjoint.
    merged = ImageData(
        torch.cat([s1.train.images, s1.val.images]),
        torch.cat([s1.train.labels, s1.val.labels]),
        s1.train.classes,
    )
    assert _rows(merged) == _rows(load_dataset(cfg, train=True))
    s3 = load_splits(
        DataConfig(name="digits", image_size=None, subset=200, val_fraction=0.1, split_seed=6)
    )
    assert _rows(s3.val) != _rows(s1.val)
    # At least one validation image whenever val_fraction > 0; none at 0.
    assert len(load_splits(DataConfig(name="digits", subset=20, val_fraction=0.001)).val) == 1
    assert len(load_splits(DataConfig(name="digits", subset=20, val_fraction=0.0)).val) == 0
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_splits(DataConfig(name="digits", subset=1, val_fraction=0.5))


# --- regularization set ----------------------------------------------------------------------


def test_regularization_set_comes_from_the_training_split():
    dcfg = DataConfig(name="digits", image_size=None, val_fraction=0.1)
    reg = load_regularization_set(RegularizerConfig(n=50, seed=1), dcfg)
    assert len(reg) == 50
    assert torch.equal(
        reg.images, load_regularization_set(RegularizerConfig(n=50, seed=1), dcfg).images
    )
    # The first n of the permutation: a larger n extends the same sequence.
    bigger = load_regularization_set(RegularizerConfig(n=80, seed=1), dcfg)
    assert torch.equal(bigger.images[:50], reg.images)
    assert not torch.equal(
        load_regularization_set(RegularizerConfig(n=50, seed=2), dcfg).images, reg.images
    )
    splits = load_splits(dcfg)
    given = load_regularization_set(RegularizerConfig(n=50, seed=1), dcfg, train_split=splits.train)
    assert torch.equal(given.images, reg.images)
    train_rows, val_rows = (
        set(_rows(splits.train)),
        set(_rows(splits.val)) - set(_rows(splits.train)),
    )
    assert all(r in train_rows for r in _rows(bigger))
    assert not any(
        r in val_rows for r in _rows(load_regularization_set(RegularizerConfig(n=1000), dcfg))
    )
    with pytest.raises(ConfigError, match="regularizer.n"):
        load_regularization_set(RegularizerConfig(n=5000), dcfg)


def test_regularization_set_from_its_own_data():
    reg = load_regularization_set(
        RegularizerConfig(n=30, data=DataConfig(name="synthetic", image_size=None)),
        DataConfig(name="digits"),
    )
    assert reg.images.shape == (30, 1, 16, 16) and len(reg.classes) == 4
    with pytest.raises(ConfigError, match="regularizer.data.root"):
        load_regularization_set(
            RegularizerConfig(n=30, data=DataConfig(name="imagefolder", root="/nonexistent/x")),
            DataConfig(),
        )


# --- augmentation ----------------------------------------------------------------------------


def _augment_reference(x, padding, hflip, generator):
    """Per-image reference with the draws augment_batch documents."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    out = []
    for i in range(n):
        p = F.pad(x[i : i + 1], (padding,) * 4, mode="reflect")[0]
        crop = p[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("padding,hflip", [(4, True), (2, False), (0, True)])
def test_augment_batch_matches_per_image_reference(padding, hflip):
    x = torch.rand(17, 3, 12, 10)
    got = augment_batch(x, padding, hflip, torch.Generator().manual_seed(7))
    ref = _augment_reference(x, padding, hflip, torch.Generator().manual_seed(7))
    assert torch.equal(got, ref)
    assert got.shape == x.shape


def test_augment_batch_is_deterministic_and_random():
    x = torch.rand(64, 1, 8, 8)
    a = augment_batch(x, 3, True, torch.Generator().manual_seed(1))
    b = augment_batch(x, 3, True, torch.Generator().manual_seed(1))
    c = augment_batch(x, 3, True, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    # Flips happen for about half of the images.
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).repeat(200, 1, 8, 1)
    flipped = augment_batch(ramp, 0, True, g)[:, 0, 0, 0] == 7
    assert 60 < int(flipped.sum()) < 140
    with pytest.raises(ConfigError, match="data.crop_padding"):
        augment_batch(x, 8, True, g)


# --- image folders and archives -----------------------------------------------------------

_COLOURS = {"cat": (30, 60, 90), "dog": (200, 100, 0), "emu": (10, 10, 250)}


def _write_folder(root: Path, n_train: int = 3, n_test: int = 2) -> None:
    from PIL import Image

    for split, n in (("train", n_train), ("test", n_test)):
        for cls, rgb in _COLOURS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                # Constant colour, lossless PNG: grey and resized values are exact.
                Image.new("RGB", (12, 10), rgb).save(d / f"{i:04d}.png")
            Image.new("RGB", (12, 10), rgb).save(d / "extra.jpg", quality=95)


def _check_folder_data(d: ImageData, n_per_class: int) -> None:
    assert d.classes == sorted(_COLOURS)
    assert d.images.shape == (3 * n_per_class, 1, 8, 8)
    for k, cls in enumerate(d.classes):
        imgs = d.images[d.labels == k].int()
        assert len(imgs) == n_per_class
        grey = round(sum(_COLOURS[cls]) / 3)
        assert (imgs - grey).abs().max() <= 3  # PNGs exact, the JPEG within compression error


def test_imagefolder_from_a_folder_with_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREG_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "imgs")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=8)
    train = load_dataset(cfg, train=True)
    _check_folder_data(train, 4)
    _check_folder_data(load_dataset(cfg, train=False), 3)
    assert len(list((tmp_path / "cache").glob("*-decoded-*.npy"))) == 2
    # Nothing is written into the user's folder (it would become an ImageFolder class).
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["test", "train"]

    def _no_decoding(*_a, **_k):
        raise AssertionError("decoded again despite the cache")

    original_decode = data_mod._decode
    monkeypatch.setattr(data_mod, "_decode", _no_decoding)
    again = load_dataset(cfg, train=True)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    # Another size or colour mode is another cache entry, so it must decode.
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(
            DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=6), train=True
        )
    # An edited file changes the key, so it must decode again.
    from PIL import Image

    Image.new("RGB", (12, 10), (0, 0, 0)).save(tmp_path / "imgs" / "train" / "dog" / "0000.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(cfg, train=True)
    monkeypatch.setattr(data_mod, "_decode", original_decode)
    colour = load_dataset(
        DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=8, grayscale=False),
        train=True,
    )
    assert colour.images.shape == (12, 3, 8, 8)
    assert torch.equal(
        colour.images[colour.labels == 0][0, :, 0, 0], torch.tensor([30, 60, 90], dtype=torch.uint8)
    )


def test_imagefolder_from_a_tar_gz_extracts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREG_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "src")
    archive = tmp_path / "data" / "set.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "train", arcname="train")
        tf.add(tmp_path / "src" / "test", arcname="test")
    cfg = DataConfig(name="imagefolder", root=str(archive), image_size=8, test_subset=4)
    train = load_dataset(cfg, train=True)
    _check_folder_data(train, 4)
    test = load_dataset(cfg, train=False)
    assert len(test) == 4
    # One extracted tree in the cache, no temp leftovers, nothing written beside the archive.
    trees = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(trees) == 1 and trees[0].name.startswith("set-")
    assert (trees[0] / "train" / "cat" / "0000.png").is_file()
    assert [p.name for p in archive.parent.iterdir()] == ["set.tar.gz"]

    def _no_tar(*_a, **_k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(tarfile, "open", _no_tar)
    assert torch.equal(load_dataset(cfg, train=True).images, train.images)


def test_archive_members_cannot_escape_the_cache(tmp_path, monkeypatch):
    import io

    monkeypatch.setenv("NEUROREG_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ConfigError, match="unsafe member"):
        load_dataset(DataConfig(name="imagefolder", root=str(archive)), train=True)
    assert not (tmp_path / "escaped.txt").exists()
    assert [p for p in (tmp_path / "cache").iterdir()] == []  # the temp tree is removed


def test_imagefolder_without_test_dir_has_an_empty_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREG_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "imgs", n_train=1, n_test=1)
    s = load_splits(
        DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=8, test_dir="")
    )
    assert len(s.test) == 0 and s.test.images.shape[1:] == (1, 8, 8)
    assert s.test.classes == sorted(_COLOURS)
    assert len(s.train) + len(s.val) == 6
    # Root may be the class folders themselves (train_dir '').
    flat = load_dataset(
        DataConfig(
            name="imagefolder", root=str(tmp_path / "imgs" / "train"), train_dir="", image_size=8
        ),
        train=True,
    )
    assert len(flat) == 6 and flat.classes == sorted(_COLOURS)


# --- errors before any decoding -------------------------------------------------------------


def test_missing_root_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROREG_DATA_ROOT", raising=False)

    def _no_decoding(*_a, **_k):
        raise AssertionError("decoding started before the config error")

    monkeypatch.setattr(data_mod, "_decode", _no_decoding)
    with pytest.raises(ConfigError, match=r"data\.root.*NEUROREG_DATA_ROOT.*download"):
        load_dataset(DataConfig(name="mnist"), train=True)
    with pytest.raises(ConfigError, match=r"data\.root.*does not exist"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "nope")), train=True)
    # An existing folder without the files: torchvision's error becomes a ConfigError.
    with pytest.raises(ConfigError, match=r"data\.root.*download: true"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)), train=False)
    with pytest.raises(ConfigError, match=r"data\.root"):
        load_dataset(
            DataConfig(name="imagefolder", root=str(tmp_path / "missing.tar.gz")), train=True
        )
    _write_folder(tmp_path / "imgs", n_train=1, n_test=1)
    with pytest.raises(ConfigError, match=r"data\.train_dir"):
        load_dataset(
            DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), train_dir="training"),
            train=True,
        )
    (tmp_path / "note.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"data\.root.*archive"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "note.txt")), train=True)


# --- real data (skipped without NEUROREG_DATA_ROOT / ../shared/data) ----------------------------


def test_mnist_from_the_real_copy(shared_data_root):
    t0 = time.perf_counter()
    train = load_dataset(
        DataConfig(name="mnist", root=str(shared_data_root), image_size=None), train=True
    )
    test = load_dataset(
        DataConfig(name="mnist", root=str(shared_data_root), image_size=None), train=False
    )
    t_native = time.perf_counter() - t0
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert torch.bincount(train.labels).tolist()[:2] == [5923, 6742]  # the published class counts
    assert len(train.classes) == 10
    t0 = time.perf_counter()
    cfg = DataConfig(
        name="mnist", root=str(shared_data_root), subset=1000, test_subset=500, image_size=32
    )
    sub, sub_test = load_dataset(cfg, train=True), load_dataset(cfg, train=False)
    t_sub = time.perf_counter() - t0
    assert sub.images.shape == (1000, 1, 32, 32) and len(sub_test) == 500
    t0 = time.perf_counter()
    full32 = load_dataset(
        DataConfig(name="mnist", root=str(shared_data_root), image_size=32), train=True
    )
    t_full32 = time.perf_counter() - t0
    assert full32.images.shape == (60000, 1, 32, 32)
    print(
        f"MNIST load: native train+test {t_native:.2f} s, subset 1000/500 @32 {t_sub:.2f} s, "
        f"full train @32 {t_full32:.2f} s"
    )


@pytest.mark.slow
def test_cifar10_archive_from_shared_data(shared_data_root):
    archive = shared_data_root / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    # The library's default cache ($NEUROREG_CACHE or ~/.cache/neuroreg; the shared folder is
    # read-only): the first run on a machine extracts 60k files and decodes the 10k test JPEGs,
    # later runs read the cached arrays.
    cfg = DataConfig(name="imagefolder", root=str(archive), test_subset=200)
    t0 = time.perf_counter()
    test = load_dataset(cfg, train=False)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = load_dataset(cfg, train=False)
    t_second = time.perf_counter() - t0
    print(
        f"CIFAR-10 archive, test split: first call {t_first:.1f} s, second (cached) {t_second:.2f} s"
    )
    assert test.classes == CIFAR10_CLASSES
    assert test.images.shape == (200, 1, 32, 32) and test.images.dtype == torch.uint8
    assert torch.equal(test.images, again.images) and torch.equal(test.labels, again.labels)
    # Real photos: a wide spread of grey values, all classes present in a random 200.
    assert float(test.images.float().std()) > 30 and len(test.labels.unique()) == 10
    # A different test_subset seed draws other images from the same cached decode.
    other = load_dataset(
        DataConfig(name="imagefolder", root=str(archive), test_subset=200, split_seed=1),
        train=False,
    )
    assert not torch.equal(other.images, test.images)
    assert t_second < 5.0  # the cache is used: decoding 10k JPEGs takes far longer

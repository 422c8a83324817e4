"""Image folders and .tar(.gz) archives of class folders, decoded once and cached.

The cache is $NEUROREG_CACHE or ~/.cache/neuroreg; see ``extract_archive`` and
``load_imagefolder`` for the keys that make an edited folder or archive decode again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neuroreg.atomic import atomic_write
from neuroreg.config import DataConfig
from neuroreg.errors import ConfigError
from neuroreg.images import ImageData, resize_uint8, to_grayscale
from neuroreg.safe_io import env_limit, is_regular, open_regular

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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


MAX_EXTRACT_BYTES = 256 << 30
"""Most bytes an archive may extract to (256 GiB; ImageNet's training set is ~140 GiB)."""
MAX_EXTRACT_RATIO = 50
"""Most extracted bytes per archive byte (JPEG and PNG barely compress: ~1)."""
MAX_MEMBERS = 5_000_000
"""Most members of an archive (ImageNet: 1.33 M files)."""
MAX_PIXELS = 64_000_000
"""Largest image decoded (64 megapixels); larger is refused by name, not decoded."""
FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")
"""Image formats decoded (ImageFolder's extensions); PIL's others (EPS runs Ghostscript) never."""


def _limits() -> tuple[int, int, int]:
    return (env_limit("NEUROREG_MAX_EXTRACT_BYTES", MAX_EXTRACT_BYTES),
            env_limit("NEUROREG_MAX_EXTRACT_RATIO", MAX_EXTRACT_RATIO),
            env_limit("NEUROREG_MAX_ARCHIVE_MEMBERS", MAX_MEMBERS))


def _extract_files(archive: Path, dest: Path) -> None:
    """Write the archive's regular files under ``dest``, within bounds.

    Hand-written instead of ``TarFile.extractall(filter="data")``: that sets mode, owner
    and times per member and is 2x slower on 60,000 small JPEGs (CIFAR-10: ~22 s vs ~10 s).
    Only regular files are written, links and devices are skipped, and names that are
    absolute or climb out with ``..`` are refused, so nothing lands outside ``dest``.
    Only plain and gzip tar are opened (tarfile would also expand bz2 and xz). Each
    member's size is checked before it is written: the total against
    $NEUROREG_MAX_EXTRACT_BYTES, the total per archive byte against
    $NEUROREG_MAX_EXTRACT_RATIO (a bomb), and the member count against
    $NEUROREG_MAX_ARCHIVE_MEMBERS. The caller removes ``dest`` on any failure.
    """
    max_bytes, max_ratio, max_members = _limits()
    with open_regular(archive, "data.root", ".tar/.tar.gz archive") as raw:
        size = os.fstat(raw.fileno()).st_size
        mode = "r:gz" if raw.read(2) == b"\x1f\x8b" else "r:"
        raw.seek(0)
        budget = min(max_bytes, max_ratio * size + (1 << 20))
        total = count = 0
        try:
            with tarfile.open(fileobj=raw, mode=mode) as tf:
                while (m := tf.next()) is not None:
                    tf.members.clear()  # no list of millions of members kept in memory
                    count += 1
                    if count > max_members:
                        raise ConfigError("data.root", f"{archive} holds more than {max_members} members; "
                                          "raise $NEUROREG_MAX_ARCHIVE_MEMBERS if that is meant")
                    if not m.isfile():
                        continue
                    rel = Path(os.path.normpath(m.name))
                    if rel.is_absolute() or rel.parts[:1] == ("..",) or not rel.parts:
                        raise ConfigError("data.root", f"{archive} holds an unsafe member name {m.name!r}")
                    total += m.size
                    if total > budget:
                        why = (f"{max_ratio} times its own size of {size} bytes (a decompression bomb?); raise "
                               "$NEUROREG_MAX_EXTRACT_RATIO" if budget < max_bytes else
                               f"{max_bytes >> 30} GiB; raise $NEUROREG_MAX_EXTRACT_BYTES")
                        raise ConfigError("data.root", f"{archive} extracts to more than {why} if that is meant "
                                          f"(stopped at member {m.name!r})")
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    if src is None:
                        continue
                    with open(target, "wb") as f:
                        shutil.copyfileobj(src, f)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
            raise ConfigError("data.root", f"cannot extract {archive}: {why} (give a complete plain or gzip tar "
                                           "of class folders, with space in the cache to extract it)") from None


def _decode(path: str) -> np.ndarray:
    """One image file -> uint8 H x W x 3 RGB, with PIL as ImageFolder's loader does.

    Only regular files in the formats of ``FORMATS``, at most $NEUROREG_MAX_PIXELS pixels
    (read from the header before decoding); a file that is none of these, or corrupt or
    truncated, is a ConfigError naming it.
    """
    from PIL import Image

    max_pixels = env_limit("NEUROREG_MAX_PIXELS", MAX_PIXELS)
    try:
        with open_regular(path, "data.root", "image file") as fh, Image.open(fh, formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ConfigError("data.root", f"image {path} is {w} x {h} pixels, above the limit of "
                                  f"{max_pixels}; shrink it, or raise $NEUROREG_MAX_PIXELS if that is meant")
            return np.asarray(im.convert("RGB"))
    except ConfigError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError("data.root", f"image {path} cannot be decoded ({why}); remove or replace it") from None


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


def load_imagefolder(cfg: DataConfig, train: bool, field: str, root: Path) -> ImageData:
    """One split of an image folder or archive at ``root`` (already checked to exist)."""
    from torchvision.datasets import ImageFolder

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
        if not is_regular(cached):  # absent, or something planted that a read would hang on
            raise OSError("no cached decode")
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
    """Size and mtime of an image file; a FIFO, device or socket among the images is refused by name."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError("data.root", f"cannot read image {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("data.root", f"{path} is not a regular file (a FIFO, device or socket?); remove it "
                                       "from the image folder")
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

"""Reading files a user or a results folder hands over, without being steered, hung or exhausted.

A leaf (numpy and the errors only). Every reader here:

- opens only regular files: a FIFO would block the open or the read forever, a device
  (``/dev/zero``) never ends, a socket cannot be read; they are refused by name before
  they are opened (``os.stat``) and again on the open descriptor (``os.fstat``), so a
  swap between the two cannot slip one in;
- reads at most a bounded number of bytes;
- turns every failure into a ``ConfigError`` naming the flag or field and the file.

``.npy`` files are read header first: the dtype must be a plain real number type (never an
object array, which is a pickle), the shape within limits, and the file long enough for
the data it claims, before a byte of the data is read.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from neuroreg.errors import ConfigError

MAX_NPY_BYTES = 8 << 30
"""Largest array read from a user's ``.npy`` (8 GiB; raise with $NEUROREG_MAX_NPY_BYTES)."""
MAX_NPY_HEADER = 1 << 16
"""Largest ``.npy`` header (numpy's own default limit is 10,000 bytes)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_regular(path: str | os.PathLike, field: str, what: str = "file") -> os.stat_result:
    """``path`` (links followed) exists and is a regular file; else a ConfigError naming ``field``."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        kind = "a broken link" if p.is_symlink() else "missing"
        raise ConfigError(field, f"{p} is {kind}; give the path of a {what}") from None
    except OSError as e:  # a link loop, a name too long, no permission
        raise ConfigError(field, f"cannot read {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(field, f"{p} is {_kind(st.st_mode)}, not a {what}; give a regular file")
    return st


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (links followed); never blocks, never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike, field: str, what: str = "file") -> BinaryIO:
    """A binary reader of the regular file ``path``, opened without blocking on a FIFO."""
    check_regular(path, field, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped after the check
            raise ConfigError(field, f"{path} is {_kind(st.st_mode)}, not a {what}; give a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, field: str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (a ConfigError naming the limit)."""
    with open_regular(path, field, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(field, f"{path} is larger than {_size(max_bytes)}; a {what} is a small file "
                                 f"(at most {_size(max_bytes)})")
    return data


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} bytes"


def env_limit(name: str, default: int) -> int:
    """An integer limit from $``name`` (a positive integer), else ``default``."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"${name}", f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"${name}", f"must be a positive integer, got {text!r}")
    return value


def npy_header(f: BinaryIO, path: str | os.PathLike, field: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of an open ``.npy`` file, read without its data."""
    magic = f.read(8)
    if magic[:2] == b"PK":
        raise ConfigError(field, f"{path} is an .npz archive; give one .npy array (np.save, not np.savez)")
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise ConfigError(field, f"{path} is not an .npy file (no NumPy header); save the array with np.save")
    major = magic[6]
    size_bytes = f.read(2 if major == 1 else 4)
    hlen = int.from_bytes(size_bytes, "little") if len(size_bytes) == (2 if major == 1 else 4) else -1
    if not 0 < hlen <= MAX_NPY_HEADER:
        raise ConfigError(field, f"{path} has a broken or oversized .npy header ({hlen} bytes)")
    raw = f.read(hlen)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError("shape")
        if not isinstance(fortran, bool) or not isinstance(descr, str):  # a list descr: structured (records)
            raise ValueError("descr")
        dtype = np.dtype(descr)
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError, UnicodeDecodeError):
        raise ConfigError(
            field, f"{path} has an unreadable .npy header; save a plain numeric array with np.save") from None
    return shape, dtype, fortran, f.tell()


def npy_info(
    path: str | os.PathLike, field: str, max_bytes: int | None = None, ndims: tuple[int, ...] = (1, 2, 3, 4),
) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a user's ``.npy`` with every check of ``load_npy``, without reading the data."""
    with open_regular(path, field, ".npy file") as f:
        shape, dtype, _, _ = _checked_header(f, path, field, max_bytes, ndims)
    return shape, dtype


def _checked_header(f: BinaryIO, path: str | os.PathLike, field: str, max_bytes: int | None,
                    ndims: tuple[int, ...]) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    limit = max_bytes if max_bytes is not None else env_limit("NEUROREG_MAX_NPY_BYTES", MAX_NPY_BYTES)
    shape, dtype, fortran, offset = npy_header(f, path, field)
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        what = {"c": "complex", "O": "Python objects (a pickle)", "U": "text", "S": "bytes", "V": "records"}
        raise ConfigError(field, f"{path} holds {what.get(dtype.kind, dtype.kind)} values ({dtype}); "
                                 "give an array of real numbers (float or int)")
    if len(shape) not in ndims:
        raise ConfigError(field, f"{path} has shape {shape}; expected {' or '.join(map(str, ndims))} dimensions")
    n = 1
    for s in shape:
        n *= s
    nbytes = n * dtype.itemsize
    if nbytes > limit:
        raise ConfigError(field, f"{path} claims shape {shape} ({_size(nbytes)} of {dtype}), above the limit "
                                 f"of {_size(limit)}; raise it with $NEUROREG_MAX_NPY_BYTES if that is meant")
    size = os.fstat(f.fileno()).st_size
    if size - offset < nbytes:
        raise ConfigError(field, f"{path} is truncated: its header claims {nbytes} bytes of data, "
                                 f"the file holds {max(0, size - offset)}")
    return shape, dtype, fortran, offset


def load_npy(
    path: str | os.PathLike, field: str, max_bytes: int | None = None, ndims: tuple[int, ...] = (1, 2, 3, 4),
) -> np.ndarray:
    """A user's ``.npy`` of real numbers: header checked, then the data read (never a pickle).

    Refused by name: not a regular file, an ``.npz``, an object / structured / complex /
    string array, a rank outside ``ndims``, more than ``max_bytes`` of data, or a file
    shorter than its header claims.
    """
    with open_regular(path, field, ".npy file") as f:
        shape, dtype, fortran, _ = _checked_header(f, path, field, max_bytes, ndims)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        data = np.fromfile(f, dtype=dtype, count=n) if n else np.empty(0, dtype)
    if data.size != n:
        raise ConfigError(field, f"{path} is truncated (read {data.size} of {n} values)")
    return data.reshape(shape, order="F" if fortran else "C")

"""Hostile and malformed input, every CLI, one table (issue 15).

Each case runs the real command in a fresh folder and asserts: exit 2; a message that
names the culprit (flag, field or file); no traceback; no file created or changed in the
folder (pre-existing files keep their bytes); no Ray session started (its temp dir,
RAY_TMPDIR, stays empty); and for the hostile ones, no payload effect (the payload
would create the file PWNED).
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PWNED = "PWNED"
TOUCH = f"touch {PWNED}"


class _Payload:
    """Unpickling this runs ``touch PWNED`` in the working directory."""

    def __reduce__(self):
        return (os.system, (TOUCH,))


def _tables(tmp: Path) -> None:
    """A gathered results root with one small trials table (for query / sql / report)."""
    import pandas as pd

    from analysis.store import sweep_file, to_arrow, write_atomic

    df = pd.DataFrame({"sweep": ["s"] * 40, "trial_id": [f"t{i}" for i in range(40)], "status": ["done"] * 40,
                       "best_val_acc": [i / 40 for i in range(40)], "regularizer.alpha": [0.5] * 40})
    path = sweep_file(tmp / "results", "trials", "s")
    path.parent.mkdir(parents=True)
    write_atomic(to_arrow(df, "trials", "s"), path)


def _checkpoint(kind: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        import torch

        p = tmp / "c.pt"
        if kind == "random":
            p.write_bytes(os.urandom(4096))
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "pickle":
            p.write_bytes(pickle.dumps({"model": _Payload()}))
        elif kind == "torch_pickle":
            torch.save({"model": _Payload()}, p)
        elif kind == "text":
            p.write_bytes(b"model: not a checkpoint\n")
        elif kind == "not_a_dict":
            torch.save([1, 2, 3], p)
        elif kind == "missing_keys":
            torch.save({"model": {}}, p)
        elif kind == "huge":  # 4 GiB of zeros, sparse: refused by its header, never read whole
            with open(p, "wb") as f:
                f.truncate(4 << 30)
        elif kind == "dev_zero":
            p.symlink_to("/dev/zero")
    return make


def _file(name: str, content: str | bytes) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return make


def _link(name: str, target: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).symlink_to(target)
    return make


def _all(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        for m in makers:
            m(tmp)
    return make


@dataclass(frozen=True)
class _RLimit:
    """A resource limit for the command's process (a preexec_fn, or a request to the zygote)."""

    name: str
    value: int

    def __call__(self) -> None:
        resource.setrlimit(getattr(resource, self.name), (self.value, self.value))


def _fsize_limit(n: int) -> Callable[[], None]:
    """Simulate a full disk: writes past n bytes fail (Python ignores SIGXFSZ, so EFBIG)."""
    return _RLimit("RLIMIT_FSIZE", n)


SPACE = "name: s\nbase: {data: {name: digits}, train: {epochs: 1}}\n"
RANDOM = "search: {algorithm: random}\n"


@dataclass
class Case:
    cls: str
    argv: list[str]
    culprit: str
    setup: Callable[[Path], None] | None = None
    preexec: Callable[[], None] | None = None
    timeout: float = 90
    says: str = ""
    env: dict[str, str] = field(default_factory=dict)


SWEEP = ["sweep.run", "--storage", "res"]
CASES: dict[str, Case] = {
    # -- code from queries, configs and checkpoints (hostile: PWNED must not appear) --------------
    "query-where-python": Case("code", ["analysis.query", "trials", "--results", "results", "--where",
                                        f"__import__('os').system('{TOUCH}') == 0"], "--where", _tables),
    "query-where-dunder": Case("code", ["analysis.query", "trials", "--results", "results", "--where",
                                        "best_val_acc.__class__ == 1"], "--where", _tables),
    "sql-copy-to-file": Case("code", ["analysis.sql", "--results", "results", f"COPY (SELECT 1) TO '{PWNED}'"],
                             "", _tables, says="error"),
    "sql-read-host-file": Case("code", ["analysis.sql", "--results", "results",
                                        "SELECT * FROM read_text('/etc/hostname')"], "", _tables, says="error"),
    "sql-attach": Case("code", ["analysis.sql", "--results", "results", f"ATTACH '{PWNED}.db' AS x"],
                       "", _tables, says="error"),
    "config-python-tag": Case("code", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                              _file("c.yaml", f"!!python/object/apply:os.system ['{TOUCH}']\n")),
    "space-python-tag": Case("code", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                             _file("s.yaml", f"name: !!python/object/apply:os.system ['{TOUCH}']\n")),
    "checkpoint-pickle-code": Case("code", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                   "c.pt", _checkpoint("pickle"), says="not a neuroreg checkpoint"),
    "checkpoint-torch-pickle-code": Case("code", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                         "c.pt", _checkpoint("torch_pickle"), says="not a neuroreg checkpoint"),
    # -- paths and names that escape or are no name ------------------------------------------------
    "name-escapes": Case("paths", [*SWEEP, "--space", "alpha_th.yaml", "--name", "../escape"], "--name"),
    "resume-name-escapes": Case("paths", [*SWEEP, "--resume", "--name", "../outside/x"], "--name"),
    "name-newline": Case("paths", [*SWEEP, "--space", "alpha_th.yaml", "--name", "a\nb"], "--name"),
    "name-control-char": Case("paths", [*SWEEP, "--space", "alpha_th.yaml", "--name", "a\x01b"], "--name"),
    "name-nul-in-file": Case("paths", [*SWEEP, "--space", "s.yaml", "--dry-run"], "name",
                             _file("s.yaml", 'name: "a\\0b"\nbase: {}\n')),
    "storage-is-a-file": Case("paths", ["sweep.run", "--space", "alpha_th.yaml", "--storage", "f.txt"],
                              "--storage", _file("f.txt", "keep me")),
    "train-out-is-a-file": Case("paths", ["neuroreg.train", "--out", "f.txt"], "--out", _file("f.txt", "keep")),
    "query-out-txt": Case("paths", ["analysis.query", "trials", "--results", "results", "--out", "x.txt"],
                          "--out", _tables),
    "sql-out-folder": Case("paths", ["analysis.sql", "--results", "results", "--out", "results",
                                     "SELECT 1"], "--out", _tables),
    "gather-nothing": Case("paths", ["analysis.gather", "empty", "--results", "r"], "empty",
                           lambda t: (t / "empty").mkdir(), says="no trial folders"),
    "report-unknown-sweep": Case("paths", ["analysis.report", "nope", "--results", "results"], "nope", _tables),
    # -- flags --resume cannot honour, impossible numbers --------------------------------------------
    "resume-max-concurrent": Case("flags", [*SWEEP, "--resume", "--name", "x", "--max-concurrent", "2"],
                                  "--max-concurrent"),
    "resume-gpus-per-trial": Case("flags", [*SWEEP, "--resume", "--name", "x", "--gpus-per-trial", "1"],
                                  "--gpus-per-trial"),
    "resume-cpus-per-trial": Case("flags", [*SWEEP, "--resume", "--name", "x", "--cpus-per-trial", "1"],
                                  "--cpus-per-trial"),
    "wandb-not-installed": Case("flags", [*SWEEP, "--space", "alpha_th.yaml", "--wandb", "proj"], "--wandb"),
    "resume-mlflow": Case("flags", [*SWEEP, "--resume", "--name", "x", "--mlflow", "file:./mlruns"], "--mlflow"),
    "num-cpus-negative": Case("flags", [*SWEEP, "--space", "alpha_th.yaml", "--num-cpus", "-3"], "--num-cpus"),
    # -- files that parse but are wrong ---------------------------------------------------------------
    "space-duplicate-key": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "appears twice",
                                _file("s.yaml", "name: s\nname: t\nbase: {}\n")),
    "config-duplicate-key": Case("spaces", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                                 _file("c.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n"), says="twice"),
    "metric-never-reported-optuna": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "metric",
                                         _file("s.yaml", SPACE + "metric: clean_accuracy\nsearch: {algorithm: optuna}\n"
                                               "space: {regularizer.alpha: {uniform: [0.1, 1]}}\n")),
    "metric-never-reported-random": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "metric",
                                         _file("s.yaml", SPACE + "metric: median_l2\n" + RANDOM)),
    "when-never-holds": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "space.regularizer.th.when",
                             _file("s.yaml", SPACE + RANDOM + "space:\n  regularizer.target: {choice: [pixel]}\n"
                                   "  regularizer.th: {uniform: [0.1, 0.9], when: {regularizer.target: features}}\n")),
    "int-bounds-beyond-int64": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "model.width",
                                    _file("s.yaml", SPACE + RANDOM + "space: {model.width: {int: [1, 10000000000000000000000]}}\n")),
    "section-not-a-mapping": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "search",
                                  _file("s.yaml", SPACE + "search: []\n"), says="mapping"),
    "alpha-negative": Case("spaces", [*SWEEP, "--space", "s.yaml", "--dry-run"], "regularizer.alpha",
                           _file("s.yaml", SPACE + RANDOM + "space: {regularizer.alpha: {uniform: [-1, 1]}}\n")),
    "th-out-of-range": Case("spaces", ["neuroreg.train", "--out", "run", "--set", "regularizer.th=1.5"],
                            "regularizer.th"),
    "unknown-config-key": Case("spaces", ["neuroreg.train", "--out", "run", "--set", "regularizer.alfa=1"],
                               "regularizer.alfa"),
    # -- syntax: YAML, filters, checkpoints ----------------------------------------------------------
    "config-not-yaml": Case("syntax", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                            _file("c.yaml", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))),
    "config-broken-yaml": Case("syntax", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                               _file("c.yaml", "train: [unclosed\n")),
    "resume-saved-spec-not-utf8": Case("syntax", [*SWEEP, "--resume", "--name", "x"], "--name",
                                       _file("res/x/sweep.yaml", b"\xff\xfe{")),
    "resume-saved-spec-broken": Case("syntax", [*SWEEP, "--resume", "--name", "x"], "--name",
                                     _file("res/x/sweep.yaml", "name: {unclosed\n")),
    "resume-broken-space": Case("syntax", [*SWEEP, "--resume", "--space", "s.yaml"], "--space",
                                _file("s.yaml", "name: [broken\n")),
    "query-where-dangling": Case("syntax", ["analysis.query", "trials", "--results", "results", "--where",
                                            "best_val_acc >"], "--where", _tables),
    "sql-syntax": Case("syntax", ["analysis.sql", "--results", "results", "SELEC 1"], "", _tables, says="error"),
    "checkpoint-random-bytes": Case("syntax", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                    "c.pt", _checkpoint("random"), says="not a neuroreg checkpoint"),
    "checkpoint-empty": Case("syntax", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                             "c.pt", _checkpoint("empty"), says="not a neuroreg checkpoint"),
    "checkpoint-text": Case("syntax", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                            "c.pt", _checkpoint("text"), says="not a neuroreg checkpoint"),
    "checkpoint-not-a-dict": Case("syntax", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                  "c.pt", _checkpoint("not_a_dict"), says="not a neuroreg checkpoint"),
    "checkpoint-missing-keys": Case("syntax", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                    "c.pt", _checkpoint("missing_keys"), says="missing"),
    # -- what used to hang ----------------------------------------------------------------------------
    "num-samples-huge": Case("hangs", [*SWEEP, "--space", "s.yaml", "--dry-run"], "num_samples",
                             _file("s.yaml", SPACE + RANDOM + "num_samples: 100000000\n"), timeout=60),
    "unreachable-address": Case("hangs", [*SWEEP, "--space", "alpha_th.yaml", "--address", "127.0.0.1:{free_port}"],
                                "127.0.0.1:", timeout=60),
    # -- unicode -----------------------------------------------------------------------------------------
    "name-unicode": Case("unicode", [*SWEEP, "--space", "alpha_th.yaml", "--name", "ünï"], "--name"),
    "space-utf16": Case("unicode", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                        _file("s.yaml", SPACE.encode("utf-16")), says="UTF-8"),
    "space-unicode-key": Case("unicode", [*SWEEP, "--space", "s.yaml", "--dry-run"], "space.regularizer.ålpha",
                              _file("s.yaml", SPACE + RANDOM + "space: {regularizer.ålpha: {uniform: [0.1, 1]}}\n")),
    "where-unicode-column": Case("unicode", ["analysis.query", "trials", "--results", "results", "--where",
                                             "\u202ebest_val_acc > 0"], "--where", _tables),
    # -- huge files --------------------------------------------------------------------------------------
    "space-over-1-mib": Case("huge", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                             _file("s.yaml", SPACE + "description: '" + "x" * (2 << 20) + "'\n"), says="MiB"),
    "space-alias-bomb": Case("huge", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                             _file("s.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                                 f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))),
                             says="aliases"),
    "checkpoint-4-gib-sparse": Case("huge", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"], "c.pt",
                                    _checkpoint("huge"), says="not a neuroreg checkpoint", timeout=60),
    # -- symlinks ------------------------------------------------------------------------------------------
    "space-dangling-link": Case("symlinks", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                                _link("s.yaml", "gone.yaml")),
    "space-link-loop": Case("symlinks", [*SWEEP, "--space", "s.yaml", "--dry-run"], "--space",
                            _all(_link("s.yaml", "t.yaml"), _link("t.yaml", "s.yaml"))),
    "config-link-to-dev-zero": Case("symlinks", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                                    _link("c.yaml", "/dev/zero"), timeout=60),
    "checkpoint-link-to-dev-zero": Case("symlinks", ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"],
                                        "c.pt", _checkpoint("dev_zero"), timeout=60),
    "storage-link-to-file": Case("symlinks", ["sweep.run", "--space", "alpha_th.yaml", "--storage", "s"],
                                 "--storage", _all(_file("f.txt", "keep"), _link("s", "f.txt"))),
    # -- read-only places (root ignores permission bits, so a read-only file system: /proc) ------------
    "storage-read-only": Case("read-only", ["sweep.run", "--space", "alpha_th.yaml", "--storage", "/proc/neuroreg"],
                              "--storage"),
    "train-out-read-only": Case("read-only", ["neuroreg.train", "--out", "/proc/neuroreg"], "--out"),
    "sql-out-read-only": Case("read-only", ["analysis.sql", "--results", "results", "--out", "/proc/x.csv",
                                            "SELECT 1"], "--out", _tables),
    # -- a full disk (simulated with RLIMIT_FSIZE): nothing already written is lost ---------------------
    "sql-out-disk-full": Case("disk-full", ["analysis.sql", "--results", "results", "--out", "old.csv",
                                            "SELECT * FROM trials, range(2000)"], "old.csv",
                              _all(_tables, _file("old.csv", "a,b\n1,2\n")), preexec=_fsize_limit(64 << 10)),
    "query-out-disk-full": Case("disk-full", ["analysis.query", "trials", "--results", "results", "--out",
                                              "old.csv"], "old.csv",
                                _all(_tables, _file("old.csv", "a,b\n1,2\n")), preexec=_fsize_limit(16)),
}


# --- issue 22: untrusted files and extreme values --------------------------------------------------

MEMORY = 4 << 30
"""Address-space cap (ulimit -v) of the cases that used to allocate without bound."""
ARROW_MEMORY = 8 << 30
"""The cap where pyarrow reads tables: below ~6 GiB of address space its default thread pools
(8 I/O threads here) cannot start and the read hangs, whatever the data."""


def _memory_limit(n: int = MEMORY) -> Callable[[], None]:
    return _RLimit("RLIMIT_AS", n)


def _forged_checkpoint(config: dict | None = None, num_classes: int = 10, in_chans: int = 1, width: int = 2,
                       weights: str = "ok", name: str = "c.pt") -> Callable[[Path], None]:
    """A checkpoint of a tiny real model whose stored config (merged over a digits run's) says ``config``;
    ``{tmp}`` in string values becomes the case folder."""
    def make(tmp: Path) -> None:
        import torch

        from neuroreg.checkpoint import build_model, trainer_state
        from neuroreg.config import RunConfig, config_with

        base = RunConfig.from_dict({"model": {"width": width}, "data": {"image_size": 8}})
        torch.manual_seed(0)
        model = build_model(base, num_classes, in_chans)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(0)
        state = trainer_state(base, model, opt, None, g, g, num_classes, in_chans, 1, 0.1, 0.5, 0.0, [])
        flat = {k: v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v for k, v in (config or {}).items()}
        state["config"] = config_with(base.to_dict(), flat)
        if weights == "nan":
            state["model"]["fc.weight"][0, 0] = float("nan")
        torch.save(state, tmp / name)
    return make


def _fifo(name: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(tmp / name)
    return make


def _npy(name: str, kind: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        p = tmp / name
        if kind == "object":
            np.save(p, np.array([{"a": 1}, _Payload()], dtype=object), allow_pickle=True)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "npz":
            with open(p, "wb") as f:
                np.savez(f, r=rng.random((20, 8)))
        elif kind == "one_repeat":
            np.save(p, rng.random((1, 20, 8)))
        elif kind == "complex":
            np.save(p, rng.random((20, 8)) + 1j)
        elif kind == "no_neurons":
            np.save(p, np.zeros((20, 0)))
        elif kind == "nan":
            r = rng.random((20, 8))
            r[3, 3] = np.nan
            np.save(p, r)
        elif kind == "constant":
            np.save(p, np.zeros((3, 20, 8), dtype=np.float32))
        elif kind == "huge_header":  # claims 20 x 10^10 float64 (1.6 TB); holds 1 KiB
            header = {"descr": "<f8", "fortran_order": False, "shape": (20, 10**10)}
            with open(p, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.write(b"\0" * 1024)
        elif kind == "truncated":
            np.save(p, rng.random((20, 8)))
            p.write_bytes(p.read_bytes()[:200])
        elif kind == "wrong_stimuli":
            np.save(p, rng.random((4, 19, 8)))
        elif kind == "text":
            p.write_text("1,2,3\n")
    return make


def _tar(name: str, members: dict[str, bytes | int], compress: str = "gz") -> Callable[[Path], None]:
    """A tar archive; an int member is that many zero bytes (streamed: a bomb costs no memory here)."""
    def make(tmp: Path) -> None:
        import io
        import tarfile

        class Zeros(io.RawIOBase):
            def __init__(self, n: int):
                self.left = n

            def readable(self) -> bool:
                return True

            def readinto(self, b) -> int:
                k = min(len(b), self.left)
                b[:k] = bytes(k)
                self.left -= k
                return k

        with tarfile.open(tmp / name, f"w:{compress}") as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = data if isinstance(data, int) else len(data)
                tf.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))
    return make


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels in its header (and holds one byte of image data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _image_folder(bad_name: str, bad: bytes | None) -> Callable[[Path], None]:
    """imgs/{train,test}/{a,b}/*.png of 8 x 8 pixels, plus one bad file (None: a FIFO) at ``bad_name``."""
    def make(tmp: Path) -> None:
        from PIL import Image

        for split in ("train", "test"):
            for cls in ("a", "b"):
                d = tmp / "imgs" / split / cls
                d.mkdir(parents=True)
                for i in range(3):
                    Image.new("L", (8, 8), 40 * i).save(d / f"{i}.png")
        (tmp / "cache").mkdir()
        if bad is None:
            os.mkfifo(tmp / bad_name)
        else:
            (tmp / bad_name).write_bytes(bad)
    return make


EVAL = ["neuroreg.evaluate", "--checkpoint", "c.pt", "--out", "ev"]
NO_ROOT = {"NEUROREG_DATA_ROOT": ""}
NEURAL = ["neuroreg.train", "--out", "run", "--set", "regularizer.target=neural", "--set", "regularizer.alpha=1",
          "--set", "regularizer.n=20", "--set", "regularizer.neural_responses=r.npy"]
V1SIM_FOLDER = ["neuroreg.v1sim", "--out", "r.npy", "--set", "data.name=imagefolder", "--set", "data.root=imgs",
                "--set", "regularizer.n=4", "--set", "data.image_size=8"]
CACHE = {"NEUROREG_CACHE": "{tmp}/cache"}

CASES.update({
    # -- a checkpoint never steers: data location, download, split folders, surrogate ---------------------------
    "ckpt-download-elsewhere": Case("steer", EVAL, "--data-root", _forged_checkpoint(
        {"data.name": "mnist", "data.download": True, "data.root": "{tmp}/elsewhere/mnist"}), env=NO_ROOT),
    "ckpt-imagefolder-usr": Case("steer", EVAL, "--data-root", _forged_checkpoint(
        {"data.name": "imagefolder", "data.root": "/usr", "data.test_dir": "."}), env=NO_ROOT, timeout=60),
    "ckpt-imagefolder-usr-env-root": Case("steer", EVAL, "data.test_dir", _all(_forged_checkpoint(
        {"data.name": "imagefolder", "data.root": "/usr", "data.test_dir": "."}), lambda t: (t / "data").mkdir()),
        env={"NEUROREG_DATA_ROOT": "{tmp}/data"}, timeout=60),
    "ckpt-surrogate-from-file": Case("steer", [*EVAL, "--suites", "transfer"], "evaluation.surrogate",
                                     _all(_forged_checkpoint({"evaluation.surrogate": "{tmp}/s.pt"}),
                                          _forged_checkpoint(name="s.pt"))),
    "ckpt-width-3000": Case("steer", EVAL, "model.width", _forged_checkpoint({"model.width": 3000}),
                            preexec=_memory_limit(), timeout=60),
    "ckpt-width-mismatch": Case("steer", EVAL, "c.pt", _forged_checkpoint({"model.width": 256}),
                                preexec=_memory_limit(), says="shape", timeout=60),
    "ckpt-nan-weights": Case("steer", EVAL, "c.pt", _forged_checkpoint(weights="nan"), says="NaN"),
    "ckpt-stored-alpha-nan": Case("steer", EVAL, "regularizer.alpha",
                                  _forged_checkpoint({"regularizer.alpha": float("nan")})),
    "ckpt-stored-unknown-field": Case("steer", EVAL, "model.evil", _forged_checkpoint({"model.evil": 1})),
    "ckpt-class-count-differs": Case("steer", EVAL, "data.name", _forged_checkpoint(num_classes=4), says="classes"),
    "ckpt-channels-differ": Case("steer", EVAL, "data.grayscale", _forged_checkpoint(in_chans=3)),
    "ckpt-fifo": Case("steer", EVAL, "c.pt", _fifo("c.pt"), says="FIFO", timeout=60),
    "evaluate-device-bogus": Case("steer", [*EVAL, "--device", "tpu:0"], "--device", _forged_checkpoint()),
    # -- archives and images: bounded, named -----------------------------------------------------------------
    "archive-bomb": Case("bounded", [*V1SIM_FOLDER[:-6], "--set", "data.root=a.tar.gz"], "a.tar.gz",
                         _all(_tar("a.tar.gz", {"train/a/0.png": 256 << 20}), lambda t: (t / "cache").mkdir()),
                         env=CACHE, says="times its own size", preexec=_memory_limit(), timeout=60),
    "archive-bz2": Case("bounded", [*V1SIM_FOLDER[:-6], "--set", "data.root=a.tar.gz"], "a.tar.gz",
                        _all(_tar("a.tar.gz", {"train/a/0.png": b"x"}, "bz2"), lambda t: (t / "cache").mkdir()),
                        env=CACHE, says="cannot extract"),
    "archive-many-members": Case("bounded", [*V1SIM_FOLDER[:-6], "--set", "data.root=a.tar"], "a.tar",
                                 _all(_tar("a.tar", {f"train/a/{i}.png": b"x" for i in range(20)}, ""),
                                      lambda t: (t / "cache").mkdir()),
                                 env={**CACHE, "NEUROREG_MAX_ARCHIVE_MEMBERS": "5"}, says="members"),
    "archive-escapes": Case("bounded", [*V1SIM_FOLDER[:-6], "--set", "data.root=a.tar"], "a.tar",
                            _all(_tar("a.tar", {"../../evil.png": b"x"}, ""), lambda t: (t / "cache").mkdir()),
                            env=CACHE, says="unsafe member"),
    "image-20000-px": Case("bounded", V1SIM_FOLDER, "imgs/train/a/big.png",
                           _image_folder("imgs/train/a/big.png", _png_header(20000, 20000)), env=CACHE,
                           preexec=_memory_limit(), timeout=60),
    "image-truncated-jpeg": Case("bounded", V1SIM_FOLDER, "imgs/train/b/bad.jpg",
                                 _image_folder("imgs/train/b/bad.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
                                 env=CACHE, says="cannot be decoded"),
    "image-eps-disguised": Case("code", V1SIM_FOLDER, "imgs/train/a/x.png", _image_folder(
        "imgs/train/a/x.png", f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n({TOUCH}) pop\n".encode()),
        env=CACHE),
    "image-fifo": Case("bounded", V1SIM_FOLDER, "imgs/train/a/fifo.png", _image_folder("imgs/train/a/fifo.png", None),
                       env=CACHE, timeout=60),
    "config-fifo": Case("bounded", ["neuroreg.train", "--config", "c.yaml", "--out", "run"], "--config",
                        _fifo("c.yaml"), says="FIFO", timeout=60),
    "tables-fifo": Case("bounded", ["analysis.query", "trials", "--results", "results"], "s.parquet",
                        _all(_tables, lambda t: (t / "results/tables/trials/s.parquet").unlink(),
                             _fifo("results/tables/trials/s.parquet")), timeout=60),
    "sql-50-million-rows": Case("bounded", ["analysis.sql", "--results", "results",
                                            "SELECT * FROM trials, range(50000000)"], "--max-rows", _tables,
                                preexec=_memory_limit(ARROW_MEMORY), timeout=90),
    # -- recordings ---------------------------------------------------------------------------------------------
    **{f"recording-{kind}": Case("recordings", NEURAL, "r.npy", _npy("r.npy", kind), says=says, timeout=60,
                                 preexec=_memory_limit())
       for kind, says in (("object", "pickle"), ("empty", "not an .npy"), ("npz", ".npz"),
                          ("one_repeat", "repeat"), ("complex", "complex"), ("no_neurons", "no neurons"),
                          ("nan", "NaN"), ("constant", "varies"), ("huge_header", "limit"),
                          ("truncated", "truncated"), ("wrong_stimuli", "regularizer.n"), ("text", "not an .npy"))},
    "recording-fifo": Case("recordings", NEURAL, "r.npy", _fifo("r.npy"), says="FIFO", timeout=60),
    "recording-folder": Case("recordings", NEURAL, "r.npy", lambda t: (t / "r.npy").mkdir(), says="folder"),
    "matrix-not-square": Case("recordings", [*NEURAL[:-2], "--set", "regularizer.neural_matrix=m.npy"], "m.npy",
                              _npy("m.npy", "wrong_stimuli")),
    "v1sim-zero-repeats": Case("recordings", ["neuroreg.v1sim", "--repeats", "0", "--out", "r.npy"], "--repeats"),
    "v1sim-one-repeat": Case("recordings", ["neuroreg.v1sim", "--repeats", "1", "--out", "r.npy"], "--repeats"),
    "v1sim-out-not-npy": Case("recordings", ["neuroreg.v1sim", "--out", "responses"], "--out", says=".npy"),
    "v1sim-out-folder": Case("recordings", ["neuroreg.v1sim", "--out", "d.npy"], "--out",
                             lambda t: (t / "d.npy").mkdir()),
    "v1sim-neurons-negative": Case("recordings", ["neuroreg.v1sim", "--neurons", "-5", "--out", "r.npy"],
                                   "--neurons"),
    "v1sim-too-many-values": Case("recordings", ["neuroreg.v1sim", "--neurons", "100000", "--repeats", "1000",
                                                 "--out", "r.npy"], "--neurons", preexec=_memory_limit()),
    # -- limits on sizes and values ------------------------------------------------------------------------
    **{f"limit-{key}={value}": Case("limits", ["neuroreg.train", "--out", "run", "--set", f"{key}={value}"], key,
                                    says=says, preexec=_memory_limit())
       for key, value, says in (
           ("model.width", "1000000", "NEUROREG_MAX_MODEL_WIDTH"), ("data.image_size", "3000", "limit"),
           ("regularizer.n_pairs", "1000000000", "limit"), ("regularizer.batch_k", "100000", "limit"),
           ("regularizer.n", "100000000", "limit"), ("train.batch_size", "10000000", "limit"),
           ("model.blur_sigma", ".nan", "finite"), ("model.blur_sigma", ".inf", "finite"),
           ("regularizer.alpha", ".nan", "nan"), ("regularizer.alpha", ".inf", "finite"),
           ("regularizer.eps", ".nan", "finite"), ("optim.weight_decay", ".nan", "finite"),
           ("optim.lr", ".inf", "finite"), ("train.seed", "100000000000000000000000", "seed"),
           ("data.split_seed", "-1", "seed"), ("regularizer.alpha", "1" + "0" * 400, "float"),
           ("evaluation.boundary_steps", "10000000000", "limit"),
           ("evaluation.transfer_epsilons", "[0, .nan]", "finite"),
           ("evaluation.pgd_eps_l2", "[0.1, .inf]", "finite"))},
    # -- YAML in --set and --where ---------------------------------------------------------------------------
    "set-unclosed-list": Case("yaml", ["neuroreg.train", "--out", "run", "--set", "regularizer.layers=[conv1"],
                              "--set regularizer.layers"),
    "set-python-tag": Case("code", ["neuroreg.train", "--out", "run", "--set",
                                    f"train.seed=!!python/object/apply:os.system ['{TOUCH}']"], "--set train.seed"),
    "set-deep-nesting": Case("yaml", ["neuroreg.train", "--out", "run", "--set",
                                      "regularizer.layers=" + "[" * 3000 + "]" * 3000], "nest"),
    "set-in-v1sim": Case("yaml", ["neuroreg.v1sim", "--out", "r.npy", "--set", "regularizer.n={a: 1"], "--set"),
    "set-in-evaluate": Case("yaml", [*EVAL, "--set", "evaluation.suites=[clean"], "--set", _forged_checkpoint()),
    "where-unclosed-list": Case("yaml", ["analysis.query", "trials", "--results", "results", "--where",
                                         "best_val_acc=[1"], "--where", _tables),
    "where-python-tag": Case("code", ["analysis.query", "trials", "--results", "results", "--where",
                                      f"status=!!python/object/apply:os.system ['{TOUCH}']"], "--where", _tables),
    "where-3000-parens": Case("yaml", ["analysis.query", "trials", "--results", "results", "--where",
                                       "(" * 3000 + "best_val_acc > 0" + ")" * 3000], "--where", _tables),
    "where-3000-nots": Case("yaml", ["analysis.query", "trials", "--results", "results", "--where",
                                     "not " * 3000 + "best_val_acc > 0"], "--where", _tables),
})


def _study_db(name: str, study: str, trials: int) -> Callable[[Path], None]:
    """An SQLite file with an Optuna study of ``trials`` finished trials (0: a database without Optuna's tables)."""
    def make(tmp: Path) -> None:
        import sqlite3

        if not trials:
            with sqlite3.connect(tmp / name) as c:
                c.execute("CREATE TABLE notes (a TEXT)")
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        st = optuna.create_study(study_name=study, storage=f"sqlite:///{tmp / name}")
        st.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return make


OPTUNA = "search: {algorithm: optuna}\nmetric: val_acc\nspace: {regularizer.alpha: {uniform: [0.5, 2]}}\n"
REG = "name: s\nbase: {data: {name: digits}, train: {epochs: 1}, regularizer: {target: pixel_th, alpha: 1, th: 0.5}}\n"
DRY = [*SWEEP, "--space", "s.yaml", "--dry-run"]
CASES.update({  # issue 22, item 5: what a real run refuses, --dry-run refuses before Ray starts
    "seed-beyond-torch": Case("dry-run", DRY, "train.seed", _file("s.yaml", SPACE + RANDOM +
                                                                   "seeds: [18446744073709551616]\n")),
    "seed-negative": Case("dry-run", DRY, "train.seed", _file("s.yaml", SPACE + RANDOM + "seeds: [0, -1]\n")),
    "search-seed-beyond-numpy": Case("dry-run", DRY, "search.seed", _file("s.yaml", SPACE + OPTUNA.replace(
        "optuna}", "optuna, seed: 18446744073709551616}"))),
    "cpus-per-trial-inf": Case("dry-run", [*SWEEP, "--space", "alpha_th.yaml", "--dry-run", "--cpus-per-trial",
                                           "inf"], "--cpus-per-trial"),
    "gpus-per-trial-nan": Case("dry-run", [*SWEEP, "--space", "alpha_th.yaml", "--dry-run", "--gpus-per-trial",
                                           "nan"], "--gpus-per-trial"),
    "cpus-per-trial-inf-in-file": Case("dry-run", DRY, "resources.cpus_per_trial", _file(
        "s.yaml", SPACE + RANDOM + "resources: {cpus_per_trial: .inf}\n")),
    "reduction-factor-inf": Case("dry-run", DRY, "scheduler.reduction_factor", _file(
        "s.yaml", SPACE + RANDOM + "metric: val_acc\nscheduler: {type: asha, reduction_factor: .inf}\n")),
    "reduction-factor-nan": Case("dry-run", DRY, "scheduler.reduction_factor", _file(
        "s.yaml", SPACE + RANDOM + "metric: val_acc\nscheduler: {type: asha, reduction_factor: .nan}\n")),
    "time-budget-inf": Case("dry-run", DRY, "time_budget_s", _file("s.yaml", SPACE + RANDOM + "time_budget_s: .inf\n")),
    "results-is-a-file": Case("dry-run", [*SWEEP, "--space", "alpha_th.yaml", "--dry-run", "--results", "f.txt"],
                              "--results", _file("f.txt", "keep")),
    "results-under-a-file": Case("dry-run", [*SWEEP, "--space", "alpha_th.yaml", "--dry-run", "--results",
                                             "f.txt/r"], "--results", _file("f.txt", "keep")),
    "reg-set-too-small": Case("dry-run", DRY, "regularizer.n", _file("s.yaml", REG + RANDOM), says="1423"),
    "reg-set-too-small-in-space": Case("dry-run", DRY, "regularizer.n", _file(
        "s.yaml", REG + OPTUNA.replace("regularizer.alpha: {uniform: [0.5, 2]}", "regularizer.n: {int: [100, 3000]}"))),
    "reg-set-too-small-optuna-pair": Case("dry-run", DRY, "regularizer.n", _file(  # regularized only in combination
        "s.yaml", SPACE + OPTUNA.replace("{regularizer.alpha: {uniform: [0.5, 2]}}",
                                         "{regularizer.target: {choice: [none, pixel]}, regularizer.alpha: {uniform: [0, 1]}}"))),
    "reg-set-too-small-synthetic": Case("dry-run", DRY, "regularizer.n", _file(
        "s.yaml", REG.replace("name: digits}", "name: synthetic, subset: 200}") + RANDOM)),
    "device-cuda-in-base": Case("dry-run", DRY, "train.device", _file(
        "s.yaml", SPACE.replace("epochs: 1}", "epochs: 1, device: cuda}") + RANDOM), says="--gpus-per-trial"),
    "device-cuda-by-set": Case("dry-run", [*DRY, "--set", "train.device=cuda:1"], "train.device",
                               _file("s.yaml", SPACE + RANDOM), says="--gpus-per-trial"),
    "device-cuda-in-space": Case("dry-run", DRY, "space.train.device", _file(
        "s.yaml", SPACE + "search: {algorithm: grid}\nspace: {train.device: {grid: [auto, cuda]}}\n"),
        says="--gpus-per-trial"),
    "fp16-without-gpu": Case("dry-run", [*DRY, "--set", "train.precision=fp16"], "train.precision",
                             _file("s.yaml", SPACE + RANDOM), says="--gpus-per-trial"),
    "report-unknown-metric": Case("limits", ["analysis.report", "s", "--results", "results", "--metric",
                                             "no_such_metric"], "--metric", _tables, says="best_val_acc"),
    "report-unknown-pareto": Case("limits", ["analysis.report", "s", "--results", "results", "--pareto",
                                             "nope:max"], "--pareto", _tables, says="best_val_acc"),
    "study-name-taken": Case("dry-run", [*DRY, "--name", "x", "--study-storage", "sqlite:///some.db"], "--name",
                             _all(_file("s.yaml", SPACE + OPTUNA), _study_db("some.db", "x", 2)), says="2 trials"),
})


def _free_port() -> int:
    """A port nothing listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_symlink() or not p.is_file():
            out[rel] = None
        elif p.stat().st_size < (1 << 20):
            out[rel] = p.read_bytes()
        else:
            out[rel] = str(p.stat().st_size).encode()  # the sparse 4 GiB file: its size stands in
    return out


def _fresh_cases() -> set[str]:
    """The cases that run in a fresh interpreter: the first of each command (so every CLI is
    still tested end to end, imports included), and every case that limits the address space
    (a forked child inherits the zygote's mappings, torch's among them)."""
    first: dict[str, str] = {}
    for n, c in CASES.items():
        first.setdefault(c.argv[0], n)
    limited = {n for n, c in CASES.items() if isinstance(c.preexec, _RLimit) and c.preexec.name == "RLIMIT_AS"}
    return set(first.values()) | limited


FRESH = _fresh_cases()


class _Zygote:
    """Client of tests/cli_zygote.py: one warm interpreter, a forked child per command."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_zygote.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "GIT_PYTHON_REFRESH": "quiet"})
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
            preexec: Callable[[], None] | None) -> tuple[int, str, str, float]:
        assert preexec is None or isinstance(preexec, _RLimit), "the zygote takes only _RLimit preexecs"
        req = {"argv": argv, "cwd": str(cwd), "env": env, "timeout": timeout,
               "rlimits": {preexec.name: preexec.value} if preexec else {}}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        out, err = reply["stdout"], reply["stderr"]
        if reply["timed_out"]:
            pytest.fail(f"timed out after {timeout} s\nstdout: {out[-1500:]}\nstderr: {err[-2500:]}")
        return reply["returncode"], out, err, reply["took"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = _Zygote()
    yield z
    z.close()


@pytest.mark.parametrize("name", list(CASES), ids=[f"{c.cls}:{n}" for n, c in CASES.items()])
def test_refused(name, tmp_path, zygote):
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    # Ray's socket paths must stay under 108 bytes, so its temp dir is short, not in tmp_path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="nr-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "GIT_PYTHON_REFRESH": "quiet",
           **{k: v.replace("{tmp}", str(tmp_path)) for k, v in case.env.items()}}
    env.pop("NEUROREG_RESULTS", None)
    argv = [a.replace("{free_port}", str(_free_port())) for a in case.argv]
    if name in FRESH:
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=case.timeout, preexec_fn=case.preexec)
        took, returncode, out, err = time.time() - t0, p.returncode, p.stdout, p.stderr
    else:
        returncode, out, err, took = zygote.run(argv, tmp_path, env, case.timeout, case.preexec)
    assert returncode == 2, f"exit {returncode}\nstdout: {out[-1500:]}\nstderr: {err[-2500:]}"
    assert "Traceback" not in err and "Traceback" not in out, err[-2500:]
    assert "weights_only=False" not in err  # never torch's advice to load unsafely
    assert case.culprit in err, f"the message does not name {case.culprit!r}: {err[-1500:]}"
    if case.says:
        assert case.says in err, err[-1500:]
    assert not (tmp_path / PWNED).exists() and not (tmp_path / f"{PWNED}.db").exists(), "the payload ran"
    ray_files = os.listdir(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not ray_files and "Ray ready" not in out, f"a Ray session started: {ray_files}"
    after = _snapshot(tmp_path)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before)) or 'contents'}"
    assert not (tmp_path.parent / "evil.png").exists(), "an archive member escaped"
    assert took < case.timeout


def test_dry_run_writes_no_database(tmp_path):
    """--dry-run --study-storage on an existing SQLite file (no Optuna tables in it): exit 0, and
    the file keeps its bytes (Optuna's RDBStorage would have created its tables in it)."""
    _study_db("some.db", "x", 0)(tmp_path)
    _file("s.yaml", SPACE + OPTUNA)(tmp_path)
    before = _snapshot(tmp_path)
    ray_tmp = Path(tempfile.mkdtemp(prefix="nr-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    p = subprocess.run([sys.executable, "-m", *DRY, "--study-storage", "sqlite:///some.db"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=90)
    ray_files = os.listdir(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "would write to" in p.stdout and not ray_files
    assert _snapshot(tmp_path) == before, "the dry run changed a file (the database?)"


def test_every_class_of_the_issue_is_covered():
    classes = {c.cls for c in CASES.values()}
    assert classes >= {"code", "paths", "flags", "spaces", "syntax", "hangs", "unicode", "huge", "symlinks",
                       "read-only", "disk-full",
                       "steer", "bounded", "recordings", "limits", "yaml", "dry-run"}  # issue 22


def test_the_payloads_are_real(tmp_path, monkeypatch):
    """Loaded unsafely, the hostile inputs above do run their command: the cases test something."""
    import yaml

    monkeypatch.chdir(tmp_path)
    pickle.loads(pickle.dumps({"model": _Payload()}))  # deliberately unsafe, on our own bytes
    assert (tmp_path / PWNED).exists()
    (tmp_path / PWNED).unlink()
    yaml.unsafe_load(f"!!python/object/apply:os.system ['{TOUCH}']\n")
    assert (tmp_path / PWNED).exists()
    (tmp_path / PWNED).unlink()
    eval(CASES["query-where-python"].argv[-1].split(" == ")[0])  # what pandas' python engine would do
    assert (tmp_path / PWNED).exists()


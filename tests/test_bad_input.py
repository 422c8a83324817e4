"""Hostile and malformed input, every CLI, one table (issue 15).

Each case runs the real command in a fresh folder and asserts: exit 2; a message that
names the culprit (flag, field or file); no traceback; no file created or changed in the
folder (pre-existing files keep their bytes); no Ray session started (its temp dir,
RAY_TMPDIR, stays empty); and for the hostile ones, no payload effect (the payload
would create the file PWNED).
"""

from __future__ import annotations

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


def _fsize_limit(n: int) -> Callable[[], None]:
    """Simulate a full disk: writes past n bytes fail (Python ignores SIGXFSZ, so EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


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


@pytest.mark.parametrize("name", list(CASES), ids=[f"{c.cls}:{n}" for n, c in CASES.items()])
def test_refused(name, tmp_path):
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    # Ray's socket paths must stay under 108 bytes, so its temp dir is short, not in tmp_path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="nr-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "GIT_PYTHON_REFRESH": "quiet", **case.env}
    env.pop("NEUROREG_RESULTS", None)
    argv = [a.replace("{free_port}", str(_free_port())) for a in case.argv]
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=case.timeout, preexec_fn=case.preexec)
    took = time.time() - t0
    err = p.stderr
    assert p.returncode == 2, f"exit {p.returncode}\nstdout: {p.stdout[-1500:]}\nstderr: {err[-2500:]}"
    assert "Traceback" not in err and "Traceback" not in p.stdout, err[-2500:]
    assert "weights_only=False" not in err  # never torch's advice to load unsafely
    assert case.culprit in err, f"the message does not name {case.culprit!r}: {err[-1500:]}"
    if case.says:
        assert case.says in err, err[-1500:]
    assert not (tmp_path / PWNED).exists() and not (tmp_path / f"{PWNED}.db").exists(), "the payload ran"
    ray_files = os.listdir(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not ray_files and "Ray ready" not in p.stdout, f"a Ray session started: {ray_files}"
    after = _snapshot(tmp_path)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before)) or 'contents'}"
    assert took < case.timeout


def test_every_class_of_the_issue_is_covered():
    classes = {c.cls for c in CASES.values()}
    assert classes >= {"code", "paths", "flags", "spaces", "syntax", "hangs", "unicode", "huge", "symlinks",
                       "read-only", "disk-full"}


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


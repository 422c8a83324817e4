"""What made a result: versions, this code's commit, the lock file, CPU, GPU and host.

A sweep records this once, as ``provenance.json`` in its folder, and gather turns it into
the ``provenance`` table (one row per sweep). Two sweeps are comparable when the fields in
``NUMERIC_FIELDS`` agree; ``differences`` names the ones that do not.

Everything here is read, never executed: package versions come from installed metadata
(no import of Ray or Foolbox), the commit from ``git`` when it is on PATH, the CPU from
``/proc/cpuinfo``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "ray", "optuna", "foolbox", "numpy", "scipy", "pandas", "pyarrow")
"""Distributions whose versions every sweep records."""

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
"""CPU flags that decide speed and numerics: bf16 is native with AVX512-BF16 or AMX."""

LOCK_FILE = "requirements.lock"
FILE_NAME = "provenance.json"

NUMERIC_FIELDS = ("torch", "precision", "device_kind", "git_commit")
"""Fields whose difference can move numbers: ``analysis.report A B`` warns about each."""

PROJECT = Path(__file__).resolve().parents[1]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.decode(errors="replace") if p.returncode == 0 else None


def git_state(root: Path = PROJECT) -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted diff (tracked files; untracked
    files are listed by name in the hash so a new module counts as a change)."""
    commit = _git(["rev-parse", "HEAD"], root)
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    diff = _git(["diff", "HEAD", "--no-ext-diff", "--binary"], root) or ""
    untracked = _git(["ls-files", "--others", "--exclude-standard"], root) or ""
    dirty = bool(diff.strip() or untracked.strip())
    digest = hashlib.sha256((diff + "\0" + untracked).encode()).hexdigest() if dirty else None
    return {"git_commit": commit.strip(), "git_dirty": dirty, "git_diff_sha256": digest}


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU model and the flags in ``CPU_FLAGS`` (from /proc/cpuinfo; elsewhere only
    the model that ``platform`` knows, flags unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    out: dict[str, Any] = {"cpu_model": model or platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count()}
    for f in CPU_FLAGS:
        out[f"cpu_{f}"] = None if flags is None else f in flags
    return out


def gpu_info() -> dict[str, Any]:
    """GPU model and driver (Nones when torch sees no CUDA device), and the CUDA version the torch wheel was built for."""
    import torch

    out: dict[str, Any] = {"gpu_model": None, "gpu_count": 0, "gpu_driver": None,
                           "torch_cuda": torch.version.cuda, "cudnn_version": None}
    if not torch.cuda.is_available():
        return out
    out["gpu_count"] = torch.cuda.device_count()
    out["gpu_model"] = torch.cuda.get_device_name(0)
    out["cudnn_version"] = torch.backends.cudnn.version()
    smi = None
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, timeout=20, check=False)
        smi = p.stdout.decode().strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    out["gpu_driver"] = smi
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path: Path) -> dict[str, str]:
    """Package -> pinned version of a pip-compile lock file (``name==version`` lines)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[_norm(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def lock_drift(path: Path) -> list[str]:
    """One line per locked package whose installed version differs (or that is missing)."""
    out = []
    for name, pinned in sorted(read_lock(path).items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(f"{name}: not installed (lock {pinned})")
            continue
        if have.split("+", 1)[0] != pinned.split("+", 1)[0]:
            out.append(f"{name}: {have} installed, lock {pinned}")
    return out


def collect(threads_per_trial: float | None = None, root: Path = PROJECT) -> dict[str, Any]:
    """One flat record (JSON- and Parquet-friendly) of what is about to produce results."""
    rec: dict[str, Any] = {"python": platform.python_version(), "python_implementation": sys.implementation.name}
    rec.update(package_versions())
    rec.update(git_state(root))
    lock = root / LOCK_FILE
    rec["lock_sha256"] = file_sha256(lock)
    # Empty when the environment is exactly the lock; else what differs (a hand install).
    rec["lock_drift"] = "; ".join(lock_drift(lock)) if lock.is_file() else None
    rec.update(cpu_info())
    rec.update(gpu_info())
    rec["hostname"] = socket.gethostname()
    rec["platform"] = platform.platform()
    rec["threads_per_trial"] = threads_per_trial
    return rec


def write(folder: Path, record: dict[str, Any]) -> Path:
    from neuroreg.atomic import atomic_write_text

    return atomic_write_text(Path(folder) / FILE_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")


def differences(a: dict[str, Any], b: dict[str, Any], fields: tuple[str, ...] = NUMERIC_FIELDS) -> list[str]:
    """One line per field that differs between two provenance records and can move numbers."""
    out = []
    for f in fields:
        va, vb = a.get(f), b.get(f)
        if va != vb:
            out.append(f"{f}: {va} vs {vb}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m neuroreg.provenance",
                                 description="Print what would be recorded as a result's provenance.")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check-lock", action="store_true",
                   help=f"exit 1 unless every package of {LOCK_FILE} is installed at its pinned version")
    g.add_argument("--diff-lock", action="store_true", help=f"list the installed versions that differ from {LOCK_FILE}")
    args = ap.parse_args(argv)
    lock = PROJECT / LOCK_FILE
    if args.check_lock or args.diff_lock:
        if not lock.is_file():
            print(f"error: no {LOCK_FILE} in the project root; `make lock` makes it", file=sys.stderr)
            return 2
        drift = lock_drift(lock)
        if args.diff_lock:
            print(f"{len(drift)} packages differ from {LOCK_FILE}" + (":" if drift else ""))
            for line in drift:
                print(f"  {line}")
            return 0
        if drift:
            print(f"error: the environment differs from {LOCK_FILE}:", file=sys.stderr)
            for line in drift:
                print(f"  {line}", file=sys.stderr)
            print("reinstall with `make clean-venv test`, or regenerate the lock with `make lock`", file=sys.stderr)
            return 1
        return 0
    print(json.dumps(collect(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Corrupt and hostile checkpoints: exit 2, 'not a neuroreg checkpoint: <why>', no traceback, no code run."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs `touch MARK`: the file appears if any loader executes it."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


def _cases(tmp: Path, mark: Path) -> dict[str, Path]:
    files = {
        "random bytes": os.urandom(4096),
        "empty": b"",
        "text": b"model: not a checkpoint\n",
    }
    out = {}
    for name, data in files.items():
        p = tmp / f"{name.replace(' ', '_')}.pt"
        p.write_bytes(data)
        out[name] = p
    p = tmp / "pickle_with_code.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": _Payload(mark)}, f)
    out["pickle with code"] = p
    p = tmp / "torch_pickle_with_code.pt"
    torch.save({"model": _Payload(mark)}, p)
    out["torch.save with code"] = p
    p = tmp / "missing_keys.pt"
    torch.save({"model": {}}, p)
    out["missing keys"] = p
    p = tmp / "list.pt"
    torch.save([1, 2, 3], p)
    out["not a dict"] = p
    return out


@pytest.mark.parametrize("case", ["random bytes", "empty", "text", "pickle with code", "torch.save with code",
                                  "missing keys", "not a dict"])
def test_evaluate_refuses_bad_checkpoints(case, tmp_path):
    mark = tmp_path / "PWNED"
    path = _cases(tmp_path, mark)[case]
    out = tmp_path / "out"
    env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet"}
    proc = subprocess.run([sys.executable, "-m", "neuroreg.evaluate", "--checkpoint", str(path), "--out", str(out)],
                          capture_output=True, text=True, cwd=PROJECT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not a neuroreg checkpoint" in proc.stderr and path.name in proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    assert not mark.exists()  # the payload never ran
    assert not out.exists()  # nothing written


def test_the_payload_is_real(tmp_path):
    """The hostile pickle does run its command when loaded unsafely (so the test above means something)."""
    mark = tmp_path / "PWNED"
    path = _cases(tmp_path, mark)["pickle with code"]
    with open(path, "rb") as f:
        pickle.load(f)  # deliberately unsafe, on our own test file
    assert mark.exists()

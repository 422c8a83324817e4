"""The sweep driver's fixed costs: work done while Ray starts, Ray stopped while the tables
are written, and an exit without the interpreter's teardown. Each must keep what it saves
time on: the provenance, the exit code, every printed line, the exit handlers, and no Ray
process left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_exit_now_keeps_code_output_and_exit_handlers(tmp_path):
    marker = tmp_path / "atexit.txt"
    code = textwrap.dedent(f"""
        import atexit, sys
        from sweep.run import exit_now
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        sys.stdout.write("x" * 100000)   # buffered, no newline: lost unless flushed
        sys.stderr.write("to stderr")
        exit_now(3)
        print("never")
    """)
    p = _run(code)
    assert p.returncode == 3
    assert p.stdout == "x" * 100000
    assert p.stderr.endswith("to stderr")
    assert marker.read_text() == "ran"


def test_command_line_exit_codes_and_output(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"name": "t", "base": {"data": {"name": "synthetic"}},
                                     "space": {"regularizer.alpha": {"grid": [1.0, 2.0]}},
                                     "search": {"algorithm": "grid"}}))
    ok = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space), "--dry-run",
                         "--storage", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "would write to:" in ok.stdout.splitlines()[-1]
    bad = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space), "--dry-run", "--num-cpus", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--num-cpus" in bad.stderr and "Traceback" not in bad.stderr


def test_warmup_collects_the_provenance_and_imports_the_analysis():
    code = textwrap.dedent("""
        import json, sys
        from neuroreg import provenance
        from sweep.run import Warmup
        rec = Warmup(3).result()
        now = provenance.collect(threads_per_trial=3)
        print(json.dumps({"same": {k: rec[k] == now[k] for k in now if k != "lock_drift"},
                          "keys": sorted(rec) == sorted(now), "threads": rec["threads_per_trial"],
                          "imported": all(m in sys.modules for m in ("analysis.gather", "analysis.summary",
                                                                     "neuroreg.train", "sweep.report")),
                          "ray": "ray" in sys.modules}))
    """)
    p = _run(code)
    assert p.returncode == 0, p.stderr
    import json

    out = json.loads(p.stdout.splitlines()[-1])
    assert out["keys"] and out["threads"] == 3
    assert all(out["same"].values()), out["same"]
    assert out["imported"]
    assert not out["ray"]  # the thread never imports Ray: ray.init runs beside it


def test_warmup_failure_leaves_the_work_to_the_main_thread(monkeypatch):
    from neuroreg import provenance
    from sweep.run import Warmup

    def broken(**_):
        raise OSError("git vanished")

    monkeypatch.setattr(provenance, "collect", broken)
    assert Warmup(1).result() is None  # record_provenance then collects (and reports) itself


def test_record_provenance_takes_a_collected_record(tmp_path):
    import json

    from sweep.start import record_provenance

    given = {"python": "9.9", "threads_per_trial": 2}
    rec = record_provenance(str(tmp_path), 2, {"sweep": "s"}, record=given)
    assert rec == {"python": "9.9", "threads_per_trial": 2, "sweep": "s"}
    assert given == {"python": "9.9", "threads_per_trial": 2}  # the caller's record is not changed
    assert json.loads((tmp_path / "provenance.json").read_text()) == rec


def _processes_under(path: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            out.append(f"{pid}: {cmd[:120]}")
    return out


@pytest.mark.slow
def test_own_ray_sweep_writes_tables_and_leaves_no_ray_process(tmp_path):
    """A sweep that starts its own Ray stops it while gathering, then exits without the
    teardown: the tables and the summary are there and none of its Ray processes is left."""
    base = {"data": {"name": "synthetic", "image_size": None, "val_fraction": 0.1}, "model": {"width": 4},
            "regularizer": {"target": "pixel_th", "alpha": 1.0, "n": 20, "layers": ["conv1"], "n_pairs": 4},
            "optim": {"lr": 0.05, "schedule": "constant"},
            "train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 64},
            "evaluation": {"suites": []}}
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"name": "t", "base": base, "space": {"regularizer.alpha": {"grid": [1.0]}},
                                     "search": {"algorithm": "grid"}, "baseline": False,
                                     "resources": {"cpus_per_trial": 1}}))
    # A Ray temp root of its own (short: Ray's socket paths must fit 107 characters), so its
    # processes are told apart from any other Ray on the machine.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        p = subprocess.run([sys.executable, "-m", "sweep.run", "--space", str(space), "--storage",
                            str(tmp_path / "sweeps"), "--name", "t", "--no-dashboard", "--quiet", "--num-cpus", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"})
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert "Started a local Ray instance" in p.stdout + p.stderr  # it did start its own
        assert (tmp_path / "tables" / "trials" / "t.parquet").is_file()
        assert "table trials:" in p.stdout and "1 trials in" in p.stdout
        assert (tmp_path / "sweeps" / "t" / "provenance.json").is_file()
        deadline = time.time() + 20  # processes told to stop may take a moment to go
        while _processes_under(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert _processes_under(ray_tmp) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

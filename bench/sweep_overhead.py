"""What does Ray Tune cost, and what does it buy, on a small machine?

The same N small trainings run (a) one after another in plain Python through
``neuroreg.train.train`` and (b) through ``python -m sweep.run`` with 2 concurrent
trials of 1 CPU / 1 torch thread each. Prints both wall times, the speed-up (b over a)
and Ray's start-up time, measured side by side in one run. (c), a control, runs the
trials in two plain Python processes at once: the speed-up the machine itself allows
for two concurrent trainings, against which (b)'s Ray overhead can be judged.

    .venv/bin/python bench/sweep_overhead.py                 # 4 trials of ~30 s (quiet 2-core machine)
    .venv/bin/python bench/sweep_overhead.py --trials 4 --epochs 4     # shorter trials

Other processes on the machine skew (b) more than (a): two concurrent trials need both
cores. The load average at start and end is printed for that reason.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def base_config(epochs: int, steps: int | None) -> dict:
    return {
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
        "model": {"name": "resnet18", "width": 8},
        "regularizer": {"target": "pixel_th", "alpha": 1.0, "th": 0.5, "n": 500},
        "optim": {"lr": 0.05, "schedule": "cosine"},
        "train": {"epochs": epochs, "batch_size": 64, "max_steps_per_epoch": steps, "num_threads": 1},
        "evaluation": {"suites": []},
    }


def alphas(n: int) -> list[float]:
    return [round(0.5 * (i + 1), 3) for i in range(n)]


def run_sequential(base: dict, n: int, out: Path, only: list[int] | None = None) -> tuple[float, list[float]]:
    import torch

    from neuroreg.config import RunConfig, set_dotted
    from neuroreg.train import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    each = []
    for i, a in enumerate(alphas(n)):
        if only is not None and i not in only:
            continue
        d = copy.deepcopy(base)
        set_dotted(d, "regularizer.alpha", a)
        each.append(train(RunConfig.from_dict(d), out / f"seq_{i}").wall_s)
    return time.perf_counter() - t0, each


def run_two_processes(base: dict, n: int, out: Path) -> float:
    """Control without Ray: two plain Python processes, each training half of the trials.
    It shows what the machine itself gives for two concurrent 1-thread trainings."""
    f = out / "base.json"
    f.write_text(json.dumps(base))
    halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(f), "--trials", str(n),
                          "--only", ",".join(map(str, h)), "--out", str(out / f"par_{k}")], cwd=ROOT)
        for k, h in enumerate(halves)
    ]
    if any(p.wait() != 0 for p in procs):
        sys.exit("a control process failed")
    return time.perf_counter() - t0


def trial_seconds(exp: Path) -> list[float]:
    """Each trial's own time inside Ray (Tune's time_total_s of its last result)."""
    out = []
    for t in sorted(exp.glob("trial_*")):
        last = (t / "result.json").read_text().splitlines()[-1]
        out.append(json.loads(last)["time_total_s"])
    return out


def run_sweep(base: dict, n: int, out: Path, reuse: bool = False) -> tuple[float, float, float, list[float]]:
    """(b), or with ``reuse`` (d): sweep.run finding a running `ray start` cluster and joining it."""
    space = {
        "name": "bench",
        "base": base,
        "space": {"regularizer.alpha": {"grid": alphas(n)}},
        "search": {"algorithm": "grid"},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    }
    f = out / "bench.yaml"
    f.write_text(yaml.safe_dump(space))
    name = "bench_reuse" if reuse else "bench"
    cmd = [sys.executable, "-m", "sweep.run", "--space", str(f), "--storage", str(out / "sweeps"),
           "--name", name, "--no-dashboard", "--quiet"] + ([] if reuse else ["--num-cpus", "2"])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"sweep failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    m = re.search(r"Ray ready in ([0-9.]+) s", p.stdout)
    f = re.search(r"trials in ([0-9.]+) s", p.stdout)
    ray_start = float(m.group(1)) if m else float("nan")
    fit = float(f.group(1)) if f else float("nan")
    if reuse and "Started a local Ray instance" in p.stdout + p.stderr:
        sys.exit("(d) did not reuse the running cluster")
    return wall, ray_start, fit, trial_seconds(out / "sweeps" / name)


def with_ray_start(fn):
    """Run ``fn`` while a `ray start` head (2 CPUs) is up on this machine, as a user would keep one."""
    ray = str(Path(sys.executable).with_name("ray"))
    # --block keeps `ray start` in the foreground, so terminating it stops this head alone;
    # `ray stop` would kill every Ray process on the machine, other users' sweeps included.
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from sweep.ray_session import running_local_cluster

        deadline = time.time() + 60
        while running_local_cluster() is None:
            if time.time() > deadline or head.poll() is not None:
                sys.exit("(d): `ray start --head` did not come up")
            time.sleep(0.5)
        return fn()
    finally:
        head.terminate()
        head.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10, help="sets the trial length (~3 s per epoch on a quiet core)")
    ap.add_argument("--steps", type=int, default=None, help="cap on steps per epoch (default: full epochs of 20 steps)")
    ap.add_argument("--no-control", action="store_true", help="skip (c), the two plain processes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: (c)'s processes
    ap.add_argument("--only", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        base = json.loads(Path(a.worker).read_text())
        run_sequential(base, a.trials, Path(a.out), [int(i) for i in a.only.split(",") if i])
        return
    base = base_config(a.epochs, a.steps)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sweep_bench_") as tmp:
        out = Path(tmp)
        seq, seq_each = run_sequential(base, a.trials, out)
        swept, ray_start, fit, ray_each = run_sweep(base, a.trials, out)
        par = float("nan") if a.no_control else run_two_processes(base, a.trials, out)
        reused, reuse_start, reuse_fit, _ = with_ray_start(lambda: run_sweep(base, a.trials, out, reuse=True))
    load1 = os.getloadavg()
    per_trial = seq / a.trials
    steps = a.steps or "20"
    print(f"\n{a.trials} trials, {a.epochs} epochs x {steps} steps (digits 16 px, ResNet18 width 8, pixel_th), "
          f"~{per_trial:.0f} s per trial sequentially, {os.cpu_count()} cores")
    print(f"{'mode':<44}{'wall s':>9}{'vs (a)':>9}")
    print(f"{'(a) sequential, plain Python, 1 thread':<44}{seq:>9.1f}{1.0:>9.2f}")
    print(f"{'(b) sweep.run, 2 concurrent x 1 thread':<44}{swept:>9.1f}{seq / swept:>9.2f}")
    print(f"{'    of which Ray start-up':<44}{ray_start:>9.1f}")
    print(f"{'    of which Tuner.fit (the trials)':<44}{fit:>9.1f}{seq / fit:>9.2f}")
    print(f"{'    of which the rest (imports, gather, exit)':<44}{swept - ray_start - fit:>9.1f}")
    print(f"{'    (b) without Ray start-up':<44}{swept - ray_start:>9.1f}{seq / (swept - ray_start):>9.2f}")
    print(f"{'(c) control: 2 plain processes, no Ray':<44}{par:>9.1f}{seq / par:>9.2f}")
    print(f"{'(d) sweep.run joining a running ray start':<44}{reused:>9.1f}{seq / reused:>9.2f}")
    print(f"{'    of which connecting to it':<44}{reuse_start:>9.1f}")
    print(f"{'    of which Tuner.fit (the trials)':<44}{reuse_fit:>9.1f}{seq / reuse_fit:>9.2f}")
    print(f"mean time of one trial: {sum(seq_each) / len(seq_each):.1f} s sequential, "
          f"{sum(ray_each) / max(1, len(ray_each)):.1f} s inside Ray (2 at once)")
    print(f"load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}")


if __name__ == "__main__":
    main()

"""What does a sweep cost besides its trials? Before and after, side by side in one run.

The same N small trainings run

- (a) one after another in plain Python through ``neuroreg.train.train``;
- (b) through ``python -m sweep.run`` with 2 concurrent trials of 1 CPU / 1 torch thread
  each, once "before" and once "after" (this checkout's code), alternating when
  ``--repeats`` > 1. "before" is every file at ``--before`` (``--whole-tree``, the default);
  with ``--cut-files-only`` it is this checkout with the driver files of the fixed-cost cuts
  (``CUT_FILES``) as they were at ``--before``, so the trainer is the same in both and only the
  cuts differ (while those files still fit the rest of the tree);
- (c) a control: the trials in two plain Python processes at once, the speed-up the
  machine itself allows for two concurrent trainings;
- (d) ``sweep.run`` ("after") joining a running ``ray start`` cluster.

Each (b) run is split into its stages from the time stamps of its console lines (the
same for both trees, nothing added to the code under test): start-up (Python, imports,
validation), Ray start (as sweep.run prints it), set-up (provenance, shared data, the
Tuner; up to the "Live curves" line), Tuner.fit (the trials; up to the "N trials in"
line), gather + summary (up to the last line), and exit (ray.shutdown, interpreter exit).

    .venv/bin/python bench/sweep_overhead.py                          # 4 trials of ~20 s
    .venv/bin/python bench/sweep_overhead.py --epochs 4 --no-reuse    # shorter
    .venv/bin/python bench/sweep_overhead.py --before HEAD~3 --repeats 2

The sweeps run the bench's space with ``baseline: false``, so (a), (b), (c) and (d)
train exactly the same trials. Other processes on the machine skew (b) more than (a):
two concurrent trials need both cores. The header prints the CPU, the core count and the
load average, and the load average is printed again at the end, for that reason.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "d89cf3df0a6bfb913a32dd2b1f7bc98390a2102b"
"""The last commit before issue 24's fixed-cost cuts."""
CUT_FILES = ("sweep/run.py", "sweep/start.py", "neuroreg/data.py")
"""The files those cuts changed: "before" takes them from BEFORE."""


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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                isa = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else \
                    "AVX2" if "avx2" in flags else "no AVX2"
                return f"{name}, {isa}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


@dataclass
class SweepTime:
    wall: float
    ray_start: float = float("nan")
    fit: float = float("nan")
    startup: float = float("nan")
    setup: float = float("nan")
    gather: float = float("nan")
    exit: float = float("nan")
    trials: list[float] = field(default_factory=list)


def export_tree(ref: str, dest: Path) -> Path:
    """The files of commit ``ref`` (git archive: nothing in this checkout changes)."""
    dest.mkdir(parents=True)
    p = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"--before {ref}: git archive failed: {p.stderr.decode().strip()}")
    archive = dest.parent / f"{dest.name}.tar"
    archive.write_bytes(p.stdout)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def checkout_copy(dest: Path) -> Path:
    """This checkout's files as they are (tracked and untracked, not the ignored ones)."""
    p = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, check=True)
    for rel in filter(None, p.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def with_files_at(tree: Path, ref: str, files: tuple[str, ...]) -> Path:
    for rel in files:
        p = subprocess.run(["git", "show", f"{ref}:{rel}"], cwd=ROOT, capture_output=True)
        if p.returncode != 0:
            sys.exit(f"--before {ref}: no {rel} there: {p.stderr.decode().strip()}")
        (tree / rel).write_bytes(p.stdout)
    return tree


def write_space(base: dict, n: int, out: Path) -> Path:
    space = {
        "name": "bench",
        "base": base,
        "space": {"regularizer.alpha": {"grid": alphas(n)}},
        "search": {"algorithm": "grid"},
        # (a) trains no baseline: neither may the sweep, or (b) would train one trial more.
        "baseline": False,
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    }
    f = out / "bench.yaml"
    f.write_text(yaml.safe_dump(space))
    return f


def run_sweep(tree: Path, space: Path, out: Path, name: str, reuse: bool = False,
              dashboard: bool = False, extra_env: dict[str, str] | None = None) -> SweepTime:
    """``python -m sweep.run`` of the code in ``tree``, its console lines time-stamped."""
    storage = out / "sweeps"
    cmd = [sys.executable, "-m", "sweep.run", "--space", str(space), "--storage", str(storage),
           "--results", str(out / f"results_{name}"), "--name", name, "--quiet"]
    cmd += [] if dashboard else ["--no-dashboard"]
    cmd += [] if reuse else ["--num-cpus", "2"]
    # The tree's packages first (Ray's workers inherit the variable), and every line as it comes.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    errs: list[str] = []
    drain = threading.Thread(target=lambda: errs.extend(p.stderr), daemon=True)
    drain.start()
    for line in p.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = p.wait()
    wall = time.perf_counter() - t0
    drain.join(timeout=10)
    text = "\n".join(s for _, s in lines)
    if rc != 0:
        sys.exit(f"sweep of {tree} failed ({rc}):\n{text[-3000:]}\n{''.join(errs)[-3000:]}")
    if reuse and "Started a local Ray instance" in text + "".join(errs):
        sys.exit("(d) did not reuse the running cluster")

    def at(pattern: str) -> tuple[float, re.Match | None]:
        for t, s in lines:
            m = re.search(pattern, s)
            if m:
                return t, m
        return float("nan"), None

    t_ready, m_ready = at(r"Ray ready in ([0-9.]+) s")
    t_fit, m_fit = at(r"^Live curves: ")  # the last line before Tuner.fit
    t_done, m_done = at(r"trials in ([0-9.]+) s")
    res = SweepTime(wall, trials=trial_seconds(storage / name))
    if m_ready and m_fit and m_done:
        res.ray_start = float(m_ready.group(1))
        res.startup = t_ready - res.ray_start
        res.setup = t_fit - t_ready
        res.fit = t_done - t_fit  # with the closing table, a few ms
        t_last = lines[-1][0]
        res.gather = t_last - t_done
        res.exit = wall - t_last
    return res


def with_ray_start(fn):
    """Run ``fn(env)`` while a `ray start` head (2 CPUs) is up on this machine, as a user would
    keep one; ``env`` lets a driver find it. Its files (and the current-cluster file a driver
    looks for) live in a folder of their own (RAY_TMPDIR): terminating the head leaves that file
    behind, and in /tmp/ray it would send every later bare ``ray.init()`` to a dead address."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp = tempfile.mkdtemp(prefix="nr_bench_", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {"RAY_TMPDIR": temp}
    # --block keeps `ray start` in the foreground, so terminating it stops this head alone;
    # `ray stop` would kill every Ray process on the machine, other users' sweeps included.
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env})
    try:
        from sweep.ray_session import running_local_cluster

        deadline = time.time() + 60
        while running_local_cluster(str(Path(temp) / "ray")) is None:
            if time.time() > deadline or head.poll() is not None:
                sys.exit("(d): `ray start --head` did not come up")
            time.sleep(0.5)
        return fn(env)
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10, help="sets the trial length (~2 s per epoch on a quiet core)")
    ap.add_argument("--steps", type=int, default=None, help="cap on steps per epoch (default: full epochs of 20 steps)")
    ap.add_argument("--before", default=BEFORE, help="the commit whose sweep.run is 'before' (default: the last "
                                                     "commit before the fixed-cost cuts)")
    ap.add_argument("--after", default=None, help="a commit for 'after' (default: this checkout's files as they are)")
    ap.add_argument("--whole-tree", action="store_true", default=True,
                    help="'before' is every file at --before (the default)")
    ap.add_argument("--cut-files-only", dest="whole_tree", action="store_false",
                    help="'before' is this checkout with only CUT_FILES at --before (the trainer the same in both; "
                         "works only while those files fit the rest of the tree: they no longer do at d89cf3d)")
    ap.add_argument("--repeats", type=int, default=1, help="(b) before/after pairs, alternating order")
    ap.add_argument("--dashboard", action="store_true", help="(b) with the Ray dashboard (the sweep's default) "
                                                             "instead of --no-dashboard")
    ap.add_argument("--no-control", action="store_true", help="skip (c), the two plain processes")
    ap.add_argument("--no-reuse", action="store_true", help="skip (d), joining a running ray start")
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
    steps = a.steps or "20"
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"Python {platform.python_version()}")
    print(f"{a.trials} trials, {a.epochs} epochs x {steps} steps (digits 16 px, ResNet18 width 8, pixel_th); "
          f"after = {a.after[:12] if a.after else 'this checkout'}, before = "
          + (f"{a.before[:12]}" if a.whole_tree else f"the same with {', '.join(CUT_FILES)} at {a.before[:12]}"),
          flush=True)
    runs: dict[str, list[SweepTime]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="sweep_bench_") as tmp:
        out = Path(tmp)
        after = export_tree(a.after, out / "tree_after") if a.after else ROOT
        if a.whole_tree:
            before = export_tree(a.before, out / "tree_before")
        elif a.after:
            before = with_files_at(export_tree(a.after, out / "tree_before"), a.before, CUT_FILES)
        else:
            before = with_files_at(checkout_copy(out / "tree_before"), a.before, CUT_FILES)
        trees = {"before": before, "after": after}
        space = write_space(base, a.trials, out)
        seq, seq_each = run_sequential(base, a.trials, out)
        for r in range(a.repeats):
            for which in (("before", "after") if r % 2 == 0 else ("after", "before")):
                runs[which].append(run_sweep(trees[which], space, out, f"{which}_{r}", dashboard=a.dashboard))
                print(f"  (b) {which} #{r + 1}: {runs[which][-1].wall:.1f} s", flush=True)
        par = float("nan") if a.no_control else run_two_processes(base, a.trials, out)
        reused = None if a.no_reuse else with_ray_start(
            lambda env: run_sweep(trees["after"], space, out, "reuse", reuse=True, extra_env=env))
    load1 = os.getloadavg()

    def avg(which: str, attr: str) -> float:
        return mean([getattr(s, attr) for s in runs[which]])

    print(f"\n~{seq / a.trials:.0f} s per trial sequentially; (b) = mean of {a.repeats} run(s) each"
          + ("; with the Ray dashboard" if a.dashboard else "; --no-dashboard"))
    w = 40
    print(f"{'mode':<{w}}{'wall s':>9}{'vs (a)':>9}{'wall s':>9}{'vs (a)':>9}{'saved s':>9}")
    print(f"{'':<{w}}{'before':>18}{'after':>18}")
    print(f"{'(a) sequential, plain Python, 1 thread':<{w}}{seq:>9.1f}{1.0:>9.2f}{seq:>9.1f}{1.0:>9.2f}")
    rows = [("(b) sweep.run, 2 concurrent x 1 thread", "wall", True),
            ("    start-up: Python, imports, checks", "startup", False),
            ("    Ray start", "ray_start", False),
            ("    set-up: Tuner, data, provenance", "setup", False),
            ("    Tuner.fit (the trials)", "fit", True),
            ("    gather + summary", "gather", False),
            ("    exit: ray.shutdown, interpreter", "exit", False)]
    for label, attr, ratio in rows:
        b, f = avg("before", attr), avg("after", attr)
        rb = f"{seq / b:>9.2f}" if ratio else f"{'':>9}"
        rf = f"{seq / f:>9.2f}" if ratio else f"{'':>9}"
        print(f"{label:<{w}}{b:>9.1f}{rb}{f:>9.1f}{rf}{b - f:>9.1f}")
    print(f"{'(c) control: 2 plain processes, no Ray':<{w}}{par:>9.1f}{seq / par:>9.2f}")
    if reused is not None:
        print(f"{'(d) after, joining a running ray start':<{w}}{'':>18}{reused.wall:>9.1f}{seq / reused.wall:>9.2f}")
        print(f"{'    of which connecting to it':<{w}}{'':>18}{reused.ray_start:>9.1f}")
        print(f"{'    of which Tuner.fit':<{w}}{'':>18}{reused.fit:>9.1f}{seq / reused.fit:>9.2f}")
    print(f"mean time of one trial: {mean(seq_each):.1f} s sequential, inside Ray (2 at once) "
          f"{mean([x for s in runs['before'] for x in s.trials]):.1f} s before, "
          f"{mean([x for s in runs['after'] for x in s.trials]):.1f} s after")
    each = "  ".join(f"{k} " + " ".join(f"{s.wall:.1f}" for s in v) for k, v in runs.items())
    print(f"(b) runs, wall s: {each}")
    print(f"load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}")


if __name__ == "__main__":
    main()

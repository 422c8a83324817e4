"""How long do ``analysis.sql`` and ``analysis.query`` take to answer a trivial question?

Runs the same commands from two source trees side by side, alternating, N times each:
"before" is a git revision of this repository exported to a temporary folder (default:
the commit before the suite declarations stopped importing torch), "after" is the
working tree. Prints the best and the median wall time of each (process start to exit,
tables read and the result printed), their ratio, the best CPU time (user + system), and
whether ``import analysis.sql, analysis.query`` pulled in torch in each tree.

    .venv/bin/python bench/cli_startup.py --results results            # best of 5
    .venv/bin/python bench/cli_startup.py --results results --before HEAD~3 --repeats 9

Both trees run with this interpreter and the same results root. Other processes on the
machine (a sweep in the background) lengthen both columns alike; the load average at
start and end is printed for that reason, and the ratio is the number to compare.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "d89cf3d"
"""The last commit whose analysis.schema imported the suites' implementations (and torch)."""


def commands(results: str) -> dict[str, list[str]]:
    return {
        'analysis.sql "SELECT count(*) FROM trials"':
            ["-m", "analysis.sql", "--results", results, "SELECT count(*) FROM trials"],
        "analysis.query trials --by arm":
            ["-m", "analysis.query", "trials", "--results", results, "--by", "arm"],
        "import analysis.sql, analysis.query":
            ["-c", "import analysis.sql, analysis.query"],
    }


def export(rev: str, dest: Path) -> Path:
    """The packages of ``rev`` (analysis, neuroreg, sweep) unpacked under ``dest``."""
    archive = dest / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "analysis", "neuroreg", "sweep"], stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(dest / "tree", filter="data")
    return dest / "tree"


def timed(tree: Path, argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # -m and -c put the working folder first on sys.path, ahead of the editable install's finder.
    p = subprocess.run([sys.executable, *argv], cwd=tree, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(argv)} failed in {tree}: {p.stderr.strip()[-400:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imports_torch(tree: Path) -> str:
    code = ("import analysis.sql, analysis.query, neuroreg, sys; "
            "print('torch' in sys.modules, neuroreg.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True).stdout
    torch_loaded, where = out.split()
    if not Path(where).resolve().is_relative_to(tree.resolve()):  # the tree under test, not the editable install
        raise SystemExit(f"{tree}: neuroreg was imported from {where}")
    return "yes" if torch_loaded == "True" else "no"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results root with gathered tables (default: results)")
    ap.add_argument("--before", default=BEFORE, help=f"git revision to compare against (default {BEFORE})")
    ap.add_argument("--repeats", type=int, default=5, help="runs of each command per tree (default 5)")
    args = ap.parse_args()
    results = str(Path(args.results).resolve())
    if not (Path(results) / "tables").is_dir():
        print(f"error: --results {args.results} holds no tables/; run a sweep or analysis.gather first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export(args.before, Path(tmp)), "after": ROOT}
        torch_in = {k: imports_torch(t) for k, t in trees.items()}
        load0 = os.getloadavg()
        rows = []
        for label, argv in commands(results).items():
            times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for tree in trees.values():  # untimed: writes both trees' bytecode caches, warms the page cache
                timed(tree, argv)
            for _ in range(args.repeats):
                for k, tree in trees.items():  # alternating, so a burst of load hits both
                    times[k].append(timed(tree, argv))
            rows.append((label, times))
        load1 = os.getloadavg()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f} (1 min)")
    print(f"before: git {args.before}; after: working tree; best and median of {args.repeats} runs, seconds\n")
    print(f"torch imported by `import analysis.sql, analysis.query`: before {torch_in['before']}, "
          f"after {torch_in['after']}\n")
    print("| command | before best | after best | before/after | before median | after median "
          "| before CPU | after CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, t in rows:
        wall = {k: [w for w, _ in v] for k, v in t.items()}
        cpu = {k: min(c for _, c in v) for k, v in t.items()}
        b, a = min(wall["before"]), min(wall["after"])
        print(f"| `{label}` | {b:.2f} | {a:.2f} | {b / a:.2f}x | {statistics.median(wall['before']):.2f} "
              f"| {statistics.median(wall['after']):.2f} | {cpu['before']:.2f} | {cpu['after']:.2f} |")
    print("\nwall: process start to exit; CPU: its user + system time (best of the runs), which other "
          "processes on the machine lengthen far less than the wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run ``python -m <module> <args>`` in a child forked from a warm interpreter.

The bad-input table runs ~160 command lines. Each used to be a fresh interpreter that spent
about 2 of its 3 seconds importing torch, pandas and friends before it could refuse the input.
This server imports those third-party libraries once, then forks one child per command. The
child is what ``python -m`` would be: a fresh ``__main__`` run of the module by runpy, its own
cwd, environment, stdin (/dev/null), stdout and stderr files, rlimits, and exit status; an
uncaught exception prints its traceback and exits 1, as the interpreter does. Only the
project's own modules are imported in the child, so their import-time behaviour is still tested.

Cases that need a fresh address space (RLIMIT_AS below what torch has already mapped) keep
running as real subprocesses, and so does one case per command (see test_bad_input.py).

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout (with the
command's stdout and stderr, read from pipes).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time

WARM = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "pyarrow.dataset", "duckdb", "yaml", "scipy.stats",
        "torch", "torchvision", "optuna", "matplotlib")


def _child(req: dict, pipes: list[tuple[int, int]]) -> None:
    import atexit
    import runpy
    import traceback

    os.setsid()  # its own process group, so a timeout kills whatever it started
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for name, value in req.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    fd_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd_in, 0)
    # Pipes, as subprocess.run(capture_output=True) gives: a file would fall under RLIMIT_FSIZE.
    for fd, w in ((1, pipes[0][1]), (2, pipes[1][1])):
        os.dup2(w, fd)
    for r, w in pipes:
        os.close(r)
        os.close(w)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)
    module, *args = req["argv"]
    sys.argv = [module, *args]
    sys.path[0] = req["cwd"]  # as `python -m` puts the working directory first
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - the interpreter's own behaviour: print it, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_one(req: dict) -> dict:
    t0 = time.monotonic()
    pipes = [os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:
        try:
            _child(req, pipes)
        finally:
            os._exit(70)
    for _, w in pipes:
        os.close(w)
    chunks: dict[int, list[bytes]] = {r: [] for r, _ in pipes}
    open_fds = set(chunks)
    deadline = t0 + req["timeout"]
    timed_out = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
        for r in ready:
            data = os.read(r, 1 << 16)
            if data:
                chunks[r].append(data)
            else:
                open_fds.discard(r)
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    for r in chunks:
        os.close(r)
    out, err = (b"".join(chunks[r]).decode(errors="replace") for r, _ in pipes)
    return {"returncode": os.waitstatus_to_exitcode(status), "took": time.monotonic() - t0,
            "timed_out": timed_out, "stdout": out, "stderr": err}


def main() -> None:
    import importlib

    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        out.write(json.dumps(_serve_one(json.loads(line))) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

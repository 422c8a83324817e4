"""The sweep driver's own process: work that needs no Ray done while Ray starts, Ray shut
down while the tables are written, and an exit without the interpreter's teardown."""

from __future__ import annotations

import os
import sys
import threading


class Warmup:
    """The driver's work that needs no Ray, done while Ray starts.

    ``ray.init`` spends seconds waiting for its processes (GCS, raylet, dashboard, agents,
    prestarted workers), which keep about one core busy: on a small machine the other core
    is free. Meanwhile a thread collects the provenance (git, package metadata) and imports
    what the driver needs after the trials (pandas, scipy, the analysis package: seconds of
    a sweep's end otherwise). Nothing here imports Ray, so the two threads never import the
    same modules' circular pieces at once. Any failure is dropped: the main thread then
    does the same work itself and reports what goes wrong there.
    """

    def __init__(self, threads_per_trial: int):
        self.threads = threads_per_trial
        self.provenance: dict | None = None
        self._thread = threading.Thread(target=self._run, name="sweep-warmup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from neuroreg import provenance

            self.provenance = provenance.collect(threads_per_trial=self.threads)
            import analysis.gather  # noqa: F401
            import analysis.summary  # noqa: F401
            import neuroreg.train  # noqa: F401
            import sweep.report  # noqa: F401
        except Exception:  # noqa: BLE001 -- the main thread repeats the work and reports
            pass

    def result(self) -> dict | None:
        """The provenance record (None: collect it now), once the thread is done."""
        self._thread.join()
        return self.provenance


def shutdown_in_background() -> threading.Thread:
    """ray.shutdown mostly waits for Ray's processes to end; the tables are written meanwhile."""
    import ray

    t = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    t.start()
    return t


def exit_now(code: int) -> None:
    """Leave after the exit handlers, without the interpreter's teardown.

    Tearing down the modules a sweep loads (torch, Ray Tune, pandas, scipy) takes seconds
    after the last line is printed; nothing of the sweep depends on it: its files are
    closed and Ray is shut down (or, joined, disconnected by Ray's own exit handler, which
    runs here)."""
    import atexit
    import logging

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None:  # another Python: the ordinary exit
        sys.exit(code)
    run_handlers()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

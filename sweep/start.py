"""Starting a sweep cleanly: its provenance recorded, its parts checked to pickle, and a
start that fails before the first trial leaving nothing behind.

Tune pickles the trainable, the search algorithm and the scheduler into the experiment
state (``tuner.pkl``) before any trial runs. An unpicklable part used to surface as a raw
traceback from deep inside ``tune.Tuner`` and left a half-made sweep folder that
``--resume`` could not use; here each part is pickled first, and a failure names it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from neuroreg import provenance


class StartError(Exception):
    """The sweep could not start; the message names the component and the cause."""


_SAMPLER_NAMES = {"NSGAIISampler": "NSGA-II sampler", "TPESampler": "TPE sampler", "RandomSampler": "random sampler",
                  "GPSampler": "GP sampler", "GridSampler": "grid sampler"}


def _component_name(obj: Any) -> str:
    for cls in type(obj).__mro__:
        if cls.__name__ in _SAMPLER_NAMES:
            return f"the {_SAMPLER_NAMES[cls.__name__]} ({type(obj).__module__.split('.')[0]} {cls.__name__})"
    return f"the {type(obj).__name__}"


def _parts(searcher: Any) -> list[Any]:
    """The search algorithm's layers, innermost first: the Optuna sampler and study, then
    OptunaSearch, Repeater, BaselineFirst, ConcurrencyLimiter, the generator."""
    chain = []
    s = searcher
    while s is not None:
        chain.append(s)
        s = getattr(s, "searcher", None)
    inner = chain[-1] if chain else None
    extra = [getattr(inner, a, None) for a in ("_sampler", "_ot_study", "_space")] if inner is not None else []
    return [p for p in extra if p is not None] + list(reversed(chain))


def check_picklable(components: dict[str, Any]) -> None:
    """Pickle each component as Tune will (Ray's cloudpickle); StartError naming the first
    piece that fails, innermost first (the sampler rather than the searcher holding it)."""
    from ray import cloudpickle

    for role, obj in components.items():
        if obj is None:
            continue
        pieces = _parts(obj) if role == "search algorithm" else [obj]
        for piece in pieces:
            try:
                cloudpickle.dumps(piece)
            except Exception as e:  # TypeError (locks, sockets), PicklingError, RecursionError
                raise StartError(f"{_component_name(piece)} of the {role} could not be saved "
                                 f"(Tune pickles it into the experiment state): {type(e).__name__}: {e}") from e


def record_provenance(folder: str, threads_per_trial: int, extra: dict[str, Any] | None = None,
                      record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collect the provenance (``record``: collected already, e.g. while Ray started) and write
    it as ``provenance.json`` into a local sweep folder or a bucket's (``s3://...``)."""
    rec = dict(record) if record is not None else provenance.collect(threads_per_trial=threads_per_trial)
    rec.update(extra or {})
    write_record(folder, rec)
    return rec


def write_record(folder: str, rec: dict[str, Any]) -> None:
    import json

    text = json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n"
    if "://" not in folder:
        provenance.write(Path(folder), rec)
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(folder)
    with fs.open_output_stream(f"{root}/{provenance.FILE_NAME}") as f:
        f.write(text.encode())


def read_record(folder: str) -> dict[str, Any] | None:
    """The stored provenance of a sweep (None when it has none, or it is unreadable)."""
    import json

    try:
        if "://" not in folder:
            path = Path(folder) / provenance.FILE_NAME
            if not path.is_file() or path.stat().st_size > 1 << 20:
                return None
            data = path.read_bytes()
        else:
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(folder)
            with fs.open_input_stream(f"{root}/{provenance.FILE_NAME}") as f:
                data = f.read(1 << 20)
        rec = json.loads(data)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def has_trials(folder: str) -> bool:
    """Whether any trial of the sweep started (Tune made a trial folder)."""
    if "://" in folder:
        import pyarrow.fs as pafs

        try:
            fs, root = pafs.FileSystem.from_uri(folder)
            infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        except OSError:
            return True  # cannot tell: keep it
        return any(Path(i.path).name.startswith("trial_") for i in infos)
    p = Path(folder)
    return p.is_dir() and any(c.name.startswith("trial_") for c in p.iterdir())


def remove_failed_start(folder: str) -> bool:
    """Remove a sweep folder no trial ever started in (sweep.yaml, provenance, tuner.pkl, an
    empty study); True when removed. A folder with trials is kept for --resume."""
    if has_trials(folder):
        return False
    try:
        if "://" in folder:
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(folder)
            fs.delete_dir(root)
        else:
            shutil.rmtree(folder, ignore_errors=False)
    except (OSError, FileNotFoundError):
        return False
    return True


def warn_provenance(stored: dict | None, threads: int, now: dict | None = None) -> None:
    """--resume on another machine or code: one line per difference that can move numbers."""
    if stored is None:
        return
    now = now if now is not None else provenance.collect(threads_per_trial=threads)
    for line in provenance.differences(stored, now, provenance.NUMERIC_FIELDS + ("cpu_model", "lock_sha256")):
        print(f"warning: resumed under different provenance, {line} (stored vs now)", file=sys.stderr)

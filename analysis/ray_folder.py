"""Read one Ray Tune experiment folder (a sweep) trial by trial, from plain JSON files.

Why not ``ray.tune.ExperimentAnalysis``: it rebuilds trials from
``experiment_state-*.json``, whose fields are partly cloudpickled, so loading a sweep
folder through it unpickles files from disk (against the project's rule of never
unpickling user-supplied files), and one bad trial folder makes it fail as a whole. The
same JSON file also holds every trial's ``status`` and ``relative_logdir`` as plain JSON;
we read only those and never touch the pickled values (``tuner.pkl``, ``params.pkl``,
``error.pkl``, the ``CLOUDPICKLE_FALLBACK`` entries).

Files read per trial folder (Ray 2.60 layout, verified against a real ``tune.Tuner`` run):
``params.json`` (the sampled config), ``result.json`` (JSON lines, one per
``tune.report``), ``error.txt`` (when the trial raised), ``checkpoint_*/``; plus the
trainer's ``run/`` (``config.yaml``, ``metrics.jsonl``, ``checkpoint_best.pt``) and
``evaluation/`` (record files, ``summary.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuroreg.safe_io import read_bytes
from neuroreg.yamlio import load_strict

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_FILE_BYTES = 512 << 20
"""Largest file read from a trial folder (512 MiB; a result.json of 1000 epochs is ~5 MiB)."""
UNREADABLE = (OSError, ValueError, TypeError, RecursionError, MemoryError)
"""What reading one file can raise: missing, not a regular file (a FIFO), too large, bad JSON or
YAML, nested past the recursion limit. Each is one Problem, never an aborted gather."""


def read_text(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A regular file's text (at most ``max_bytes``); a FIFO, device or socket is never opened."""
    return read_bytes(path, path.name, max_bytes, "results file").decode("utf-8", errors="replace")


def _json(path: Path) -> Any:
    return json.loads(read_text(path))


@dataclass
class Problem:
    """Something in the sweep folder that could not be read; the gather reports it."""

    where: str
    message: str
    skipped: bool
    """True when the whole trial was left out of the tables."""

    def __str__(self) -> str:
        what = "skipped" if self.skipped else "partly read"
        return f"{self.where}: {self.message} ({what})"


@dataclass
class TrialFolder:
    """Everything read from one trial folder, as plain Python values."""

    trial_id: str
    path: Path
    status: str
    params: dict[str, Any]
    results: list[dict[str, Any]]
    config: dict[str, Any] | None
    """The trainer's resolved config (run/config.yaml), nested; None when absent."""
    error: str | None
    summary: dict[str, Any]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Record file stem -> list of records from evaluation/*.jsonl."""
    run_metrics: list[dict[str, Any]] = field(default_factory=list)


def read_experiment_state(sweep_dir: Path, problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """relative_logdir -> {trial_id, status, error_filename} from the newest experiment state."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    path = states[-1]  # names carry the session timestamp, so the last one is the newest
    try:
        data = _json(path)
        out = {}
        for item in data.get("trial_data", []):
            state = json.loads(item[0])
            runtime = json.loads(item[1]) if len(item) > 1 else {}
            logdir = state.get("relative_logdir")
            if logdir:
                out[logdir] = {
                    "trial_id": state.get("trial_id"),
                    "status": state.get("status"),
                    "error_filename": runtime.get("error_filename"),
                }
        return out
    except (*UNREADABLE, IndexError, AttributeError) as e:
        problems.append(Problem(path.name, f"unreadable experiment state ({e}); statuses inferred from files", False))
        return {}


def trial_dirs(sweep_dir: Path) -> list[Path]:
    """Trial folders: sub-folders holding Ray's params.json or result.json."""
    return sorted(
        p for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / "params.json").exists() or (p / "result.json").exists())
    )


def read_jsonl(path: Path, problems: list[Problem], where: str) -> list[dict[str, Any]]:
    """JSON lines; a bad line (e.g. half-written at the end) is dropped and reported."""
    rows = []
    bad = 0
    try:
        text = read_text(path)
    except UNREADABLE as e:
        problems.append(Problem(where, f"{path.name} unreadable ({e})", False))
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        problems.append(Problem(where, f"{path.name}: {bad} unreadable line(s) dropped", False))
    return rows


def error_message(text: str) -> str:
    """The exception line(s) at the end of Ray's error.txt, without colour codes."""
    lines = [ln.rstrip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    if not lines:
        return ""
    # The traceback ends with "ExceptionType: message"; keep from the last such line on.
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*:", lines[i]) or re.match(
            r"^[A-Za-z_][\w.]*(Error|Exception)$", lines[i]
        ):
            return "\n".join(lines[i:])[:2000]
    return lines[-1][:2000]


def read_trial(path: Path, state: dict[str, Any] | None, problems: list[Problem]) -> TrialFolder | None:
    """Read one trial folder; None (and a Problem) when it cannot be used at all."""
    where = path.name
    try:
        params = _json(path / "params.json") if (path / "params.json").exists() else None
    except UNREADABLE as e:
        problems.append(Problem(where, f"params.json unreadable ({e})", True))
        return None
    if params is not None and not isinstance(params, dict):
        problems.append(Problem(where, "params.json is not a mapping", True))
        return None
    results = read_jsonl(path / "result.json", problems, where) if (path / "result.json").exists() else []
    if params is None:
        params = next((r["config"] for r in results if isinstance(r.get("config"), dict)), None)
        if params is None:
            problems.append(Problem(where, "no params.json and no config in result.json", True))
            return None

    trial_id = (state or {}).get("trial_id") or next(
        (str(r["trial_id"]) for r in results if r.get("trial_id")), None
    ) or _id_from_dirname(path.name)

    error = None
    if (path / "error.txt").exists():
        try:
            error = error_message(read_text(path / "error.txt")) or "error (empty error.txt)"
        except UNREADABLE as e:
            error = f"error.txt unreadable: {e}"
    status = (state or {}).get("status") or ("ERROR" if error else "UNKNOWN")
    if status == "ERROR" and not error:
        error = "error (no error.txt in the trial folder)"

    config = None
    cfg_path = path / "run" / "config.yaml"
    if cfg_path.exists():
        try:
            config = load_strict(read_text(cfg_path, 1 << 20))  # safe YAML, nesting bounded
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
        except (*UNREADABLE, yaml.YAMLError) as e:
            problems.append(Problem(where, f"run/config.yaml unreadable ({e}); config from params.json", False))
            config = None

    summary: dict[str, Any] = {}
    sum_path = path / "evaluation" / "summary.json"
    if sum_path.exists():
        try:
            summary = _json(sum_path)
            if not isinstance(summary, dict):
                raise ValueError("not a mapping")
        except UNREADABLE as e:
            problems.append(Problem(where, f"evaluation/summary.json unreadable ({e})", False))
            summary = {}

    records = {}
    eval_dir = path / "evaluation"
    if eval_dir.is_dir():
        for f in sorted(eval_dir.glob("*.jsonl")):
            records[f.stem] = read_jsonl(f, problems, where)

    run_metrics = []
    if (path / "run" / "metrics.jsonl").exists():
        run_metrics = read_jsonl(path / "run" / "metrics.jsonl", problems, where)

    return TrialFolder(
        trial_id=str(trial_id), path=path.resolve(), status=str(status), params=params,
        results=results, config=config, error=error, summary=summary, records=records,
        run_metrics=run_metrics,
    )


def _id_from_dirname(name: str) -> str:
    # Ray names trial folders "<trainable>_<trial_id>_<index>_<tag>_<date>"; trial ids
    # look like "8eeaf_00000".
    m = re.search(r"([0-9a-f]{5}_\d{5})", name)
    return m.group(1) if m else name


def latest_checkpoint(path: Path) -> Path | None:
    """The trainer's best checkpoint, else Ray's newest checkpoint folder."""
    best = path / "run" / "checkpoint_best.pt"
    if best.exists():
        return best.resolve()
    ckpts = sorted(path.glob("checkpoint_*"))
    return ckpts[-1].resolve() if ckpts else None


def flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mapping -> flat mapping with dotted keys; lists of scalars become 'a,b,c'."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            if value:
                out.update(flatten(value, name, sep))
            else:
                out[name] = None
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = value
    return out



def fetch_remote(uri: str, dest: Path) -> tuple[Path, int]:
    """Copy a sweep folder from remote storage (s3://, gs://, any URI pyarrow opens) to
    ``dest``, without checkpoints (Ray's ``checkpoint_*/`` and the trainer's ``*.pt``): the
    tables need only the JSON, YAML and record files. Credentials and the endpoint come
    from the usual places (AWS_* variables, ~/.aws, AWS_ENDPOINT_URL_S3 or
    ``?endpoint_override=`` in the URI). Returns (dest, files copied)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    if not infos:
        raise FileNotFoundError(f"SWEEP_DIR: {uri} holds no files")
    n = 0
    for info in infos:
        rel = info.path[len(root):].lstrip("/")
        parts = rel.split("/")
        if info.type != pafs.FileType.File or any(p.startswith("checkpoint_") for p in parts[:-1]) \
                or rel.endswith(".pt") or ".." in parts:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as out:
            out.write(src.read())
        n += 1
    return dest, n


def uri_join(uri: str, *parts: str) -> str:
    """``uri``/parts, keeping a query string (``?endpoint_override=...``) at the end."""
    base, sep, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")

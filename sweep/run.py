"""Run a sweep: ``python -m sweep.run --space alpha_th.yaml``.

The search-space file is validated completely before Ray starts (exit code 2 with the
offending key). Results land in STORAGE/NAME/ (docs/ARCHITECTURE.md, "sweep").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from neuroreg.config import ConfigError
from neuroreg.paths import check_output_folder
from sweep.folder import SPEC_FILE, sweep_folder
from sweep.folder import read_saved_spec as _read_saved_spec
from sweep.folder import write_saved_spec as _write_saved_spec
from sweep.process import Warmup, exit_now, shutdown_in_background  # noqa: F401 (exit_now: __main__)

PROJECT = Path(__file__).resolve().parents[1]


def default_storage() -> Path:
    root = PROJECT if (PROJECT / "pyproject.toml").is_file() else Path.cwd()
    return (root / "results" / "sweeps").resolve()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sweep.run",
        description="Run a hyperparameter sweep of neuroreg trainings with Ray Tune.",
    )
    p.add_argument("--space", help="search-space YAML: a path or a name in search_spaces/ (e.g. alpha_th.yaml)")
    p.add_argument("--name", help="experiment name (default: the space's name + a time stamp)")
    p.add_argument("--storage", help=f"results folder or URI (default {default_storage()})")
    p.add_argument("--results", metavar="DIR",
                   help="local root of the Parquet tables, DIR/tables/ (default: the parent of --storage; with "
                        "remote --storage this project's results/, the sweep copied to DIR/remote/NAME)")
    p.add_argument("--num-samples", type=int, help="configurations to draw (random / optuna)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as many as fit)")
    p.add_argument("--address", help="connect to a running Ray cluster (e.g. auto or HOST:6379) instead of starting one")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (fractions allowed)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions allowed, e.g. 0.25)")
    p.add_argument("--study-storage", metavar="URL",
                   help="SQLAlchemy URL of the Optuna study (default: sqlite:///STORAGE/NAME/study.db; "
                        "in memory with remote --storage)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep --name (default: the latest of this space); with --num-samples N "
                        "an Optuna study is extended to N configurations")
    p.add_argument("--rerun", metavar="SWEEP",
                   help="run a stored sweep's exact sweep.yaml again under a new name (--name, default "
                        "SWEEP-rerun-<time>), to compare the two sweeps' deterministic columns")
    p.add_argument("--dry-run", action="store_true", help="print the resolved space and the trial count; start nothing")
    p.add_argument("--debug", action="store_true", help="show the full traceback when the sweep fails to start")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base config field")
    p.add_argument("--data-root", help="sets NEUROREG_DATA_ROOT (made absolute) for data sets that need files")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray instance without its dashboard")
    p.add_argument("--no-resource-check", action="store_true",
                   help="skip the fail-fast resource check (autoscaling clusters that add nodes on demand)")
    p.add_argument("--wandb", metavar="PROJECT",
                   help="also log every trial to Weights & Biases (Ray's WandbLoggerCallback; needs `pip install "
                        "wandb` and WANDB_API_KEY, or WANDB_MODE=offline)")
    p.add_argument("--mlflow", metavar="URI",
                   help="also log every trial to MLflow at this tracking URI, e.g. file:./mlruns (Ray's "
                        "MLflowLoggerCallback; needs `pip install mlflow`)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (the final table and summary only)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's own progress output (result boxes, status tables, checkpoint lines)")
    return p.parse_args(argv)


def resolve_storage(arg: str | None) -> str:
    if not arg:
        return str(default_storage())
    if "://" in arg and not arg.startswith("file://"):
        return arg
    return str(Path(arg.removeprefix("file://")).expanduser().resolve())


def latest_experiment(storage: str, prefix: str) -> str | None:
    root = Path(storage)
    if "://" in storage or not root.is_dir():
        return None
    cands = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(f"{prefix}-") and (d / SPEC_FILE).is_file()]
    return max(cands, key=lambda d: d.stat().st_mtime).name if cands else None


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, flag: str = "--name") -> str:
    """A sweep name is one folder under --storage: letters, digits, '.', '_', '-' only."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ConfigError(flag, f"{name!r} is not a safe sweep name; use letters, digits, '.', '_' and '-' "
                                "(at most 128, starting with a letter or digit)")
    return name


def check_flags(args: argparse.Namespace, storage: str) -> None:
    """Flags checked before anything starts or is written."""
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError("--num-cpus", f"must be >= 1, got {args.num_cpus}")
    if "://" not in storage:
        check_output_folder(storage, "--storage")
    if args.results is not None:  # the root of the Parquet tables: a folder, never a file
        check_output_folder(Path(args.results).expanduser(), "--results")
    if "://" in storage:
        check_remote_storage(storage)
    for flag, package in (("--wandb", "wandb"), ("--mlflow", "mlflow")):
        if getattr(args, flag[2:]) is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(flag, f"needs the {package} package: pip install {package} (or drop {flag})")
    if args.resume:
        ignored = [f for f, v in (("--max-concurrent", args.max_concurrent), ("--cpus-per-trial", args.cpus_per_trial),
                                  ("--gpus-per-trial", args.gpus_per_trial), ("--study-storage", args.study_storage),
                                  ("--wandb", args.wandb), ("--mlflow", args.mlflow))
                   if v is not None]
        if ignored:
            raise ConfigError(ignored[0], "a resumed sweep keeps the settings it started with; "
                                          "drop the flag, or start a new sweep to change it")


def check_remote_storage(storage: str) -> None:
    """The bucket answers with the credentials at hand, before Ray starts (pyarrow reads the
    AWS variables, ~/.aws and instance profiles; the endpoint from AWS_ENDPOINT_URL_S3 or
    ``?endpoint_override=``): never credentials from the sweep file."""
    import pyarrow.fs as pafs

    hint = ("credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws or an instance profile, "
            "a non-AWS endpoint from AWS_ENDPOINT_URL_S3")
    try:
        fs, root = pafs.FileSystem.from_uri(storage)
        bucket = root.split("/", 1)[0]
        info = fs.get_file_info(bucket)
    except (OSError, ValueError) as e:
        raise ConfigError("--storage", f"cannot reach {storage}: {str(e).splitlines()[0][:200]}; {hint}") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError("--storage", f"bucket {bucket!r} of {storage} does not exist (or these credentials cannot "
                                       f"see it); create it first; {hint}")


def load_for_run(args: argparse.Namespace, storage: str):
    """(spec, experiment name); raises ConfigError on any bad input."""
    from sweep.spec import MAX_SAMPLES, load_spec, parse_spec

    check_flags(args, storage)

    if args.data_root:
        root = Path(args.data_root).expanduser().resolve()
        if not root.exists():
            raise ConfigError("--data-root", f"{root} does not exist")
        os.environ["NEUROREG_DATA_ROOT"] = str(root)
    if args.rerun is not None:
        return _load_rerun(args, storage)
    if args.resume:
        name = args.name
        if name is None:
            if not args.space:
                raise ConfigError("--resume", "name the sweep with --name (or give --space to take its latest run)")
            from sweep.spec import resolve_space_path

            stem = _spec_name(resolve_space_path(args.space))
            name = latest_experiment(storage, stem)
            if name is None:
                raise ConfigError("--resume", f"no earlier sweep of {stem!r} in {storage}; pass --name")
        check_name(name)  # before the name becomes a path: no ../ out of --storage
        saved = _read_saved_spec(storage, name)
        if args.set:
            raise ConfigError("--set", "a resumed sweep keeps its configuration; start a new sweep to change it")
        spec = parse_spec(saved, default_name=name, source=f"{storage}/{name}/{SPEC_FILE}")
        if args.num_samples is not None:
            _extend(spec, args.num_samples, MAX_SAMPLES)
        return spec, name
    if not args.space:
        raise ConfigError("--space", "give a search-space file or name, e.g. --space alpha_th.yaml")
    spec = load_spec(args.space, args.set)
    if args.num_samples is not None:
        if not 1 <= args.num_samples <= MAX_SAMPLES:
            raise ConfigError("--num-samples", f"must lie in [1, {MAX_SAMPLES}], got {args.num_samples}")
        spec.num_samples = args.num_samples
    if args.cpus_per_trial is not None:
        spec.resources.cpus_per_trial = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        spec.resources.gpus_per_trial = args.gpus_per_trial
    if args.max_concurrent is not None:
        spec.resources.max_concurrent = args.max_concurrent
    from sweep.spec import validate_spec

    validate_spec(spec)  # the command-line values too
    if args.study_storage is not None:
        if spec.search.algorithm != "optuna":
            raise ConfigError("--study-storage", f"only an Optuna sweep has a study; this one searches by "
                                                 f"{spec.search.algorithm}: drop the flag")
        from sweep.study import check_study_url

        check_study_url(args.study_storage)
    name = check_name(args.name or f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if "://" not in storage and (Path(storage) / name).exists():
        raise ConfigError("--name", f"{Path(storage) / name} exists; pass --resume to continue it or choose another name")
    if args.study_storage is not None:
        # Ray's OptunaSearch loads an existing study of the same name: a new sweep would be
        # seeded with another sweep's trials (another space, maybe other directions).
        # Read-only: a dry run (and this check) never creates Optuna's tables.
        from sweep.study import study_trials

        try:
            held = study_trials(args.study_storage, name)
        except Exception as e:  # an unreachable database, wrong credentials
            raise ConfigError("--study-storage", f"cannot open {args.study_storage!r}: "
                                                 f"{str(e).splitlines()[0][:160]}") from None
        if held:
            raise ConfigError("--name", f"the study {name!r} in --study-storage already holds {held} trials; "
                                        "choose another --name (or --resume the sweep that made it)")
    return spec, name


def _load_rerun(args: argparse.Namespace, storage: str):
    """--rerun SWEEP: the stored sweep.yaml as it is, under a new name."""
    from sweep.spec import parse_spec

    clash = [f for f, v in (("--space", args.space), ("--resume", args.resume), ("--set", args.set),
                            ("--num-samples", args.num_samples), ("--study-storage", args.study_storage),
                            ("--cpus-per-trial", args.cpus_per_trial), ("--gpus-per-trial", args.gpus_per_trial),
                            ("--max-concurrent", args.max_concurrent)) if v]
    if clash:
        raise ConfigError(clash[0], "a rerun runs the stored sweep.yaml exactly; drop the flag (or start a new sweep "
                                    "with --space to change it)")
    source = check_name(args.rerun, "--rerun")
    saved = _read_saved_spec(storage, source, "--rerun")
    spec = parse_spec(saved, default_name=source, source=f"{storage}/{source}/{SPEC_FILE}")
    name = check_name(args.name or f"{source}-rerun-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if "://" not in storage and (Path(storage) / name).exists():
        raise ConfigError("--name", f"{Path(storage) / name} exists; choose another name for the rerun")
    spec.rerun_of = source
    return spec, name


def _extend(spec, n: int, max_samples: int) -> None:
    """--resume --num-samples N: an Optuna study grows to N configurations; nothing else can."""
    if spec.search.algorithm != "optuna":
        raise ConfigError("--num-samples", f"a resumed {spec.search.algorithm} sweep keeps its trial list; only an "
                                           "Optuna study can be extended: drop the flag or start a new sweep")
    if not spec.num_samples <= n <= max_samples:
        raise ConfigError("--num-samples", f"the sweep already has {spec.num_samples} configurations; give a number "
                                           f"in [{spec.num_samples}, {max_samples}] to extend it")
    spec.num_samples = n


def _spec_name(path: Path) -> str:
    from neuroreg.yamlio import read_yaml_file

    raw = read_yaml_file(path, "--space", "sweep file") or {}
    return raw.get("name", path.stem) if isinstance(raw, dict) else path.stem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage = resolve_storage(args.storage)
    try:
        spec, name = load_for_run(args, storage)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from sweep.describe import describe

        print(describe(spec))
        print(f"  would write to: {storage}/{name}")
        return 0
    return run_sweep(spec, name, storage, args)


def run_sweep(spec, name: str, storage: str, args: argparse.Namespace) -> int:
    # num_to_keep=2 snapshots the experiment state at every epoch checkpoint (what makes
    # --resume exact); Tune warns about that frequency, which is intended here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from sweep.ray_session import prepare_auth

    # Before `import ray`, which reads the mode once; without it a live `ray start` found on
    # this machine refused the driver (InvalidAuthToken).
    if (source := prepare_auth(args.address, args.num_cpus)) and args.address:
        print(f"Token authentication: RAY_AUTH_MODE=token with the token in {source}")
    import ray

    from sweep.ray_session import (
        check_node_paths,
        check_resources,
        dashboard_help,
        default_concurrency,
        start_ray,
    )
    from sweep.space import BASELINE_PARAMS, config_value
    from sweep.start import StartError, remove_failed_start

    warm = Warmup(max(1, int(spec.resources.cpus_per_trial // 1)))
    try:
        info = start_ray(args.address, args.num_cpus, dashboard=not args.no_dashboard)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Ray Tune and pandas after Ray's start: the warm-up thread imports pandas meanwhile (Tune
    # needs it too), which takes it off the path before the first trial.
    from sweep.report import best_result_metric, format_table, trial_rows, unfinished
    from sweep.sequential import all_seeds
    print(f"Ray ready in {info.startup_s:.1f} s")
    print(dashboard_help(info), flush=True)
    try:
        r = spec.resources
        if not args.no_resource_check:
            try:
                footprint = None
                if r.gpus_per_trial > 0:  # a fractional GPU must hold the trial's data and model
                    from sweep.validation import largest_footprint

                    footprint = largest_footprint(spec)
                res = check_resources(r.cpus_per_trial, r.gpus_per_trial, footprint)
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:
            res = ray.cluster_resources()
            res = {"CPU": float(res.get("CPU", 1)), "GPU": float(res.get("GPU", 0))}
        if not info.started_here:
            try:  # the driver checked the files on its machine; a cluster's nodes may lack them
                check_node_paths(_trial_paths(spec))
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        concurrency = r.max_concurrent or default_concurrency(
            res, r.cpus_per_trial, r.gpus_per_trial, spec.num_trials() if args.no_resource_check else None)
        verbose = 1 if args.verbose else 0
        t0 = time.perf_counter()
        try:
            results = _start_and_fit(spec, name, storage, args, concurrency, verbose, warm.result())
        except StartError as e:
            folder = sweep_folder(storage, name)
            removed = not args.resume and remove_failed_start(folder)
            print(f"error: {e}" + (f" (nothing kept: {folder} removed)" if removed else
                                   f"; the sweep folder {folder} is kept for --resume"), file=sys.stderr)
            if args.debug:
                import traceback

                traceback.print_exception(e.__cause__ or e)
            return 1
        wall = time.perf_counter() - t0
        df = trial_rows(results, fill={k: config_value(spec.base_config, k) for k in BASELINE_PARAMS},
                        seeds=all_seeds(spec), base=spec.base_config.to_dict())
        print()
        print(format_table(df))
        errors = [res_ for res_ in results if res_.error]
        best = best_result_metric(results, spec.metric, spec.mode)
        exp_path = results.experiment_path
        print(f"\n{len(df)} trials in {wall:.1f} s, {len(errors)} errored")
        if best is not None:
            b, v = best
            from sweep.labels import applies, fmt_value

            params = (b.config or {}).get("params", {})
            base = spec.base_config.to_dict()
            shown = " ".join(f"{k}={fmt_value(x)}" for k, x in params.items() if applies(k, params, base))
            print(f"Best trial by {spec.metric} ({spec.mode}): {spec.metric} = {v:.4g}  {shown}")
            print(f"  folder: {b.path}")
        print(f"Results: {exp_path}  (per trial: run/ = checkpoints + metrics.jsonl, evaluation/ = records)")
        for e in errors:
            print(f"  errored trial {e.path}: {str(e.error).splitlines()[0][:300]}", file=sys.stderr)
        # The tables need no Ray: its processes stop while they are written.
        stopping = shutdown_in_background() if info.started_here else None
        _gather(exp_path, storage, name, args.results)
        interrupted = unfinished(results) > 0 or len(df) < spec.num_trials()
        if interrupted or errors:
            print(f"Continue it with: python -m sweep.run --resume --name {name} --storage {storage}")
        if stopping is not None:
            stopping.join()
        return 1 if errors else (130 if interrupted else 0)
    finally:
        if info.started_here and ray.is_initialized():
            ray.shutdown()


def _start_and_fit(spec, name: str, storage: str, args: argparse.Namespace, concurrency: int, verbose: int,
                   provenance: dict | None = None):
    """Save the spec and the provenance (``provenance``: collected already, else now), build
    (or restore) the Tuner and run it. Anything that fails before the first trial started is
    a StartError naming what failed."""
    from sweep.start import StartError, has_trials, read_record, record_provenance, warn_provenance
    from sweep.tuner import build_tuner, restore_tuner, trial_count

    folder = sweep_folder(storage, name)
    threads = max(1, int(spec.resources.cpus_per_trial // 1))
    study = _study_storage(spec, storage, name, args)
    try:
        if args.resume:
            print(f"Resuming {storage}/{name} ({spec.num_trials()} trials)")
            warn_provenance(read_record(folder), threads, provenance)
            tuner = restore_tuner(spec, storage, name, verbose)
            if args.num_samples is not None:  # restored: the extended count is what the next --resume sees
                _write_saved_spec(storage, name, spec.to_yaml())
        else:
            saved = _write_saved_spec(storage, name, spec.to_yaml())
            rerun_of = getattr(spec, "rerun_of", None)
            record_provenance(folder, threads, {"sweep": name, "rerun_of": rerun_of}, record=provenance)
            print(f"Sweep {name}: {trial_count(spec)} trials, up to {concurrency} at a time; spec saved to {saved}"
                  + (f" (a rerun of {rerun_of})" if rerun_of else ""), flush=True)
            tuner = build_tuner(spec, storage, name, concurrency, verbose, progress=not args.quiet,
                                study_storage=study, max_failures=spec.failure.max_failures,
                                loggers=_loggers(args, name))
    except StartError:
        raise
    except Exception as e:  # Tune's own set-up (storage, the experiment state, the study database)
        raise StartError(f"the sweep could not be set up: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if study:
        print(f"Optuna study {name!r} in {study}  (browse: optuna-dashboard {study})", flush=True)
    if "://" not in storage:  # Ray's own hint names a session folder; the curves are here
        print(f"Live curves: tensorboard --logdir {Path(storage) / name / 'tensorboard'}", flush=True)
    try:
        return tuner.fit()
    except Exception as e:
        if has_trials(folder):
            raise
        raise StartError(f"Tune stopped before the first trial: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e


def _loggers(args: argparse.Namespace, name: str) -> list:
    """Ray's own logger callbacks behind --wandb / --mlflow (checked importable up front)."""
    out = []
    if args.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=args.wandb, group=name))
    if args.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=args.mlflow, experiment_name=name, save_artifact=False))
    return out


def _trial_paths(spec) -> dict[str, str]:
    """Config key -> the local file or folder a trial reads (absolute, as the spec pins them)."""
    from neuroreg.config import RunConfig
    from sweep.spec import _PATH_FIELDS, config_value

    cfg = RunConfig.from_dict(spec.base, validate=False)
    values = {key: config_value(cfg, key) for key in _PATH_FIELDS}
    return {k: v for k, v in values.items() if isinstance(v, str) and v and "://" not in v}


def _study_storage(spec, storage: str, name: str, args: argparse.Namespace) -> str | None:
    """The study's URL: --study-storage, else the SQLite file in the sweep folder (local
    storage); on --resume the one the study was created in (the searcher keeps its URL)."""
    if spec.search.algorithm != "optuna":
        return None
    from sweep.study import STUDY_FILE, default_study_storage

    if args.resume:
        url = default_study_storage(storage, name)
        return url if url and (Path(storage) / name / STUDY_FILE).is_file() else None
    return args.study_storage or default_study_storage(storage, name)


def _gather(exp_path: str, storage: str, name: str, results: str | None = None) -> None:
    """Parquet tables for the analysis, when the analysis package is there."""
    try:
        from analysis.gather import gather
    except ImportError:
        print("(analysis.gather not available: no Parquet tables written)")
        return
    try:
        if "://" in storage:
            from analysis.gather import fetch_sweep
            from analysis.ray_folder import uri_join

            # Remote storage: the tables are built from a local copy (no checkpoints),
            # ROOT/remote/NAME, and written to ROOT/tables/ of this project's results.
            exp_path = str(fetch_sweep(uri_join(storage, name), results or default_storage().parent))
        results_root = Path(exp_path).parent.parent if "://" in storage else Path(results or Path(storage).parent)
        tables = gather(exp_path, results_root)
    except Exception as e:  # the sweep's results stand without the tables
        print(f"warning: analysis.gather failed: {type(e).__name__}: {e}", file=sys.stderr)
        return
    for kind, path in (tables or {}).items():
        print(f"  table {kind}: {path}")
    if "trials" in (tables or {}):
        from analysis.summary import print_summary

        print()
        print_summary(results_root, Path(exp_path).name)


if __name__ == "__main__":
    exit_now(main())

"""The Ray Tune trainable: one trial = one neuroreg training run + its evaluation.

A plain function, as in Ray's examples. Every epoch it reports the trainer's metrics with
a ``tune.Checkpoint`` holding ``checkpoint_last.pt``; a restored trial continues from the
last reported checkpoint (``tune.get_checkpoint``). After training it evaluates the
best-validation model and reports once more with the summary metrics. The trial's files
go to the trial folder: ``run/`` (the trainer's out_dir) and ``evaluation/`` (records).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neuroreg.config import RunConfig, config_with

TRIAL_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX, without importing Ray here


def data_key(cfg: RunConfig) -> tuple:
    """What ``neuroreg.train.prepare_data`` depends on: trials with equal keys share data."""
    r = cfg.regularizer
    return (
        repr(asdict(cfg.data)),
        repr(asdict(r.data)) if r.data is not None else None,
        r.n,
        r.seed,
        r.order,
    )


def prepare_shared_data(cfg: RunConfig, needs_reg: bool = True) -> Any:
    """Decode the base configuration's data once (driver side) for every trial that uses it.

    The regularization images are loaded even when the base itself is unregularized, so a
    grid over targets (none / pixel / pixel_th ...) shares one copy; ``needs_reg`` False (no
    trial of the sweep regularizes) skips them, since the set may not even exist.
    """
    from neuroreg.data import load_regularization_set
    from neuroreg.train import PreparedData, prepare_data

    prepared = prepare_data(cfg)
    if prepared.reg is None and needs_reg:
        prepared = PreparedData(prepared.splits, load_regularization_set(cfg.regularizer, cfg.data))
    return prepared


def resolve_trial_config(
    config: dict[str, Any], base: dict[str, Any], seeds: list[int] | None, cpus_per_trial: float
) -> RunConfig:
    """The trial's RunConfig: base + its dotted parameters (+ its seed when repeated)."""
    params = dict(config.get("params") or {})
    if TRIAL_INDEX in config and seeds:
        params["train.seed"] = seeds[int(config[TRIAL_INDEX])]
    cfg = RunConfig.from_dict(config_with(base, params))
    if cfg.train.num_threads is None:
        # Torch threads = this trial's CPU share, so concurrent trials do not oversubscribe.
        cfg.train.num_threads = max(1, int(math.floor(cpus_per_trial)))
    return cfg


MIN_DRIVER = {"13": "580", "12": "525", "11": "450"}
"""Minimum Linux NVIDIA driver per CUDA major version (NVIDIA's minor-version compatibility:
a wheel built with CUDA 13.x runs on a 580 or newer driver)."""


def trial_device(device: str, gpu_ids: list) -> tuple[str, str | None]:
    """The device a trial trains on, and a line saying why it is the CPU despite a GPU share.

    ``gpu_ids``: what Ray assigned (``ray.get_gpu_ids()``). Without a share, ``auto`` means
    the CPU (a trial must not take a GPU Ray did not give it). With one, ``cpu`` is honoured
    (logical GPUs used only to pack trials) with a line saying so, and anything else needs a
    usable CUDA: otherwise :class:`CudaUnusable` names the cause and the fix.
    """
    if not gpu_ids:
        return ("cpu" if device == "auto" else device), None
    if device == "cpu":
        return "cpu", (f"trains on the CPU although Ray assigned GPU {','.join(map(str, gpu_ids))}: "
                       "train.device is cpu (the GPU share only packs trials)")
    problem = cuda_problem()
    if problem:
        raise CudaUnusable(f"Ray assigned GPU {','.join(map(str, gpu_ids))} to this trial but {problem}")
    return device, None


def gpu_memory_share(device: str, assigned: dict[str, float], cuda: Any = None) -> float | None:
    """Cap the trial's CUDA memory at its fractional GPU share; returns the fraction set, or None.

    ``assigned``: the trial's Ray resources (``get_assigned_resources()``, e.g. {"GPU": 0.25}).
    Four trials at 0.25 GPU each hold a CUDA context and a copy of the images on one card;
    without a cap the first to grow takes the memory the others were promised, and one of
    them fails with an out-of-memory error mid-run. ``set_per_process_memory_fraction``
    makes torch's allocator refuse past the share instead (the CUDA context itself is
    outside it). A whole GPU or more, or a trial on the CPU, is not capped. ``cuda``: the
    torch.cuda module (a stand-in in tests).
    """
    share = float(assigned.get("GPU", 0.0))
    if device == "cpu" or not 0 < share < 1:
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0  # Ray's GPU is device 0
    cuda.set_per_process_memory_fraction(share, index)
    return share


class CudaUnusable(RuntimeError):
    """A trial holds a GPU share but torch cannot use the GPU."""


def cuda_problem() -> str | None:
    """Why torch cannot train on this node's GPU (the cause and what to install), or None."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        return ("this torch is a CPU-only build: install the CUDA wheel on every GPU node "
                f"(pip install torch=={torch.__version__.split('+')[0]} --index-url "
                "https://download.pytorch.org/whl/cu130)")
    driver = nvidia_driver_version()
    need = MIN_DRIVER.get(cuda.split(".")[0], "a recent")
    if not torch.cuda.is_available():
        try:
            torch.cuda.init()
            reason = "torch sees no CUDA device"
        except Exception as e:  # torch says "no NVIDIA driver" / "driver ... too old" here
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if driver is None:
            cause = "no NVIDIA driver is loaded on this node (/proc/driver/nvidia/version is missing)"
        elif "too old" in reason.lower() or _older(driver, need):
            cause = f"the NVIDIA driver {driver} is too old for this torch's CUDA {cuda}"
        else:
            cause = f"torch cannot initialise CUDA ({reason}; CUDA_VISIBLE_DEVICES={visible!r})"
        return (f"torch.cuda.is_available() is False: {cause}. This torch {torch.__version__} needs an NVIDIA "
                f"driver >= {need} (CUDA {cuda}) and a GPU of {_arch_range(torch.cuda.get_arch_list())}: "
                "install or update the driver, or install a torch wheel built for the CUDA your driver supports "
                "(https://pytorch.org/get-started/locally/); or run the sweep with train.device: cpu")
    arches = torch.cuda.get_arch_list()
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        if not arch_supported(cap, arches):
            name = torch.cuda.get_device_name(i)
            return (f"its GPU {i} ({name}, compute capability {cap[0]}.{cap[1]}) is not among the architectures "
                    f"this torch {torch.__version__} was built for ({', '.join(arches)}): install a torch wheel "
                    f"built for an older CUDA that still includes sm_{cap[0]}{cap[1]} "
                    f"(https://pytorch.org/get-started/previous-versions/), or use a GPU of {_arch_range(arches)}")
    return None


def arch_supported(cap: tuple[int, int], arches: list[str]) -> bool:
    """Whether a GPU of compute capability ``cap`` runs this torch's kernels: a cubin of the same
    major version and a minor version <= its own, or PTX (compute_XY) of a version <= its own."""
    major, minor = cap
    for a in arches:
        kind, _, num = a.partition("_")
        if not num.isdigit() or len(num) < 2:
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def _arch_range(arches: list[str]) -> str:
    sms = sorted(int(a[3:]) for a in arches if a.startswith("sm_") and a[3:].isdigit())
    if not sms:
        return "the architectures this torch was built for"
    return f"compute capability {sms[0] // 10}.{sms[0] % 10} or newer (sm_{sms[0]} .. sm_{sms[-1]})"


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version ("580.65.06"), or None when none is loaded."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return "unknown"


def _older(driver: str, need: str) -> bool:
    try:
        return int(driver.split(".")[0]) < int(need)
    except ValueError:
        return False


def _trial_folder(experiment_dir: str | None) -> Path:
    """The trial's folder in the sweep's storage when that is a local (or shared) file system;
    otherwise the trial's working directory, which Ray syncs to storage as artifacts."""
    from ray import tune

    working = Path(tune.get_context().get_trial_dir())
    if experiment_dir is None:
        return working
    return Path(experiment_dir) / working.name


def run_trial(
    config: dict[str, Any],
    base: dict[str, Any],
    seeds: list[int] | None = None,
    experiment_dir: str | None = None,
    cpus_per_trial: float = 1.0,
    shared: Any = None,
    shared_key: tuple | None = None,
    quiet_logs: bool = True,
) -> None:
    """Tune function trainable; the keyword arguments arrive through ``tune.with_parameters``."""
    if quiet_logs:
        import logging

        # One "Checkpoint successfully created" line per trial and epoch, forwarded to the console.
        for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
            logging.getLogger(name).setLevel(logging.WARNING)
    import ray
    import torch
    from ray import tune

    from neuroreg.train import PreparedData, collapse_summary, train

    cfg = resolve_trial_config(config, base, seeds, cpus_per_trial)
    # Never a silent CPU: a trial Ray gave a GPU share fails at once when CUDA is unusable.
    cfg.train.device, why = trial_device(cfg.train.device, ray.get_gpu_ids())
    if why:
        print(f"trial {tune.get_context().get_trial_id()}: {why}", flush=True)
    if ray.get_gpu_ids():
        gpu_memory_share(cfg.train.device, ray.get_runtime_context().get_assigned_resources())
    if cfg.train.deterministic:  # before this process's first cuBLAS handle (the trainer sets it too)
        from neuroreg.precision import CUBLAS_WORKSPACE

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.set_num_threads(cfg.train.num_threads)
    trial_dir = _trial_folder(experiment_dir)
    run_dir = trial_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)

    data = None
    if shared is not None and shared_key == data_key(cfg) and (shared.reg is not None or not cfg.regularizer.active):
        data = PreparedData(shared.splits, shared.reg if cfg.regularizer.active else None)

    # Ray adds hostname and node_ip to every result; the node id tells two nodes of one
    # host apart and shows where a retried trial went after losing its node.
    node = {"node_id": ray.get_runtime_context().get_node_id()}

    def report_epoch(metrics: dict[str, Any]) -> None:
        ckpt_file = Path(metrics.pop("checkpoint"))
        with tempfile.TemporaryDirectory(prefix="neuroreg_ckpt_") as tmp:
            # The best checkpoint travels too: a trial restored where run/ is not (another
            # node, remote storage) must still evaluate its best-validation model.
            for src in (ckpt_file, ckpt_file.with_name("checkpoint_best.pt")):
                if src.is_file():
                    _link_or_copy(src, Path(tmp) / src.name)
            tune.report({**_plain(metrics), **node}, checkpoint=tune.Checkpoint.from_directory(tmp))

    checkpoint = tune.get_checkpoint()
    ctx = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(None)
    with ctx as ckpt_dir:
        resume = Path(ckpt_dir) / "checkpoint_last.pt" if ckpt_dir is not None else None
        if resume is not None and not resume.is_file():
            raise FileNotFoundError(f"the trial's checkpoint {ckpt_dir} holds no checkpoint_last.pt")
        if resume is not None and (Path(ckpt_dir) / "checkpoint_best.pt").is_file():
            # The best of the epoch we resume from, not one a killed run wrote after it.
            shutil.copy2(Path(ckpt_dir) / "checkpoint_best.pt", run_dir / "checkpoint_best.pt")
        result = train(cfg, run_dir, callback=report_epoch, resume_from=resume, data=data)

    final: dict[str, Any] = {k: v for k, v in result.history[-1].items() if k != "checkpoint"}
    final["best_val_acc"] = result.best_val_acc
    final["train_wall_s"] = result.wall_s
    # Layer weights and collapse of the checkpoint that is evaluated, not of the last epoch.
    final["evaluated_checkpoint"] = cfg.train.evaluate_checkpoint
    final["evaluated_epoch"] = result.evaluated_epoch
    for name, w in result.evaluated_layer_weights.items():
        final[f"last_layer_weight_{name}"] = final.get(f"layer_weight_{name}")
        final[f"layer_weight_{name}"] = w
    final.update(collapse_summary(result.evaluated_layer_weights))
    summary = evaluate(result, cfg, trial_dir / "evaluation")
    final.update(summary)
    final["evaluated"] = bool(summary)
    final["device"] = str(next(result.model.parameters()).device)  # what `auto` became on this node
    tune.report({**_plain(final), **node})


def evaluate(result: Any, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run the configured evaluation suites on the best-validation model; {} if none."""
    if not cfg.evaluation.suites:
        return {}
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from neuroreg.evaluate.runner import evaluate_model

    device = next(result.model.parameters()).device
    summary = evaluate_model(result.model, cfg, result.test, out_dir, device)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no copy when on the same file system
    except OSError:
        shutil.copy2(src, dst)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tensor / numpy scalars as Python numbers, for Tune's JSON and CSV loggers."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}

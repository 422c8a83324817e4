"""Run the evaluation suites of ``cfg.evaluation`` on one model and write tidy records.

Every suite writes its JSON Lines file as soon as it finishes (atomically: temp file,
then rename), so a long run that stops late keeps what it has; ``summary.json`` holds
the flat metrics (docs/ARCHITECTURE.md, "Evaluation records").
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroreg.atomic import atomic_write_text
from neuroreg.config import RunConfig
from neuroreg.errors import ConfigError
from neuroreg.evaluate.common import subset_index
from neuroreg.evaluate.config import EvalConfig
from neuroreg.evaluate.suite import Suite, SuiteContext
from neuroreg.evaluate.suites import SUITES
from neuroreg.images import ImageData, to_float
from neuroreg.precision import ieee_fp32

RGB_SOURCES = ("cifar10", "cifar100", "imagefolder")


# --- files -------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> Path:
    """One JSON object per line; non-finite floats as JSON Infinity / NaN (Python's json)."""
    path = Path(path)
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the runner ----------------------------------------------------------------------------


def check_inputs(cfg: RunConfig, surrogate: nn.Module | None) -> EvalConfig:
    """Fail before any expensive work when the suites cannot run as configured."""
    ev = cfg.evaluation
    ev.validate("evaluation")
    for suite in selected_suites(ev):
        if suite.needs_surrogate and surrogate is None and ev.surrogate is None:
            raise ConfigError(
                "evaluation.surrogate",
                f"the {suite.name} suite needs a surrogate model: set evaluation.surrogate to a checkpoint "
                f"(e.g. the unregularised baseline of the same seed) or drop {suite.name!r} from evaluation.suites",
            )
        if suite.needs_surrogate and surrogate is None and not Path(ev.surrogate).is_file():
            raise ConfigError("evaluation.surrogate", f"file {ev.surrogate} does not exist")
    return ev


def selected_suites(ev: EvalConfig) -> list[Suite]:
    """The configured suites, in the registry's run order."""
    return [s for s in SUITES if s.name in ev.suites]


def evaluate_model(
    model: nn.Module,
    cfg: RunConfig,
    test: ImageData,
    out_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    surrogate: nn.Module | None = None,
    test_rgb: ImageData | None = None,
) -> dict[str, Any]:
    """Run ``cfg.evaluation.suites`` on ``test`` and write records into ``out_dir``.

    ``test_rgb``: the same test images in colour, for corrupting RGB sources before the
    grayscale conversion of a grayscale model (None: corrupt ``test`` as it is).
    ``surrogate``: the transfer suite's source model; None loads ``evaluation.surrogate``.
    Returns the flat summary metrics (also written to ``summary.json``).
    Every suite (attacks and their verification included) runs in IEEE fp32: no TF32
    convolution or matmul, whatever the process had set; the settings are restored after.
    """
    with ieee_fp32():
        return _evaluate(model, cfg, test, out_dir, device, surrogate, test_rgb)


def _evaluate(
    model: nn.Module,
    cfg: RunConfig,
    test: ImageData,
    out_dir: str | os.PathLike,
    device: torch.device | str,
    surrogate: nn.Module | None,
    test_rgb: ImageData | None,
) -> dict[str, Any]:
    ev = check_inputs(cfg, surrogate)
    if test_rgb is not None and (len(test_rgb) != len(test) or not torch.equal(test_rgb.labels, test.labels)):
        raise ValueError("test_rgb must hold the same images (same labels, same order) as test")
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    suites = [s.load() for s in selected_suites(ev)]  # imported before the per-suite timers start
    if surrogate is None and any(s.needs_surrogate for s in suites):
        from neuroreg.checkpoint import load_model

        surrogate, _ = load_model(ev.surrogate, device=device)
    x_all = to_float(test.images)
    adv_idx = subset_index(len(test), ev.n_images, ev.seed)
    ctx = SuiteContext(model, cfg, test, x_all, test.labels, adv_idx, x_all[adv_idx].to(device),
                       test.labels[adv_idx].to(device), device, surrogate, test_rgb,
                       load_rgb=lambda: rgb_test_set(cfg, test))
    summary: dict[str, Any] = {"n_test": len(test), "dataset": cfg.data.name}
    files: dict[str, str] = {}
    for suite in suites:
        t0 = time.perf_counter()
        result = suite.run(ctx)
        summary.update(result.summary)
        # Each suite's records are on disk as soon as it finishes: a late failure keeps them.
        for stem, records in result.records.items():
            files[stem] = str(write_jsonl(out / f"{stem}.jsonl", records))
        summary[f"seconds_{suite.name}"] = time.perf_counter() - t0

    summary["files"] = files
    _atomic_write(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def rgb_test_set(cfg: RunConfig, test: ImageData) -> tuple[ImageData | None, str]:
    """The colour version of a grayscale test set of an RGB source (corrupt in RGB, then convert)."""
    if not (cfg.data.grayscale and cfg.data.name in RGB_SOURCES and test.images.shape[1] == 1):
        return None, "as loaded"
    from neuroreg.data import load_dataset

    try:
        rgb = load_dataset(dataclasses.replace(cfg.data, grayscale=False), train=False)
    except (ConfigError, OSError) as e:
        return None, f"grayscale (the RGB source could not be loaded: {e})"
    if len(rgb) != len(test) or not torch.equal(rgb.labels, test.labels) or rgb.images.shape[1] != 3:
        return None, "grayscale (the RGB source does not match the test set)"
    return rgb, "rgb, converted to grayscale after corruption"



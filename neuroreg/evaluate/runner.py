"""Run the evaluation suites of ``cfg.evaluation`` on one model and write tidy records.

Every suite writes its JSON Lines file as soon as it finishes (atomically: temp file,
then rename), so a long run that stops late keeps what it has; ``summary.json`` holds
the flat metrics (docs/ARCHITECTURE.md, "Evaluation records").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroreg.atomic import atomic_write_text
from neuroreg.config import ConfigError, RunConfig
from neuroreg.data import ImageData, to_float
from neuroreg.evaluate.attacks import (
    build_attacks,
    minimal_perturbations,
    per_image_records,
    summarize,
)
from neuroreg.evaluate.common import accuracy, progress, subset_index
from neuroreg.evaluate.config import EvalConfig
from neuroreg.evaluate.corruptions import CORRUPTIONS, FREQUENCY, corrupt
from neuroreg.evaluate.noise import noise_accuracy

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


def _fmt(v: float) -> str:
    return f"{v:g}"


# --- the runner ----------------------------------------------------------------------------


def check_inputs(cfg: RunConfig, surrogate: nn.Module | None) -> EvalConfig:
    """Fail before any expensive work when the suites cannot run as configured."""
    ev = cfg.evaluation
    ev.validate("evaluation")
    if "transfer" in ev.suites and surrogate is None and ev.surrogate is None:
        raise ConfigError(
            "evaluation.surrogate",
            "the transfer suite needs a surrogate model: set evaluation.surrogate to a checkpoint "
            "(e.g. the unregularised baseline of the same seed) or drop 'transfer' from evaluation.suites",
        )
    if ev.surrogate is not None and surrogate is None and "transfer" in ev.suites:
        if not Path(ev.surrogate).is_file():
            raise ConfigError("evaluation.surrogate", f"file {ev.surrogate} does not exist")
    return ev


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
    """
    ev = check_inputs(cfg, surrogate)
    if test_rgb is not None and (len(test_rgb) != len(test) or not torch.equal(test_rgb.labels, test.labels)):
        raise ValueError("test_rgb must hold the same images (same labels, same order) as test")
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    if "transfer" in ev.suites and surrogate is None:
        from neuroreg.checkpoint import load_model

        surrogate, _ = load_model(ev.surrogate, device=device)
    show = ev.progress
    summary: dict[str, Any] = {"n_test": len(test), "dataset": cfg.data.name}
    files: dict[str, str] = {}

    def done(name: str, records: list[dict], t0: float) -> None:
        files[name] = str(write_jsonl(out / f"{name}.jsonl", records))
        summary[f"seconds_{name}"] = time.perf_counter() - t0

    x_all = to_float(test.images)
    y_all = test.labels

    if "clean" in ev.suites:
        t0 = time.perf_counter()
        acc = accuracy(model, x_all, y_all, ev.batch_size, device)
        summary["clean_acc"] = acc
        done("clean", [{"suite": "clean", "accuracy": acc, "n": len(test)}], t0)

    if "noise" in ev.suites:
        t0 = time.perf_counter()
        idx = subset_index(len(test), ev.noise_n_images, ev.seed)
        recs = noise_accuracy(model, x_all[idx], y_all[idx], ev.levels_for(cfg.data.name), ev.seed,
                              ev.batch_size, device, show)
        for r in recs:
            summary[f"noise_acc_{r['noise']}_{_fmt(r['level'])}"] = r["accuracy"]
        positive = [r["accuracy"] for r in recs if r["level"] > 0]
        summary["noise_acc_mean"] = sum(positive) / len(positive) if positive else math.nan
        done("noise", recs, t0)

    adv_idx = subset_index(len(test), ev.n_images, ev.seed)
    x_adv_set, y_adv_set = x_all[adv_idx].to(device), y_all[adv_idx].to(device)
    results = {}
    if "adversarial" in ev.suites:
        t0 = time.perf_counter()
        attacks = {norm: build_attacks(norm, getattr(ev, f"attacks_{norm}"), ev) for norm in ev.norms}
        results, checks = minimal_perturbations(model, x_adv_set, y_adv_set, attacks, ev.attack_batch_size,
                                                ev.cross_norm, ev.seed, show)
        per_image, summ = [], []
        for norm, res in results.items():
            per_image += per_image_records(res, adv_idx, y_all[adv_idx])
            s = summarize(res)
            s.update(checks)
            summ.append(s)
            summary[f"median_{norm}"] = s["median"]
            summary[f"q25_{norm}"] = s["q25"]
            summary[f"q75_{norm}"] = s["q75"]
            summary[f"adv_success_{norm}"] = s["success_rate"]
            summary[f"adv_unbroken_{norm}"] = s["n_unbroken"]
            summary[f"adv_seconds_{norm}"] = s["seconds"]
        summary.update({f"adv_{k}": v for k, v in checks.items()})
        write_jsonl(out / "adversarial_summary.jsonl", summ)
        files["adversarial_summary"] = str(out / "adversarial_summary.jsonl")
        done("adversarial", per_image, t0)

    if "transfer" in ev.suites:
        from neuroreg.evaluate.transfer import fgsm_transfer

        t0 = time.perf_counter()
        surrogate = surrogate.to(device).eval()
        recs = fgsm_transfer(model, surrogate, x_adv_set, y_adv_set, ev.transfer_epsilons, ev.batch_size,
                             ev.surrogate or "surrogate", show)
        for r in recs:
            summary[f"transfer_acc_{_fmt(r['epsilon'])}"] = r["accuracy"]
        done("transfer", recs, t0)

    if "boundary" in ev.suites:
        from neuroreg.evaluate.boundary import boundary_success

        t0 = time.perf_counter()
        b_idx = subset_index(len(test), ev.boundary_n_images, ev.seed)
        recs, _ = boundary_success(model, x_all[b_idx].to(device), y_all[b_idx], x_adv_set, ev.boundary_budgets,
                                   len(test.classes), ev.boundary_steps, ev.seed, ev.attack_batch_size, show,
                                   ev.boundary_attack)
        for r in recs:
            summary[f"boundary_success_{_fmt(r['budget'])}"] = r["success_rate"]
        done("boundary", recs, t0)

    corruption_recs = None
    if "corruptions" in ev.suites:
        t0 = time.perf_counter()
        if test_rgb is None:
            test_rgb, note = rgb_test_set(cfg, test)
            summary["corruptions_source"] = note
        corruption_recs = corruption_accuracy(model, cfg, test, test_rgb, device)
        by_group: dict[str, list[float]] = {}
        by_name: dict[str, list[float]] = {}
        for r in corruption_recs:
            summary[f"corruption_acc_{r['corruption']}_{r['severity']}"] = r["accuracy"]
            by_name.setdefault(r["corruption"], []).append(r["accuracy"])
        for name, accs in by_name.items():
            summary[f"corruption_acc_{name}"] = sum(accs) / len(accs)
            by_group.setdefault(FREQUENCY[name], []).append(sum(accs) / len(accs))
        for g, accs in by_group.items():
            summary[f"corruption_acc_{g}"] = sum(accs) / len(accs)
        all_acc = [r["accuracy"] for r in corruption_recs]
        summary["corruption_acc_mean"] = sum(all_acc) / len(all_acc) if all_acc else math.nan
        done("corruptions", corruption_recs, t0)

    if "frequency" in ev.suites:
        if importlib.util.find_spec("neuroreg.evaluate.frequency") is None:
            summary["frequency_skipped"] = "neuroreg.evaluate.frequency is not installed"
        else:
            from neuroreg.evaluate.frequency import run_frequency

            t0 = time.perf_counter()
            perts = {}
            for norm in ev.norms:
                res = results.get(norm)
                if res is None:
                    perts[norm] = None
                    continue
                # Only images an attack actually moved: unbroken and misclassified ones have no delta.
                keep = (torch.isfinite(res.distances) & (res.distances > 0)).to(x_adv_set.device)
                perts[norm] = (res.adversarials - x_adv_set)[keep].cpu() if keep.any() else None
            recs = run_frequency(model, x_adv_set, y_adv_set, perts, ev, device, corruption_records=corruption_recs)
            for r in recs:
                if r.get("kind") == "summary":
                    key = r.get("metric", "f")
                    norm = r.get("norm")
                    summary[f"{key}_{norm}" if norm else key] = r.get("value")
            done("frequency", recs, t0)

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


def corruption_accuracy(
    model: nn.Module,
    cfg: RunConfig,
    test: ImageData,
    test_rgb: ImageData | None = None,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Records ``{corruption, severity, frequency, accuracy, n}`` over the corruption subset."""
    ev = cfg.evaluation
    idx = subset_index(len(test), ev.corruption_n_images, ev.seed)
    source = test_rgb if test_rgb is not None else test
    images = source.images[idx]
    to_gray = test_rgb is not None and test.images.shape[1] == 1 and images.shape[1] == 3
    y = test.labels[idx]
    names = ev.corruptions or list(CORRUPTIONS)
    jobs = [(c, s) for c in names for s in ev.severities]
    records = []
    chunk = 500  # bounds memory of the float64 intermediates; results do not depend on it per seed
    for name, sev in progress(jobs, "corruptions", enabled=ev.progress):
        correct = 0
        for b in range(0, len(images), chunk):
            xc = corrupt(images[b : b + chunk], name, sev, seed=ev.seed + b, to_gray=to_gray)
            pred = []
            with torch.no_grad():
                for k in range(0, len(xc), ev.batch_size):
                    pred.append(model(to_float(xc[k : k + ev.batch_size]).to(device)).argmax(1).cpu())
            correct += int((torch.cat(pred) == y[b : b + chunk]).sum())
        records.append({"corruption": name, "severity": sev, "frequency": FREQUENCY[name],
                        "accuracy": correct / max(len(images), 1), "n": len(images)})
    return records


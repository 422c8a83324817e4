"""Upper bounds on sizes, and finiteness of numbers, checked with the rest of the config.

A value past a bound would end in an allocation failure (a width of 10^6 wants terabytes)
or a run that never finishes, long after the run started; it is refused up front with the
bound and the way to raise it named. Every bound is far above what the papers and the
shipped spaces use; raise one with its environment variable
(``NEUROREG_MAX_MODEL_WIDTH=1024``) when a larger value is really meant.
"""

from __future__ import annotations

import math
import os
from typing import Any

from neuroreg.errors import ConfigError

LIMITS: dict[str, tuple[int | float, str]] = {
    "model.width": (512, "parameters grow with width^2: 512 is ~700 M parameters for a ResNet18"),
    "model.blur_sigma": (64.0, "the blur kernel spans 6 sigma pixels"),
    "data.image_size": (1024, "images are decoded into memory at this size"),
    "data.crop_padding": (256, "pixels of reflect padding"),
    "regularizer.n": (2_000_000, "the target keeps N x D unit vectors in memory"),
    "regularizer.n_pairs": (8192, "pairing pairs forwards 2 x n_pairs images a step; shared computes n_pairs similarities"),
    "regularizer.batch_k": (2048, "every step forwards batch_k images and K(K-1)/2 pairs"),
    "train.batch_size": (65536, "images forwarded per step"),
    "train.eval_batch_size": (65536, "images forwarded per evaluation batch"),
    "train.epochs": (100_000, "epochs"),
    "train.max_steps_per_epoch": (10_000_000, "steps per epoch"),
    "train.num_threads": (1024, "threads"),
    "train.check_finite_every": (1_000_000, "steps"),
    "optim.step": (1_000_000, "epochs"),
    "optim.cycle": (1_000_000, "steps of the schedule"),
    "evaluation.images": (10_000_000, "test images an evaluation suite runs on"),
    "evaluation.batch": (65536, "images per forward pass or attack call"),
    "evaluation.steps": (1_000_000, "iterations of an attack"),
    "evaluation.search": (64, "bisection or binary-search steps"),
    "evaluation.bins": (100_000, "bins of the spectrum"),
    "evaluation.list": (10_000, "entries of a list of levels, budgets or epsilons"),
}
"""Field (``data.*`` also covers ``regularizer.data.*``) -> (bound, what it costs)."""

MAX_SEED = 2**63 - 1
"""Seeds go to torch (int64) and numpy (non-negative): 0 ... 2^63 - 1."""


def env_name(key: str) -> str:
    return "NEUROREG_MAX_" + key.replace(".", "_").upper()


def bound(key: str) -> int | float:
    """The bound of ``key``: its environment variable when set (a positive number), else the default."""
    default, _ = LIMITS[key]
    text = os.environ.get(env_name(key))
    if not text:
        return default
    try:
        value = type(default)(float(text)) if isinstance(default, int) else float(text)
    except (ValueError, OverflowError):
        raise ConfigError(env_name(key), f"must be a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise ConfigError(env_name(key), f"must be a positive number, got {text!r}")
    return value


def check_bound(value: Any, key: str, name: str | None = None) -> None:
    """``value`` of field ``name`` (default ``key``) is at most the bound of ``key``."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    limit = bound(key)
    if value > limit:
        why = LIMITS[key][1]
        raise ConfigError(
            name or key,
            f"{value:g} is above the limit of {limit:g} ({why}); lower it, or raise the limit with "
            f"the environment variable {env_name(key)}=<n> if that size is really meant",
        )


def check_finite(value: Any, name: str, low: float = -math.inf, low_open: bool = False) -> None:
    """A finite real number, >= ``low`` (> ``low`` when ``low_open``); NaN and infinity are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(name, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")


def check_seed(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(name, f"must be an integer in [0, 2^63 - 1] (torch's and numpy's seed range), got {value!r}")


def check_run_limits(cfg: Any) -> None:
    """Bounds, finiteness and seed ranges of a RunConfig (called by ``RunConfig.validate``)."""
    check_finite(cfg.model.blur_sigma, "model.blur_sigma", 0.0)
    r, o = cfg.regularizer, cfg.optim
    check_finite(r.alpha, "regularizer.alpha", 0.0)
    check_finite(r.eps, "regularizer.eps", 0.0, low_open=True)
    check_finite(o.lr, "optim.lr", 0.0, low_open=True)
    check_finite(o.weight_decay, "optim.weight_decay", 0.0)
    for section in ("model", "regularizer", "train", "optim"):
        obj = getattr(cfg, section)
        for key in LIMITS:
            sec, _, attr = key.partition(".")
            if sec == section and hasattr(obj, attr):
                check_bound(getattr(obj, attr), key)
    for prefix, data in (("data", cfg.data), ("regularizer.data", cfg.regularizer.data)):
        if data is None:
            continue
        for attr in ("image_size", "crop_padding"):
            check_bound(getattr(data, attr), f"data.{attr}", f"{prefix}.{attr}")
        check_seed(data.split_seed, f"{prefix}.split_seed")
    for name, value in (("regularizer.seed", r.seed), ("train.seed", cfg.train.seed),
                        ("evaluation.seed", cfg.evaluation.seed)):
        check_seed(value, name)

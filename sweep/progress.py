"""A compact console for sweeps: one line when a trial starts, one when it ends.

Tune's own output (a result box per trial, a status table, a checkpoint line per epoch
from every worker) runs to hundreds of lines for a few trials; ``--verbose`` brings it back.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune

from sweep.labels import applies, fmt_value, short_name, trial_seed

SHOWN = ("val_acc", "best_val_acc", "sim_loss", "clean_acc", "median_l2")


def _short(params: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """The parameters that apply to the trial's arm (a baseline's th and alpha are left out)."""
    out = []
    for k, v in params.items():
        if k == "train.seed" or not applies(k, params, base):
            continue
        out.append(f"{short_name(k)}={v:.3g}" if isinstance(v, float) else f"{short_name(k)}={fmt_value(v)}")
    return " ".join(out)


class CompactProgress(tune.Callback):
    """Start / finish / error lines; the objective(s) and the metrics that matter."""

    def __init__(self, objectives: list[str], total: int | str, seeds: list[int] | None = None,
                 base: dict[str, Any] | None = None):
        self.objectives = [m for m in objectives if m not in SHOWN]
        self.total = total
        self.seeds = seeds  # train.seed by trial index: the line shows the seed, not its position
        self.base = base  # the sweep's base config: which parameters apply, the default seed
        self.done = 0
        self.t0 = time.perf_counter()

    def _label(self, trial: Any) -> str:
        cfg = trial.config or {}
        params = _short(cfg.get("params") or {}, getattr(self, "base", None))
        seed = trial_seed(cfg, self.seeds, getattr(self, "base", None))
        if seed is None and cfg.get("__trial_index__") is not None:
            return f"{trial.trial_id} {params} seed#{cfg['__trial_index__']}"
        return f"{trial.trial_id} {params}" + (f" seed={seed}" if seed is not None else "")

    def _say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"start  {self._label(trial)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        r = trial.last_result or {}
        vals = "  ".join(f"{m} {r[m]:.4g}" for m in (*SHOWN, *self.objectives)
                         if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool))
        if isinstance(r.get("epoch"), int):  # epochs, not Tune's iterations (+1 for the evaluation report)
            vals = f"epochs {r['epoch']}  {vals}"
        self._say(f"done   {self._label(trial)}  {vals}  ({self.done}/{self.total})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self._say(f"ERROR  {self._label(trial)}  (see {trial.path}/error.txt)  ({self.done}/{self.total})")

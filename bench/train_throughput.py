"""Training throughput of the real trainer, side by side in one run: the cost of each pairing.

ResNet18, 32x32 grayscale (sklearn's digits upsampled, offline), batch 64, SGD momentum 0.9.

**Pairing table** (the default): per width, four learners built once, the baseline
(``target=none``) and four regularized ones (pixel_th, alpha 4, Th 0.2, all five layers):

- ``pairs``: the papers' recipe, 16 random pairs of regularization images a step (32 extra
  images forwarded, as far as conv17);
- ``batch``: all 496 pairs of 32 regularization images (32 extra images forwarded);
- ``shared``: all 2,016 pairs of the classification batch itself, tap features from the
  classification pass (no extra image forwarded).

After two untimed warm-up epochs each, their epochs run interleaved (baseline, pairs, batch,
shared, baseline, ...) for ``--repeats`` rounds, so that a loaded machine slows
all rows alike (on a busy machine keep epochs short, ``--steps 1``, and rounds many: the
load then changes little between the four epochs of one round); each epoch's ``images_per_s`` is the trainer's own record of its step loop
(classification images per second; ``neuroreg.train.train_epoch``, the loop ``train``
runs). ``cost`` is baseline images/s over the row's images/s within the same round (the
time a regularized step takes relative to a baseline step), its median over rounds and
the lowest and highest round, and a 95 % bootstrap confidence interval of that median
(scipy.stats.bootstrap over the rounds, percentile; rounds are paired, so the load a round
saw cancels in its ratio); ``images/s`` the median over rounds. ``images/CPU s`` and
``cost in CPU time`` are the same from this process's CPU time, the robust measure on a
machine shared with other jobs (with ``--threads 1``, where no worker thread spins).

**Settings table** (``--settings``): the trainer against the plain fp32 loop a user would
write, per precision and layout, each as baseline and regularized (16 pairs), one run each.

``--profile`` adds torch.profiler's top operators of a baseline and a shared step (where
the remaining cost of shared goes).

    python bench/train_throughput.py [--widths 16 64] [--steps 2] [--repeats 20] [--threads 2]
                                     [--precision auto] [--pairings pairs batch shared]
                                     [--settings] [--profile] [--device cpu]

``--pairings shared`` times only the baseline and shared, so more rounds fit in the same
minutes (a narrower interval for the one ratio the 1.10 target is about); ``--pairings
shared floor`` adds the floor: shared with its head cut down to the Gram matmuls forward
and backward, the part no exact fp32 implementation of all 2,016 cosines can skip.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import types

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as sps  # `stats` is the epoch records' name here

from neuroreg.config import RunConfig
from neuroreg.models import create_model
from neuroreg.precision import device_has_fast_bf16
from neuroreg.similarity import SimilarityHead, _flat, _Gram
from neuroreg.train import build_learner, prepare_data, train, train_epoch

REG = {"target": "pixel_th", "alpha": 4.0, "th": 0.2, "n": 1000, "n_pairs": 16,
       "layers": ["conv1", "conv5", "conv9", "conv13", "conv17"]}


def run_config(width: int, steps: int, device: str, threads: int, regularized: bool, **train_over) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.05, "augment": False},
        "model": {"name": "resnet18", "width": width},
        "regularizer": REG if regularized else {"target": "none"},
        "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": steps, "device": device,
                  "num_threads": threads, "seed": 0, **train_over},
    })


def plain_loop(width: int, steps: int, device: torch.device, x_u8: torch.Tensor, y: torch.Tensor) -> float:
    """Images/s of the loop a user would write: fp32, NCHW, batches from a float tensor."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=width).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_all, y_all = (x_u8.float() / 255).to(device), y.to(device)
    bs, n = 64, len(y)

    def step(k: int) -> None:
        idx = torch.arange(k * bs, (k + 1) * bs, device=device) % n
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for k in range(steps):  # warm-up, like the trainer's first epoch
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0)


def trainer_rate(cfg: RunConfig, data) -> tuple[float, str, bool]:
    """(images/s of the second epoch, precision used, channels_last used)."""
    with tempfile.TemporaryDirectory() as out:
        h = train(cfg, out, data=data).history[-1]
    return h["images_per_s"], h["precision"], h["channels_last"]


PAIRINGS = {
    "baseline": {"target": "none"},
    "pairs": {**REG, "pairing": "pairs"},
    "batch": {**REG, "pairing": "batch", "batch_k": 32},
    "shared": {**REG, "pairing": "shared", "n_pairs": None},
    "floor": {**REG, "pairing": "shared", "n_pairs": None},
}
"""The rows of the pairing table, in the order each round runs them. ``floor`` is shared with
its head cut down to the Gram matmuls (``gram_floor``): not a trainer setting, a measurement."""


def gram_floor(head: SimilarityHead, feats: dict[str, torch.Tensor], i: torch.Tensor, j: torch.Tensor,
               update: bool = True) -> torch.Tensor:
    """What every exact fp32 all-pairs cosine pays: per layer X X^T forward and (dG + dG^T) X
    backward, none of the centring, norms, weights or gathers around them. The sum is scaled
    into (-1, 1) so the loss stays finite; the row's cost against shared is the rest."""
    c = sum(_Gram.apply(_flat(f)) for f in feats.values())
    return (c * (0.5 / c.detach().abs().amax().clamp_min(1e-12)))[i, j]


def pairing_config(width: int, steps: int, device: str, threads: int, precision: str, reg: dict) -> RunConfig:
    return RunConfig.from_dict({
        "data": {"name": "digits", "image_size": 32, "val_fraction": 0.05, "augment": False},
        "model": {"name": "resnet18", "width": width},
        "regularizer": reg,
        "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
        "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": steps, "device": device,
                  "num_threads": threads, "seed": 0, "precision": precision, "channels_last": True},
    })


class Row:
    """One learner of the pairing table and what it needs for an epoch."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg = cfg
        data = prepare_data(cfg)
        self.lrn = build_learner(cfg, data, device)
        self.x, self.y = data.splits.train.images.to(device), data.splits.train.labels.to(device)
        self.x_reg = data.reg.images.to(device) if data.reg is not None else None
        self.epochs = 0

    def epoch(self) -> dict[str, float]:
        cpu = time.process_time()
        with self.lrn.precision.math():
            stats = train_epoch(self.lrn, self.cfg, self.epochs, self.x, self.y, self.x_reg)
        # Images per CPU second of this process: on a machine shared with other jobs the wall
        # clock counts their time slices too; with --threads 1 (no spinning worker threads)
        # the CPU time is this step's own work.
        stats["images_per_cpu_s"] = stats["images_per_s"] * stats["epoch_s"] / (time.process_time() - cpu)
        self.epochs += 1
        return stats


def median_ci(ratios: list[float], seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of per-round ratios."""
    if len(ratios) < 3 or len(set(ratios)) == 1:
        return float("nan"), float("nan")
    res = sps.bootstrap((np.asarray(ratios),), np.median, confidence_level=0.95, n_resamples=9999,
                          method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def pairing_table(a: argparse.Namespace, device: torch.device) -> None:
    print(f"| width | pairing | pairs / step | images forwarded / step | images/s | cost (base/reg) | cost, 95 % CI | "
          f"cost, lowest-highest of {a.repeats} rounds | images/CPU s | cost in CPU time |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    chosen = {name: reg for name, reg in PAIRINGS.items() if name == "baseline" or name in a.pairings}
    for w in a.widths:
        rows = {name: Row(pairing_config(w, a.steps, a.device, a.threads, a.precision, reg), device)
                for name, reg in chosen.items()}
        if "floor" in rows:
            rows["floor"].lrn.head.forward = types.MethodType(gram_floor, rows["floor"].lrn.head)
        precision = {r.lrn.precision.name for r in rows.values()}
        assert len(precision) == 1, precision
        pairs_per_step = {}
        for name, row in rows.items():  # warm-up: two epochs each (oneDNN primitives, caches), not timed
            row.epoch()
            pairs_per_step[name] = row.epoch()["pairs_per_step"]
        rates: dict[str, list[float]] = {name: [] for name in rows}
        cpu_rates: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(a.repeats):
            for name, row in rows.items():
                stats = row.epoch()
                rates[name].append(stats["images_per_s"])
                cpu_rates[name].append(stats["images_per_cpu_s"])
        base, cpu_base = rates["baseline"], cpu_rates["baseline"]
        for name, reg in chosen.items():
            costs = [b / r for b, r in zip(base, rates[name])]
            cpu_costs = [b / r for b, r in zip(cpu_base, cpu_rates[name])]
            extra = {"pairs": 2 * (reg.get("n_pairs") or 0), "batch": reg.get("batch_k", 0)}.get(reg.get("pairing"), 0)
            cost = "" if name == "baseline" else f"{statistics.median(costs):.3f}"
            ci = "" if name == "baseline" else "{:.3f}-{:.3f}".format(*median_ci(costs))
            spread = "" if name == "baseline" else f"{min(costs):.3f}-{max(costs):.3f}"
            cpu_cost = "" if name == "baseline" else f"{statistics.median(cpu_costs):.3f}"
            print(f"| {w} | {name} | {pairs_per_step[name]:.0f} | 64 + {extra} | {statistics.median(rates[name]):.0f} | "
                  f"{cost} | {ci} | {spread} | {statistics.median(cpu_rates[name]):.0f} | {cpu_cost} |", flush=True)
        print(f"(width {w}: precision {precision.pop()}, channels_last)", flush=True)
        if a.profile:
            profile_rows(rows, a)


def profile_rows(rows: dict[str, Row], a: argparse.Namespace) -> None:
    """torch.profiler's top operators (self CPU time) of one epoch of the baseline and of shared."""
    from torch.profiler import ProfilerActivity, profile

    for name in [n for n in ("baseline", "shared") if n in rows]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rows[name].epoch()
        print(f"\n{name}, {a.steps} steps:\n" +
              prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.profile_rows), flush=True)


def settings_table(a: argparse.Namespace, device: torch.device, fast: bool) -> None:
    """The trainer against the plain fp32 loop, per precision and layout (one run per row)."""
    settings = [
        ("trainer fp32", {"precision": "fp32", "channels_last": False}),
        ("trainer fp32 + channels_last", {"precision": "fp32", "channels_last": True}),
        ("trainer bf16 + channels_last", {"precision": "bf16", "channels_last": True}),
    ]
    if a.compile:
        best = {"precision": "bf16" if fast else "fp32", "channels_last": True}
        settings.append((f"trainer {best['precision']} + channels_last + compile", {**best, "compile": True}))
    print("\n| width | setting | training | images/s | x plain | reg/base |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for w in a.widths:
        data_reg = prepare_data(run_config(w, a.steps, a.device, a.threads, True))
        data_base = prepare_data(run_config(w, a.steps, a.device, a.threads, False))
        plain = plain_loop(w, a.steps, device, data_base.splits.train.images, data_base.splits.train.labels)
        print(f"| {w} | plain loop fp32 | baseline | {plain:.0f} | 1.00 | |", flush=True)
        for label, over in settings:
            steps = a.steps if over["precision"] != "bf16" or fast else a.slow_bf16_steps
            rates = {}
            for regularized, data in ((False, data_base), (True, data_reg)):
                cfg = run_config(w, steps, a.device, a.threads, regularized, **over)
                rate, prec, cl = trainer_rate(cfg, data)
                rates[regularized] = rate
                name = label if cl == over["channels_last"] else f"{label} (channels_last refused)"
                assert prec == over["precision"], (prec, over)
                kind = "regularized" if regularized else "baseline"
                ratio = f"{rates[False] / rate:.2f}" if regularized else ""
                print(f"| {w} | {name} | {kind} | {rate:.0f} | {rate / plain:.2f} | {ratio} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=2, help="timed steps per epoch")
    p.add_argument("--slow-bf16-steps", type=int, default=3,
                   help="settings table: steps of the bf16 rows where the device has no native bf16 (~10x slower)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="settings table: add a torch.compile row")
    p.add_argument("--repeats", type=int, default=20, help="pairing table: interleaved rounds (median reported)")
    p.add_argument("--precision", default="auto", help="pairing table: train.precision (auto, fp32, bf16)")
    p.add_argument("--pairings", nargs="+", choices=[n for n in PAIRINGS if n != "baseline"],
                   default=["pairs", "batch", "shared"],
                   help="pairing table: the regularized rows to time against the baseline (default: pairs batch "
                        "shared; floor: shared's Gram matmuls alone)")
    p.add_argument("--settings", action="store_true", help="also print the settings table (trainer vs plain loop)")
    p.add_argument("--profile", action="store_true", help="pairing table: profile a baseline and a shared epoch")
    p.add_argument("--profile-rows", type=int, default=18)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    fast = device_has_fast_bf16(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else torch.backends.cpu.get_cpu_capability()}), "
          f"native bf16: {'yes' if fast else 'no'}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.steps} timed steps per epoch, batch 64, 32x32 grayscale")
    pairing_table(a, device)
    if a.settings:
        settings_table(a, device, fast)


if __name__ == "__main__":
    main()

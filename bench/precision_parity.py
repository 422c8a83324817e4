"""Does bf16 training change the science? bf16 vs fp32 at the MNIST protocol, several seeds.

The protocol of the MNIST reproduction (issue 11): ResNet18 width 16, all 60,000 MNIST
training images (1 % held out), 3 epochs, lr 0.1 x 0.3 per epoch, SGD momentum 0.9,
pixel_th alpha 4, Th 0.2, soft arctanh, 16 pairs a step from N = 5,000, all five layers.
Each (seed, precision) trains one regularized model; evaluation is fp32 for both (clean
and Gaussian noise at every level on all 10,000 test images). Printed per metric: mean ±
SEM over seeds for each precision, the paired difference bf16 - fp32 with its 95 % CI
(scipy.stats.t), and whether |mean difference| exceeds the larger SEM.

    python bench/precision_parity.py --data-root ../shared/data --seeds 5 --device cuda --jobs 5
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

LEVELS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
LAYERS = ["conv1", "conv5", "conv9", "conv13", "conv17"]


def protocol(data_root: str, seed: int, precision: str, device: str, epochs: int, subset: int | None) -> dict:
    return {
        "data": {"name": "mnist", "root": data_root, "image_size": 28, "val_fraction": 0.01,
                 "augment": False, "subset": subset},
        "model": {"name": "resnet18", "width": 16},
        "regularizer": {"target": "pixel_th", "alpha": 4.0, "th": 0.2, "n": 5000, "n_pairs": 16,
                        "layers": LAYERS, "loss": "atanh"},
        "optim": {"lr": 0.1, "momentum": 0.9, "schedule": "step_cycle", "step": 1, "gamma": 0.3, "cycle": 5},
        "train": {"epochs": epochs, "batch_size": 64, "seed": seed, "device": device, "precision": precision,
                  "num_threads": 1 if device == "cpu" else None},
    }


def one_run(args: tuple[str, int, str, str, int, int | None]) -> dict:
    data_root, seed, precision, device, epochs, subset = args
    import torch

    from neuroreg.config import RunConfig
    from neuroreg.evaluate.common import accuracy
    from neuroreg.evaluate.noise import noise_accuracy
    from neuroreg.train import train

    cfg = RunConfig.from_dict(protocol(data_root, seed, precision, device, epochs, subset))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        res = train(cfg, out)
    train_s = time.perf_counter() - t0
    dev = torch.device(device)
    test = res.test
    h = res.history[-1]
    rec = {
        "seed": seed, "precision": h["precision"], "train_s": train_s,
        "clean": accuracy(res.model, test.images, test.labels, 512, dev),
        "final_val_sim_loss": h["val_sim_loss"],
        **{f"w_{n}": h[f"layer_weight_{n}"] for n in LAYERS},
    }
    x = test.images.float() / 255
    for r in noise_accuracy(res.model, x, test.labels, {"gaussian": LEVELS}, seed=0, batch_size=1000,
                            device=dev, show_progress=False):
        rec[f"gauss_{r['level']:g}"] = r["accuracy"]
    print(json.dumps(rec), flush=True)
    return rec


def summarize(recs: list[dict]) -> str:
    by = {p: {r["seed"]: r for r in recs if r["precision"] == p} for p in ("fp32", "bf16")}
    seeds = sorted(set(by["fp32"]) & set(by["bf16"]))
    keys = ["clean", *[f"gauss_{lv:g}" for lv in LEVELS[1:]], "final_val_sim_loss", *[f"w_{n}" for n in LAYERS]]
    lines = [f"{len(seeds)} seeds paired; mean ± SEM over seeds; diff = bf16 - fp32 (paired), 95 % CI from scipy.stats.t",
             "", "| metric | fp32 | bf16 | diff | 95 % CI | \\|diff\\| > SEM |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for k in keys:
        a = np.array([by["fp32"][s][k] for s in seeds])
        b = np.array([by["bf16"][s][k] for s in seeds])
        d = b - a
        sem_a, sem_b = (stats.sem(v) if len(v) > 1 else math.nan for v in (a, b))
        if len(d) > 1 and d.std() > 0:
            lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        else:
            lo = hi = d.mean()
        flag = "yes" if abs(d.mean()) > max(sem_a, sem_b) else "no"
        lines.append(f"| {k} | {a.mean():.4f} ± {sem_a:.4f} | {b.mean():.4f} ± {sem_b:.4f} | {d.mean():+.4f} | "
                     f"[{lo:+.4f}, {hi:+.4f}] | {flag} |")
    t = {p: np.mean([r["train_s"] for r in by[p].values()]) for p in by}
    lines.append("")
    lines.append(f"mean training time per run: fp32 {t['fp32']:.1f} s, bf16 {t['bf16']:.1f} s")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding MNIST/raw")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (separate processes)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=None, help="training images (default: all 60,000)")
    p.add_argument("--out", help="also write the records (JSON lines) and the table here")
    p.add_argument("--from-records", help="only summarize a records file written by --out")
    a = p.parse_args()
    if a.from_records:
        recs = [json.loads(x) for x in Path(a.from_records).read_text().splitlines() if x.strip()]
        print(summarize(recs))
        return 0
    jobs = [(a.data_root, s, prec, a.device, a.epochs, a.subset) for s in range(a.seeds) for prec in ("fp32", "bf16")]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        recs = pool.map(one_run, jobs, chunksize=1)
    table = summarize(recs)
    print(f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f} s on {a.device}\n\n{table}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (out / "parity.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the minimal-perturbation attacks on an MNIST model (CPU).

Trains a small ResNet18 (width 8, 2 epochs on a 6000-image subset of MNIST, 32 px) or
loads a trainer checkpoint, then runs every attack on the same N test images and prints,
per attack and for the cheap default ensemble (DDN -> BB-L2, FMN-Linf -> BB-Linf):
median distance, success rate, seconds per image, and the gap of each median from the
best-of-all-attacks median (every candidate verified, smallest per image, both norms pooled).

    NEUROREG_DATA_ROOT=../shared/data python bench/attacks.py [--n-images 100] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from neuroreg.config import DataConfig  # noqa: E402
from neuroreg.data import load_dataset, to_float  # noqa: E402
from neuroreg.evaluate.attacks import build_attacks, minimal_perturbations, quantile  # noqa: E402
from neuroreg.evaluate.common import accuracy, subset_index  # noqa: E402
from neuroreg.evaluate.config import EvalConfig  # noqa: E402
from neuroreg.models import create_model  # noqa: E402


def train_small(root: str, width: int, epochs: int, subset: int, seed: int) -> tuple[torch.nn.Module, float]:
    cfg = DataConfig(name="mnist", root=root, subset=subset, image_size=32, grayscale=True)
    train = load_dataset(cfg, train=True)
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=10, in_chans=1, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for b in range(0, len(perm), 64):
            idx = perm[b : b + 64]
            loss = F.cross_entropy(model(to_float(train.images[idx])), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("NEUROREG_DATA_ROOT"))
    p.add_argument("--checkpoint", help="a trainer checkpoint instead of training here")
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=6000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200, help="DDN / FMN / BB iterations (the defaults)")
    args = p.parse_args(argv)
    if not args.data_root:
        print("error: set --data-root or $NEUROREG_DATA_ROOT to a folder holding MNIST/raw", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        from neuroreg.checkpoint import load_model

        model, run_cfg = load_model(args.checkpoint)
        data_cfg = replace(run_cfg.data, root=args.data_root)
        what, train_s = f"checkpoint {args.checkpoint}", 0.0
    else:
        model, train_s = train_small(args.data_root, args.width, args.epochs, args.train_subset, args.seed)
        data_cfg = DataConfig(name="mnist", root=args.data_root, image_size=32, grayscale=True)
        what = (f"ResNet18 width {args.width}, {args.epochs} epochs on {args.train_subset} MNIST images "
                f"(32 px), trained here in {train_s:.0f} s")
    test = load_dataset(data_cfg, train=False)
    x_all, y_all = to_float(test.images), test.labels
    clean = accuracy(model, x_all, y_all)
    idx = subset_index(len(test), args.n_images, args.seed)
    x, y = x_all[idx], y_all[idx]

    cfg = EvalConfig(ddn_steps=args.steps, fmn_steps=args.steps, bb_steps=args.steps,
                     pgd_steps=20, pgd_bisection_steps=5, cw_steps=100, cw_binary_search_steps=4)
    # Compile Brendel-Bethge's numba optimizers first, so their one-off cost is not in the timings.
    t0 = time.perf_counter()
    warm = {"l2": build_attacks("l2", ["ddn", "bb_l2"], replace(cfg, ddn_steps=20, bb_steps=2)),
            "linf": build_attacks("linf", ["fmn_linf", "bb_linf"], replace(cfg, fmn_steps=20, bb_steps=2))}
    minimal_perturbations(model, x[:2], y[:2], warm, show_progress=False)
    compile_s = time.perf_counter() - t0

    attacks = {"l2": build_attacks("l2", ["ddn", "bb_l2", "pgd_l2", "cw_l2"], cfg),
               "linf": build_attacks("linf", ["fmn_linf", "bb_linf", "pgd_linf"], cfg)}
    results, checks = minimal_perturbations(model, x, y, attacks, batch_size=100, cross_norm=True, seed=args.seed)

    n = len(x)
    rows = []
    for norm, res in results.items():
        best = res.distances.numpy()  # best of all attacks, both norms pooled
        best_med = quantile(best, 0.5)

        def row(name: str, d: np.ndarray, seconds: float, norm=norm, best_med=best_med) -> None:
            med = quantile(d, 0.5)
            gap = (med / best_med - 1) * 100 if best_med > 0 and np.isfinite(best_med) else float("nan")
            rows.append((norm, name, med, float(np.isfinite(d).mean()), seconds / n, gap))

        per = {k: v.numpy().copy() for k, v in res.per_attack.items()}
        zero = (res.distances == 0).numpy()  # clean misclassifications count 0 for every attack
        for d in per.values():
            d[zero] = 0.0
        first, refine = {"l2": ("ddn", "bb_l2"), "linf": ("fmn_linf", "bb_linf")}[norm]
        for name, d in per.items():
            if name.startswith("from_") or name == refine:
                continue
            row(name, d, res.seconds.get(name, 0.0))
        default = np.minimum(per[first], per[refine])
        row(f"default: {first} -> {refine}", default, res.seconds[first] + res.seconds[refine])
        row("best of all (+ other norm)", best, res.total_seconds)

    print(f"\nModel: {what}; clean accuracy {clean:.4f} on {len(test)} test images.")
    print(f"N = {n} test images (fixed subset, seed {args.seed}); {torch.get_num_threads()} CPU thread(s); "
          f"Brendel-Bethge numba compile (one-off per process, not in the timings): {compile_s:.0f} s.")
    print(f"Budgets: DDN/FMN/BB {args.steps} steps; PGD 20 steps x (grid + 5 bisections); C&W 4 x 100 steps.")
    print(f"Invariant L2/sqrt(D) <= Linf <= L2 violated before pooling: {checks['n_invariant_violations']} "
          f"images, after: {checks['n_invariant_violations_final']}.\n")
    print("| norm | attack | median | success | s / image | gap to best |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for norm, name, med, succ, spi, gap in rows:
        print(f"| {norm} | {name} | {med:.4f} | {succ:.2%} | {spi:.3f} | {gap:+.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
